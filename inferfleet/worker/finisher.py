"""Jobs ended per batch, in one thread: the pool thread that prepared a job hands it over
instead of waiting for its batch.

With a pool thread blocked on each job's batch, every job of a batch woke its own thread
(a `Future`'s `Condition`, then the group writer's), one GIL hand-off per job: py-spy put
those waits and wake-ups at ~15% of a busy worker's Python CPU under single-sample jobs.
Here the batcher's thread only appends the finished job to a list; the finisher wakes
once for everything that finished meanwhile and hands the lot to `end_jobs` (which stores
their results in one round trip, then acks and reports each).

A job whose batch has not run within `time_limit_s` ends with a `TimeoutError` instead
(its request is cancelled if no batch has begun it), as a blocked pool thread's wait did.

`start()`, `stop()`, `join()`: a lifecycle like dramatiq's workers. `drain()` waits for
the jobs handed over (a warm shutdown acks them before the connection closes).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import CancelledError, Future
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

logger = logging.getLogger(__name__)

Job = TypeVar("Job")
Outcome = TypeVar("Outcome")


@dataclass(eq=False)
class _Waiting(Generic[Job, Outcome]):
    job: Job
    future: Future[Outcome]
    expires_at: float  # time.monotonic()
    ended: bool = False


class Finisher(Generic[Job, Outcome]):
    """Calls `end_jobs([(job, outcome or the exception its future holds), ...])` from its
    own thread once the futures of handed-over jobs are done: each job exactly once, many
    per call."""

    #: The longest sleep with nothing to do (how soon `stop` is noticed at the latest).
    IDLE_S = 1.0

    def __init__(self, end_jobs: Callable[[Sequence[tuple[Job, Outcome | BaseException]]],
                                          None],
                 *, time_limit_s: float, name: str = "finisher") -> None:
        self._end_jobs = end_jobs
        self.time_limit_s = time_limit_s
        self._name = name
        self._cond = threading.Condition()
        #: By their future's id, in the order handed over.
        self._waiting: dict[int, _Waiting[Job, Outcome]] = {}
        self._ready: list[_Waiting[Job, Outcome]] = []
        self._ending = 0  # jobs in an `end_jobs` call under way
        self._stopped = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        with self._cond:
            if self._thread is None:
                self._stopped = False
                self._thread = threading.Thread(target=self._loop, name=self._name,
                                                daemon=True)
                self._thread.start()

    def stop(self) -> None:
        """Let the thread end once the jobs handed over have ended."""
        with self._cond:
            self._stopped = True
            self._cond.notify_all()

    def join(self, timeout_s: float | None = None) -> None:
        thread = self._thread
        if thread is not None:
            thread.join(timeout_s)

    def hand_over(self, job: Job, future: Future[Outcome]) -> None:
        """End `job` once `future` is done (or after `time_limit_s`).

        Raises:
            RuntimeError: if the finisher is not running (it would never end the job).
        """
        waiting = _Waiting(job, future, time.monotonic() + self.time_limit_s)
        with self._cond:
            if self._thread is None or self._stopped:
                raise RuntimeError(f"{self._name} is not running")
            self._waiting[id(future)] = waiting
        # A bound method, not a closure over the job: a job usually holds its future, and
        # a callback holding the job made a reference cycle of every job, freed only by
        # the cyclic collector, with its batch's output arrays.
        future.add_done_callback(self._done)

    def pending(self) -> int:
        """Jobs handed over that have not ended yet."""
        with self._cond:
            return len(self._waiting) + self._ending

    def drain(self, timeout_s: float) -> bool:
        """Wait until every job handed over has ended; False if some had not after
        `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self._waiting or self._ending:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
        return True

    def _done(self, future: Future[Outcome]) -> None:
        """The future's callback, in the thread that completed it (a batch's): a list
        append, and a wake-up only for the first job of a round. (A future alive here
        has an id no other live object has, so the id finds its own job.)"""
        with self._cond:
            waiting = self._waiting.get(id(future))
            if waiting is None or waiting.future is not future or waiting.ended:
                return  # timed out already
            self._ready.append(waiting)
            if len(self._ready) == 1:
                self._cond.notify_all()

    def _loop(self) -> None:
        while True:
            with self._cond:
                batch = self._next_round()
                if batch is None:
                    return
                self._ending += len(batch)
            try:
                self._end_jobs(batch)
            except Exception:  # a bug there must not stop the jobs after it from ending
                logger.exception("%s: ending %d job(s) raised", self._name, len(batch))
            finally:
                with self._cond:
                    self._ending -= len(batch)
                    self._cond.notify_all()
                del batch  # not kept (with its outputs) while the next round waits

    def _next_round(self) -> list[tuple[Job, Outcome | BaseException]] | None:
        """The jobs to end now (called with the lock held, waiting for some); None once
        stopped with nothing left."""
        while True:
            now = time.monotonic()
            expired = self._expired(now)
            if self._ready or expired:
                ready, self._ready = self._ready, []
                ended: list[tuple[Job, Outcome | BaseException]] = []
                for waiting in ready:
                    waiting.ended = True
                    del self._waiting[id(waiting.future)]
                    ended.append((waiting.job, _outcome(waiting.future)))
                return ended + [(waiting.job, _timed_out(waiting)) for waiting in expired]
            if self._stopped and not self._waiting:
                return None
            oldest = next(iter(self._waiting.values()), None)
            wait_s = self.IDLE_S if oldest is None else \
                min(self.IDLE_S, oldest.expires_at - now)
            self._cond.wait(max(wait_s, 0.001))

    def _expired(self, now: float) -> list[_Waiting[Job, Outcome]]:
        """Jobs past their time limit, taken out (the oldest come first)."""
        expired = []
        for waiting in self._waiting.values():
            if waiting.expires_at > now:
                break
            if not waiting.future.done():
                expired.append(waiting)
        for waiting in expired:
            waiting.ended = True
            del self._waiting[id(waiting.future)]
        return expired


def _outcome(future: Future[Any]) -> Any:
    if future.cancelled():
        return CancelledError()
    exception = future.exception()
    return future.result() if exception is None else exception


def _timed_out(waiting: _Waiting[Any, Any]) -> TimeoutError:
    waiting.future.cancel()  # not computed for nobody, if no batch has begun it
    return TimeoutError("no batch result within the time limit")
