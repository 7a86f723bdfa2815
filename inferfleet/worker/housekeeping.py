"""A worker's background work in one loop with a lifecycle: `start`, `stop`, `join`.

dramatiq's worker and arq's `_poll_iteration` keep their housekeeping in one loop that can
be stopped; inferfleet's had a `while True` daemon thread per duty (reaper, running marks,
backlog hint), started in constructors, that nothing could stop. Here each duty is
registered with the loop: periodic ones (heartbeats, giving back lapsed holders'
messages, the reaper) run every `period_s`; requested ones (a running mark, a backlog
hint) run once asked, after the delay asked for and no sooner than `period_s` after their
last run. A duty that raises is logged and runs again at its next turn: background work
never ends the loop.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

logger = logging.getLogger(__name__)

Duty = Callable[[], object]


@dataclass
class _Entry:
    name: str
    run: Duty
    period_s: float
    requested: bool  # run only when asked
    due_at: float  # monotonic; inf while a requested duty waits to be asked
    last_at: float = float("-inf")
    failing: bool = False  # its last run raised (logged once per streak)


class Housekeeping:
    """Runs a worker's duties from one thread until stopped."""

    def __init__(self, name: str = "housekeeping") -> None:
        self.name = name
        self._entries: dict[str, _Entry] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def every(self, period_s: float, run: Duty, *, name: str) -> None:
        """Run `run` every `period_s` seconds (first at once)."""
        self._add(_Entry(name, run, period_s, requested=False, due_at=time.monotonic()))

    def when_asked(self, run: Duty, *, name: str, min_interval_s: float = 0.0) -> None:
        """Run `run` each time `ask(name)` is called, at most every `min_interval_s`."""
        self._add(_Entry(name, run, min_interval_s, requested=True, due_at=float("inf")))

    def _add(self, entry: _Entry) -> None:
        with self._lock:
            if entry.name in self._entries:
                raise ValueError(f"a duty named {entry.name!r} is registered already")
            self._entries[entry.name] = entry
        self._wake.set()

    def ask(self, name: str, *, delay_s: float = 0.0) -> None:
        """Run the requested duty `name` in `delay_s` (or sooner, if asked sooner)."""
        with self._lock:
            entry = self._entries[name]
            at = max(time.monotonic() + delay_s, entry.last_at + entry.period_s)
            if at < entry.due_at:
                entry.due_at = at
                self._wake.set()

    def start(self) -> Housekeeping:
        """Start the loop's thread (once)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        """Ask the loop to end after the duty it is running, if any."""
        self._stopping.set()
        self._wake.set()

    def join(self, timeout_s: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout_s)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def run_due(self) -> float:
        """Run every duty that is due; the seconds until the next one is."""
        now = time.monotonic()
        with self._lock:
            due = [entry for entry in self._entries.values() if entry.due_at <= now]
            for entry in due:
                entry.last_at = now
                entry.due_at = float("inf") if entry.requested else now + entry.period_s
        for entry in due:
            if self._stopping.is_set():
                break
            try:
                entry.run()
            except Exception:  # background work must never end the loop
                if not entry.failing:
                    logger.warning("housekeeping duty %s failed; it runs again at each "
                                   "turn until it succeeds", entry.name, exc_info=True)
                entry.failing = True
                continue
            if entry.failing:
                logger.warning("housekeeping duty %s succeeds again", entry.name)
                entry.failing = False
        with self._lock:
            next_at = min((entry.due_at for entry in self._entries.values()),
                          default=float("inf"))
        return max(0.0, next_at - time.monotonic())

    def _loop(self) -> None:
        while not self._stopping.is_set():
            wait_s = self.run_due()
            self._wake.wait(None if wait_s == float("inf") else wait_s)
            self._wake.clear()
