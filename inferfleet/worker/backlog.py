"""How much work is ahead of a worker's batcher: the hint that holding a batch open will
pay, and how many more messages the worker should take."""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Iterable

import redis

from inferfleet import keys
from inferfleet.worker.housekeeping import Housekeeping


class QueueBacklog:
    """How many jobs for a batch key's model are known to be coming: those this worker
    has taken from Redis that no pool thread has begun (`taken_not_begun` of its queues:
    a take holds up to 16, prefetch up to `prefetch_multiplier` x concurrency), and the
    messages still waiting in Redis.
    The batcher's hint that holding a batch open will pay.

    Answered from memory, never with a round trip on the batch's path: a housekeeping duty
    reads the queue lengths of the models asked about since its last read, at most every
    `REFRESH_S`. A model's first batch after a quiet spell therefore sees 0 and runs at once.
    The messages this worker took since a read are taken off what it read (`taken`):
    without that, a read made between a lone job's submit and its take counted the job
    itself, and its batch waited the whole `max_wait_ms` for it (1% of the jobs at one
    in flight, the light-load p99: 12 ms against a p50 of 2).
    """

    REFRESH_S = 0.005
    #: How soon the queues of a model are read again after a read found them empty.
    #: Asked at every lone job's batch, a read each cost the housekeeping thread a round
    #: trip (~220 us of worker CPU a job at 200 single-sample jobs/s) to learn that the
    #: queue was still empty; a backlog building meanwhile is seen this much later (the
    #: jobs a take brought and no thread has begun are counted at once, from memory).
    EMPTY_REFRESH_S = 0.05
    DUTY = "queue-backlog"

    def __init__(self, client: redis.Redis, housekeeping: Housekeeping, *,
                 taken_not_begun: Callable[[Iterable[str]], int]) -> None:
        self.client = client
        self._taken_not_begun = taken_not_begun
        self.housekeeping = housekeeping
        self._waiting: dict[str, int] = {}
        self._taken_since_read: dict[str, int] = {}
        self._asked: set[str] = set()
        housekeeping.when_asked(self.refresh, name=self.DUTY, min_interval_s=self.REFRESH_S)

    def __call__(self, key: Hashable) -> int:
        model = str(key[0])  # type: ignore[index]
        self._asked.add(model)
        last_read = self._waiting.get(model, 0)
        self.housekeeping.ask(self.DUTY, delay_s=0.0 if last_read else self.EMPTY_REFRESH_S)
        waiting = last_read - self._taken_since_read.get(model, 0)
        return max(0, waiting) + self._taken_not_begun(
            (keys.model_queue(model), keys.DEFAULT_QUEUE))

    def taken(self, queue: str) -> None:
        """This worker took a message from `queue` (in the consumer's thread)."""
        model = queue.removeprefix(keys.model_queue(""))
        if model != queue:
            self._taken_since_read[model] = self._taken_since_read.get(model, 0) + 1

    def refresh(self) -> None:
        """Read the queue lengths of the models asked about (0 for all if Redis fails:
        it is only a hint)."""
        active, self._asked = list(self._asked), set()
        try:
            pipe = self.client.pipeline(transaction=False)
            for model in active:
                for key in keys.queue_lists(keys.model_queue(model)):
                    pipe.llen(key)
            pipe.llen(keys.DEFAULT_QUEUE)
            for model in active:  # from here on, a take is one the read may miss
                self._taken_since_read[model] = 0
            *lengths, shared = pipe.execute()
            levels = len(keys.PRIORITIES)
            self._waiting = {model: sum(map(int, lengths[i * levels:(i + 1) * levels]))
                             + int(shared) for i, model in enumerate(active)}
        except redis.RedisError:  # only a hint: never let it fail a batch
            self._waiting = {}


class TakenJobs:
    """How many jobs of each queue this process took that no pool thread has begun: the
    backlog the batcher waits for and the take budget counts. Safe from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._not_begun: dict[str, int] = {}

    def taken(self, queue: str) -> None:
        with self._lock:
            self._not_begun[queue] = self._not_begun.get(queue, 0) + 1

    def began(self, queue: str) -> None:
        with self._lock:
            left = self._not_begun.get(queue, 0) - 1
            if left > 0:
                self._not_begun[queue] = left
            else:
                self._not_begun.pop(queue, None)

    def not_begun(self, queues: Iterable[str] | None = None) -> int:
        """Of `queues` (all of them when None)."""
        counts = dict(self._not_begun)  # one step under the GIL: threads change it meanwhile
        if queues is None:
            return sum(counts.values())
        return sum(counts.get(queue, 0) for queue in queues)


class TakeAhead:
    """How many rows a worker keeps ahead of its batcher (queued, being decoded, or taken
    and not begun): two full batches, but no more than `HORIZON_S` of its own measured
    compute. Without the time bound a worker of a heavy model hoarded work: with the
    bench's image model (1.3 s for a 1024-row batch) one of two workers took 32 of 30
    64-sample jobs and the other idled, 360 against 539 samples/s for one worker with the
    machine's both cores to itself.
    """

    HORIZON_S = 0.1
    _SMOOTHING = 0.2

    def __init__(self, max_batch_rows: int) -> None:
        self.most_rows = 2 * max_batch_rows
        self._rows_per_s: float | None = None

    def batch_ran(self, rows: int, seconds: float) -> None:
        """One batch of `rows` took `seconds` in ONNX Runtime."""
        if rows <= 0 or seconds <= 0:
            return
        rate = rows / seconds
        previous = self._rows_per_s
        self._rows_per_s = rate if previous is None else \
            previous + self._SMOOTHING * (rate - previous)

    @property
    def rows(self) -> int:
        if self._rows_per_s is None:
            return self.most_rows
        return max(1, min(self.most_rows, int(self._rows_per_s * self.HORIZON_S)))


def messages_to_take(take_ahead_rows: int, *, rows_per_job: float, queued_rows: int,
                     jobs_ahead: int) -> int:
    """Messages to take so that `take_ahead_rows` rows wait ahead of the batcher: rows it
    holds queued, plus jobs taken but not yet submitted to it, at `rows_per_job` each. At
    least one when nothing waits at all."""
    per_job = max(1.0, rows_per_job)
    if jobs_ahead == 0 and queued_rows == 0:
        return max(1, int(take_ahead_rows // per_job))
    rows_ahead = queued_rows + jobs_ahead * per_job
    return max(0, int((take_ahead_rows - rows_ahead) // per_job))
