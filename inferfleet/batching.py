"""The micro-batcher: coalesce the rows of many jobs into one model call, split it back.

Pure: no Celery, Redis or ONNX Runtime. Callers `submit(key, inputs)` from any thread and
get a `Future[BatchOutcome]`. Keys (model, version, per-sample shapes) never mix, and each
key runs one batch at a time. A request that finds its key idle, with nothing pending,
no other job announced and no backlog, runs at once in the caller's thread (a hand-off to
another thread costs a GIL switch, measured at ~0.5 ms in a busy worker). Otherwise it
joins its key's queue, which one thread per key serves: a batch waits, up to `max_wait_ms`
after its first request, only while there is evidence of more: callers have announced
jobs they are still decoding (`arriving()`), or the optional `backlog(key)` hint (say,
messages still queued for that model; it must answer from memory, as it is asked under
the batcher's lock) is positive. It never
grows past `max_batch_rows` (a single larger request is run in slices). If the batch
function raises, the batch is bisected until each failing row is isolated, so one bad row
never fails its neighbours.

An optional `on_batch` observer hears of every batch that ran (`BatchRecord`: its id,
timing, rows, and the `tag` each request was submitted with): tracing links a batch's
span to its jobs' spans this way.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from inferfleet.errors import BatchContractError

logger = logging.getLogger(__name__)

Array = npt.NDArray[Any]
Column = Array | list[Any]
BatchFunction = Callable[[Hashable, Mapping[str, Array]], Mapping[str, Column]]
BacklogHint = Callable[[Hashable], int]
BatchObserver = Callable[["BatchRecord"], None]


@dataclass
class BatchOutcome:
    """A request's share of its batch: outputs for each of its rows, and which rows failed.

    Rows in `failed_rows` hold zeros (arrays) or None (lists) in `outputs`.
    """

    outputs: dict[str, Column]
    failed_rows: dict[int, str]
    batch_id: str
    batch_rows: int
    wait_ms: float
    run_ms: float
    #: When the batch began (epoch seconds).
    started_at: float = 0.0


@dataclass(frozen=True)
class BatchRecord:
    """One batch that ran, for an `on_batch` observer."""

    batch_id: str
    key: Hashable
    #: The `tag` of each request in it, in batch order.
    tags: list[object]
    #: When it began (epoch seconds), and how long it ran.
    started_at: float
    run_s: float
    rows: int
    failed_rows: int


class Arrival:
    """The token of one announced job (see `MicroBatcher.arriving`)."""


@dataclass
class _Request:
    inputs: Mapping[str, Array]
    rows: int
    future: Future[BatchOutcome]
    enqueued_at: float
    tag: object = None
    patient: bool = True


@dataclass
class _Segment:
    start: int
    stop: int
    outputs: Mapping[str, Column] | None
    error: str | None = None


@dataclass
class _Lane:
    """The queue and runner thread of one key."""

    pending: deque[_Request] = field(default_factory=deque)
    thread: threading.Thread | None = None
    #: A batch of this key is running (in the lane's thread or a caller's).
    busy: bool = False


class MicroBatcher:
    """Coalesces requests per key into calls of `run_batch(key, inputs)`.

    A key's lane lives only while it has work: its runner thread ends after `LANE_IDLE_S`
    without any, and a lane that never needed one is dropped after its inline run. Keys
    may hold big objects (a model version that was replaced): nothing keeps them alive.
    """

    #: How long a lane's runner thread waits for more work before it ends.
    LANE_IDLE_S = 30.0
    #: How often a batch held open for a backlog asks the hint again.
    HINT_S = 0.002

    def __init__(self, run_batch: BatchFunction, *, max_batch_rows: int, max_wait_ms: float,
                 backlog: BacklogHint | None = None, name: str = "batcher",
                 on_batch: BatchObserver | None = None) -> None:
        if max_batch_rows < 1:
            raise ValueError(f"max_batch_rows must be >= 1, got {max_batch_rows!r}")
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {max_wait_ms!r}")
        self._run_batch = run_batch
        self._backlog = backlog
        self._on_batch = on_batch
        self.max_batch_rows = max_batch_rows
        self.max_wait_s = max_wait_ms / 1000
        self._name = name
        self._cond = threading.Condition()
        self._lanes: dict[Hashable, _Lane] = {}
        self._arriving = 0
        self._queued_rows = 0
        self._closed = False
        self._batch_numbers = itertools.count(1)

    @property
    def queued_rows(self) -> int:
        """Rows submitted that no batch has begun yet (all keys)."""
        return self._queued_rows

    @property
    def arriving_jobs(self) -> int:
        """Jobs announced with `arriving()` that have not submitted yet."""
        return self._arriving

    @contextmanager
    def arriving(self) -> Iterator[Arrival]:
        """Announce a job that will `submit` soon, so open batches may wait for it; pass
        the token to that `submit`, so that the job does not wait for itself."""
        with self._cond:
            self._arriving += 1
        try:
            yield Arrival()
        finally:
            with self._cond:
                self._arriving -= 1
                self._cond.notify_all()

    def submit(self, key: Hashable, inputs: Mapping[str, Array], *,
               arrival: Arrival | None = None, tag: object = None,
               patient: bool = True) -> Future[BatchOutcome]:
        """Queue `inputs` (every array's first axis: the same rows) for a batch under `key`,
        or run them at once in this thread if nothing else is running, pending or coming
        for `key` (then the future is done on return). `tag` goes to the `on_batch`
        observer with the batch. A request that is not `patient` (an interactive job's)
        never waits for company: it runs at once if its key is idle, else in the key's
        next batch, which starts as soon as the running one ends.

        Raises:
            RuntimeError: if the batcher is closed.
            ValueError: if the inputs are empty or disagree on their number of rows.
        """
        rows = {len(array) for array in inputs.values()}
        if len(rows) != 1:
            raise ValueError(f"inputs must share their number of rows, got {sorted(rows)}")
        future: Future[BatchOutcome] = Future()
        request = _Request(inputs, rows.pop(), future, time.monotonic(), tag, patient)
        with self._cond:
            if self._closed:
                raise RuntimeError(f"{self._name} is closed")
            lane = self._lanes.setdefault(key, _Lane())
            others_arriving = self._arriving - (arrival is not None)
            inline = not (lane.busy or lane.pending or (patient and (
                others_arriving > 0 or self._hinted_backlog(key) > 0)))
            if inline:
                lane.busy = True
            else:
                lane.pending.append(request)
                self._queued_rows += request.rows
                if lane.thread is None:
                    lane.thread = threading.Thread(target=self._serve, args=(key, lane),
                                                   name=f"{self._name}-{key}", daemon=True)
                    lane.thread.start()
                self._cond.notify_all()
        if inline:
            self._run_and_release(key, lane, [request])
        return future

    def _hinted_backlog(self, key: Hashable) -> int:
        """The backlog hint for `key`, 0 without one. A hint that raises counts as 0: it
        must never stop a batch (one that raised in a lane's thread ended the thread, and
        every later job of its key waited out its time limit)."""
        if self._backlog is None:
            return 0
        try:
            return self._backlog(key)
        except Exception:
            logger.warning("the backlog hint failed for %r; taken as 0", key, exc_info=True)
            return 0

    def close(self) -> None:
        """Stop the runner threads once their queues are empty."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            threads = [lane.thread for lane in self._lanes.values() if lane.thread]
        for thread in threads:
            thread.join()

    def _serve(self, key: Hashable, lane: _Lane) -> None:
        while True:
            batch = self._next_batch(key, lane)
            if batch is None:
                return
            self._run_and_release(key, lane, batch)

    def _run_and_release(self, key: Hashable, lane: _Lane, batch: list[_Request]) -> None:
        try:
            if batch:
                self._run(key, batch)
        finally:
            with self._cond:
                lane.busy = False
                if lane.thread is None and not lane.pending:
                    self._drop(key, lane)
                self._cond.notify_all()

    def _drop(self, key: Hashable, lane: _Lane) -> None:
        """Forget an idle lane (called with the lock held)."""
        if self._lanes.get(key) is lane:
            del self._lanes[key]

    def _next_batch(self, key: Hashable, lane: _Lane) -> list[_Request] | None:
        """The next batch of `lane`, once it is idle; marks it busy. None once closed."""
        with self._cond:
            idle_until = time.monotonic() + self.LANE_IDLE_S
            while not lane.pending or lane.busy:
                if self._closed and not lane.pending:
                    return None
                remaining = idle_until - time.monotonic()
                if remaining <= 0 and not lane.busy:  # nothing pending either
                    lane.thread = None  # a later request starts another
                    self._drop(key, lane)
                    return None
                self._cond.wait(remaining if remaining > 0 else None)
            if lane.pending[0].patient:
                deadline = lane.pending[0].enqueued_at + self.max_wait_s
                while ((self._arriving or self._hinted_backlog(key))
                       and _rows(lane.pending) < self.max_batch_rows
                       and (remaining := deadline - time.monotonic()) > 0):
                    # The hint is asked again every HINT_S: one that drops to nothing
                    # (the jobs it counted were taken elsewhere) ends the wait.
                    self._cond.wait(min(remaining, self.HINT_S))
            lane.busy = True
            return self._take(lane)

    def _take(self, lane: _Lane) -> list[_Request]:
        """The next batch from `lane.pending`, leaving out requests whose caller gave up
        waiting (cancelled their future); it may be empty."""
        batch: list[_Request] = []
        rows = 0
        while lane.pending and (not batch or
                                rows + lane.pending[0].rows <= self.max_batch_rows):
            request = lane.pending.popleft()
            self._queued_rows -= request.rows
            if request.future.set_running_or_notify_cancel():
                batch.append(request)
                rows += request.rows
        return batch

    def _run(self, key: Hashable, batch: list[_Request]) -> None:
        started, started_at = time.monotonic(), time.time()
        batch_id = f"{self._name}-{next(self._batch_numbers)}"
        try:
            inputs = _concatenate([request.inputs for request in batch])
            total = _rows(batch)
            segments = [segment
                        for start in range(0, total, self.max_batch_rows)
                        for segment in self._isolate(key, inputs, start,
                                                     min(total, start + self.max_batch_rows))]
            outputs = _assemble(segments, total)
        except BaseException as exc:  # every waiter must hear of it, whatever it was
            logger.exception("batch %s failed as a whole", batch_id,
                             extra={"batch_id": batch_id})
            for request in batch:
                request.future.set_exception(exc)
            return
        run_ms = (time.monotonic() - started) * 1000
        failed = {row: s.error or "" for s in segments if s.outputs is None
                  for row in range(s.start, s.stop)}
        offset = 0
        for request in batch:
            stop = offset + request.rows
            request.future.set_result(BatchOutcome(
                outputs={name: column[offset:stop] for name, column in outputs.items()},
                failed_rows={row - offset: msg for row, msg in failed.items()
                             if offset <= row < stop},
                batch_id=batch_id, batch_rows=total,
                wait_ms=(started - request.enqueued_at) * 1000, run_ms=run_ms,
                started_at=started_at,
            ))
            offset = stop
        if self._on_batch is not None:
            self._report(BatchRecord(batch_id, key, [request.tag for request in batch],
                                     started_at, run_ms / 1000, total, len(failed)))

    def _report(self, record: BatchRecord) -> None:
        """Tell the observer; one that raises never fails a batch (its jobs have their
        outcomes already)."""
        assert self._on_batch is not None
        try:
            self._on_batch(record)
        except Exception:
            logger.warning("the batch observer failed for %s", record.batch_id, exc_info=True)

    def _isolate(self, key: Hashable, inputs: Mapping[str, Array], start: int,
                 stop: int) -> list[_Segment]:
        """Run rows [start, stop); on failure bisect until failing rows stand alone."""
        try:
            outputs = self._run_batch(key, {n: a[start:stop] for n, a in inputs.items()})
            _check_rows(outputs, stop - start)
            return [_Segment(start, stop, outputs)]
        except BatchContractError:
            raise
        except Exception as exc:
            if stop - start == 1:
                return [_Segment(start, stop, None, f"{type(exc).__name__}: {exc}")]
            middle = (start + stop) // 2
            return self._isolate(key, inputs, start, middle) + \
                self._isolate(key, inputs, middle, stop)


def _rows(requests: Iterable[_Request]) -> int:
    """Total rows of the requests."""
    return sum(request.rows for request in requests)


def _concatenate(inputs: list[Mapping[str, Array]]) -> dict[str, Array]:
    if len(inputs) == 1:
        return dict(inputs[0])
    return {name: np.concatenate([one[name] for one in inputs]) for name in inputs[0]}


def _check_rows(outputs: Mapping[str, Column], rows: int) -> None:
    for name, column in outputs.items():
        if len(column) != rows:
            raise BatchContractError(
                f"batch function returned {len(column)} rows of output {name!r} for "
                f"{rows} input rows")


def _assemble(segments: list[_Segment], total: int) -> dict[str, Column]:
    """One column per output over all rows; rows of failed segments are zero or None."""
    done = [s for s in segments if s.outputs is not None]
    if len(segments) == 1 and done:
        return dict(done[0].outputs or {})
    if not done:
        return {}
    columns: dict[str, Column] = {}
    for name, template in (done[0].outputs or {}).items():
        if isinstance(template, np.ndarray):
            column: Column = np.zeros((total, *template.shape[1:]), dtype=template.dtype)
        else:
            column = [None] * total
        for segment in done:
            column[segment.start:segment.stop] = (segment.outputs or {})[name]
        columns[name] = column
    return columns
