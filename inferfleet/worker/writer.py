"""Results of many threads stored in one round trip: a group commit.

For the jobs that end in their own pool thread (their batch ran inline, they went
through the result cache, or they ended without a batch); the jobs handed to the
finisher are stored a round at a time there (`worker.finisher`). The first to store
writes at once; those that arrive while it writes wait, and the next of them writes them
all in one pipeline. A lone job never waits for company.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from inferfleet.schemas import WireResult

StoreMany = Callable[[Sequence[tuple[WireResult, str | None]]], list[bool]]


@dataclass
class _Pending:
    result: WireResult
    notify: str | None
    done: bool = False
    stored: bool = False
    error: BaseException | None = None


class GroupWriter:
    """Stores results for many threads, gathering those that arrive while a write is
    under way into the next one. Safe to call from any thread."""

    def __init__(self, store_many: StoreMany) -> None:
        self._store_many = store_many
        self._cond = threading.Condition()
        self._queue: list[_Pending] = []
        self._writing = False

    def store(self, result: WireResult, notify: str | None = None) -> bool:
        """Store `result` once (False if one was stored already).

        Raises:
            redis.RedisError: if the write that carried it failed.
        """
        mine = _Pending(result, notify)
        with self._cond:
            self._queue.append(mine)
            while not mine.done:
                if self._writing:
                    self._cond.wait()
                    continue
                self._writing = True
                group, self._queue = self._queue, []
                self._cond.release()
                try:
                    self._write(group)
                finally:
                    self._cond.acquire()
                    self._writing = False
                    self._cond.notify_all()
        if mine.error is not None:
            raise mine.error
        return mine.stored

    def _write(self, group: list[_Pending]) -> None:
        try:
            outcomes = self._store_many([(p.result, p.notify) for p in group])
        except BaseException as exc:  # every waiter of this write hears of it
            for pending in group:
                pending.error, pending.done = exc, True
            return
        for pending, stored in zip(group, outcomes, strict=True):
            pending.stored, pending.done = stored, True
