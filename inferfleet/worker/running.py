"""One job as a worker process runs it: one typed object from its delivery to its end.

A job's message is parsed once: `Delivery` (what the message said), then, once checked,
`Prepared` (its request, the model version it runs on, its checked samples, and how it
waits for its batch). `RunningJob` carries both, and how its runner hears of its end, to
whichever thread ends it: its own pool thread, or the finisher's (`worker.finisher`).
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from inferfleet import keys
from inferfleet.batching import BatchOutcome
from inferfleet.models.runtime import OnnxModel
from inferfleet.schemas import JobRequest, WireResult
from inferfleet.tracing import JobTrace
from inferfleet.validation import ValidatedJob
from inferfleet.worker.cached import CachedJob
from inferfleet.worker.delivery import Delivery

#: What a job's runner hears, once, when the job has ended: its stored result (None for a
#: message this process no longer holds), or the `redis.RedisError` that kept it from
#: being stored.
JobEnded = Callable[[WireResult | None, BaseException | None], None]


@dataclass(frozen=True)
class Prepared:
    """A checked job, handed to the batcher (or the result cache)."""

    request: JobRequest
    model: OnnxModel
    samples: ValidatedJob
    #: Its batch's outcome; None when no sample is valid (nothing to compute).
    future: Future[BatchOutcome] | None
    #: The job's way through the result cache, when it uses it.
    cached: CachedJob | None = None

    def waits_for_batch(self) -> bool:
        """Whether it waits for a batch that has not run (a job through the cache waits
        on the cache's own terms)."""
        return self.future is not None and self.cached is None and not self.future.done()


@dataclass(eq=False)
class RunningJob:
    """A job this process began: its delivery, its trace, its runner's callback, and,
    once checked, what it runs."""

    delivery: Delivery
    ended: JobEnded
    #: When this process began it (epoch seconds).
    started: float
    trace: JobTrace
    prepared: Prepared | None = None

    @property
    def job_id(self) -> str:
        return self.delivery.job_id

    @property
    def kwargs(self) -> dict[str, Any]:
        """The request as sent (every field unchecked: only a `Prepared` one is)."""
        return self.delivery.kwargs

    def notify_list(self) -> str | None:
        """The request's notify list, only if it is one a producer may name."""
        return notify_list(self.kwargs)


def notify_list(kwargs: dict[str, Any]) -> str | None:
    """The notify list of a request as sent, only if it is one a producer may name."""
    notify = kwargs.get("notify")
    if isinstance(notify, str) and notify.startswith(keys.NOTIFY_PREFIX) and len(notify) < 200:
        return notify
    return None
