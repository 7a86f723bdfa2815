"""How a job ends: its result composed from its batch's outcome, stored once (with the
rest of a finisher's round in one round trip), counted, and its runner told.

Every path ends here: a job that ends in its own pool thread (`end`), and a round of jobs
the finisher ends together (`end_round`). A result is written once: a redelivered job
never overwrites the first (`Ledger.store_results`). A Redis at its maxmemory refuses a
write: the job waits for room, its message still held, rather than being requeued.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from typing import Any

import redis

from inferfleet.batching import BatchOutcome
from inferfleet.errors import ErrorCode
from inferfleet.ledger import Ledger
from inferfleet.logs import job_context
from inferfleet.schemas import ErrorInfo, JobStatus, JobTimings, WireResult
from inferfleet.settings import Settings
from inferfleet.tracing import JobTrace
from inferfleet.worker.delivery import InFlightJobs
from inferfleet.worker.jobs import compose_result, failed_result
from inferfleet.worker.marks import RunningMarks
from inferfleet.worker.metrics import WorkerMetrics
from inferfleet.worker.running import Prepared, RunningJob, notify_list
from inferfleet.worker.writer import GroupWriter

logger = logging.getLogger(__name__)

#: The first and the longest wait between writes that a full Redis refused.
FULL_BACKOFF_S = (0.05, 1.0)

Store = Callable[[Sequence[tuple[WireResult, str | None]]], list[bool]]


class JobEndings:
    """Ends the jobs of one worker process; safe to call from any thread."""

    def __init__(self, ledger: Ledger, *, settings: Settings, running: RunningMarks,
                 in_flight: InFlightJobs) -> None:
        self.ledger = ledger
        self.settings = settings
        self.running = running
        self.in_flight = in_flight
        #: Results of pool threads storing at the same time go in one round trip.
        self.results = GroupWriter(ledger.store_results)
        self.metrics: WorkerMetrics | None = None

    def result_of(self, job: RunningJob, prepared: Prepared,
                  outcome: BatchOutcome | BaseException | None) -> WireResult:
        """The job's result, from its batch outcome (None: it had no sample to compute),
        or from what its batch raised (`TimeoutError`: none came within the limit)."""
        if isinstance(outcome, TimeoutError):
            logger.error("job %s: no batch result within job_time_limit_s", job.job_id)
            return self.failed(
                job.job_id, job.kwargs, ErrorCode.INTERNAL_ERROR,
                f"its batch did not finish within job_time_limit_s="
                f"{self.settings.job_time_limit_s:g} (the worker was busy with earlier "
                "batches)")
        if isinstance(outcome, BaseException):  # a broken batch must still end this job
            logger.error("job %s: batch failed", job.job_id, exc_info=outcome)
            return self.failed(job.job_id, job.kwargs, ErrorCode.INTERNAL_ERROR,
                               f"batch failed: {outcome}")
        # The batch that computed some of its samples (none: all came from the cache).
        batch = outcome if outcome is not None and outcome.batch_id else None
        if batch is not None:
            job.trace.batched(batch)
        finished = time.time()
        submitted = prepared.request.submitted_at
        timings = JobTimings(
            queued_ms=None if submitted is None else max(0.0, (job.started - submitted) * 1000),
            batch_wait_ms=batch.wait_ms if batch else None,
            inference_ms=batch.run_ms if batch else None,
            total_ms=(finished - job.started) * 1000)
        result = compose_result(job.job_id, prepared.request, prepared.model.signature,
                                prepared.samples, outcome, timings=timings,
                                providers=prepared.model.providers)
        result.latency_ms = None if submitted is None else (finished - submitted) * 1000
        result.batch_ids = [batch.batch_id] if batch else []
        if prepared.cached is not None:
            result.cache_hits = prepared.cached.hit_samples
            if self.metrics is not None:
                self.metrics.cache_used(result.model, hits=len(result.cache_hits),
                                        misses=len(prepared.samples.valid_index) -
                                        len(result.cache_hits))
        return result

    def failed(self, job_id: str, kwargs: dict[str, Any], code: ErrorCode, message: str,
               *, status: JobStatus = JobStatus.FAILED) -> WireResult:
        """`failed_result`, reporting no more samples than the job may hold."""
        return failed_result(job_id, kwargs, code, message, status=status,
                             most_samples=self.settings.max_job_samples)

    def internal_failure(self, job_id: str, kwargs: dict[str, Any],
                         exc: BaseException) -> WireResult:
        """The `internal_error` result of a job that raised unexpectedly."""
        message = f"{type(exc).__name__}: {exc}"
        try:
            return self.failed(job_id, kwargs, ErrorCode.INTERNAL_ERROR, message)
        except Exception:  # the request defeats even that: end the job with nothing of it
            logger.exception("job %s: no result could be made of its request", job_id)
            return WireResult(job_id=job_id, model="", status=JobStatus.FAILED,
                              sample_ids=[], sample_status=[],
                              error=ErrorInfo(code=ErrorCode.INTERNAL_ERROR, message=message))

    def store(self, result: WireResult, kwargs: dict[str, Any]) -> bool:
        """Store the result once (False if one was stored already), gathered with those
        of other pool threads storing at the same time, and count it.

        Raises:
            redis.RedisError: if Redis cannot be reached, or refuses for another reason.
        """
        return self._write([(result, notify_list(kwargs))],
                           lambda pairs: [self.results.store(*pairs[0])])[0]

    def stored(self, job_id: str, result: WireResult, trace: JobTrace, *,
               first: bool) -> None:
        """What follows a job's stored result in this process."""
        trace.end(result)
        self.running.done(job_id)
        if not first:
            logger.warning("job %s already had a terminal result; kept the first", job_id)

    def end_round(self, jobs: Sequence[tuple[RunningJob, BatchOutcome | BaseException]]
                  ) -> None:
        """The finisher's call: compose the jobs' results, store them in one round trip,
        and tell each job's runner. One result that cannot be stored (a bug) never keeps
        the others from ending: then each is stored on its own."""
        results = [self._round_result(job, outcome) for job, outcome in jobs]
        try:
            with ExitStack() as writing:
                for job, _ in jobs:
                    writing.enter_context(job.trace.writing())
                firsts = self._write([(result, job.notify_list())
                                      for (job, _), result in zip(jobs, results, strict=True)],
                                     self.ledger.store_results)
        except redis.RedisError as exc:
            logger.warning("%d job(s): Redis failed (%s) storing their results",
                           len(jobs), exc)
            for job, _ in jobs:
                self._not_stored(job, exc)
            return
        except Exception:
            logger.exception("storing %d results at once raised; storing each alone",
                             len(jobs))
            for (job, _), result in zip(jobs, results, strict=True):
                self._end_alone(job, result)
            return
        for (job, _), result, first in zip(jobs, results, firsts, strict=True):
            self._ended(job, result, first=first)

    def _round_result(self, job: RunningJob,
                      outcome: BatchOutcome | BaseException) -> WireResult:
        with job_context(job.job_id, job.kwargs):
            try:
                assert job.prepared is not None  # only prepared jobs are handed over
                return self.result_of(job, job.prepared, outcome)
            except Exception as exc:  # every job must end: a bug still gets a result
                logger.exception("job %s failed unexpectedly", job.job_id)
                return self.internal_failure(job.job_id, job.kwargs, exc)

    def _end_alone(self, job: RunningJob, result: WireResult) -> None:
        """Store one job of a round by itself (`internal_error` if even that raises for
        another reason than Redis), and tell its runner."""
        try:
            try:
                first = self.store(result, job.kwargs)
            except redis.RedisError:
                raise
            except Exception as exc:
                logger.exception("job %s: its result could not be stored", job.job_id)
                result = self.internal_failure(job.job_id, job.kwargs, exc)
                first = self.store(result, job.kwargs)
        except redis.RedisError as exc:
            self._not_stored(job, exc)
            return
        self._ended(job, result, first=first)

    def _ended(self, job: RunningJob, result: WireResult, *, first: bool) -> None:
        """A handed-over job's result is stored: the rest of its end, its runner told."""
        self.stored(job.job_id, result, job.trace, first=first)
        self.in_flight.end(job.job_id)
        log_end(result, job.kwargs)
        _tell(job, result, None)

    def _not_stored(self, job: RunningJob, error: redis.RedisError) -> None:
        """A handed-over job's result could not be stored: its runner requeues it."""
        self.in_flight.end(job.job_id)
        _tell(job, None, error)

    def _write(self, pairs: list[tuple[WireResult, str | None]], write: Store) -> list[bool]:
        """`write(pairs)` (each result once: False if one was stored already), counted,
        waiting for room while Redis is full.

        Raises:
            redis.RedisError: if Redis cannot be reached, or refuses for another reason.
        """
        started = time.perf_counter()
        wait_s = FULL_BACKOFF_S[0]
        while True:
            try:
                firsts = write(pairs)
                break
            except redis.exceptions.OutOfMemoryError:
                if self.metrics is not None:
                    for result, _ in pairs:
                        self.metrics.refused_writes.labels(result.model).inc()
                if wait_s == FULL_BACKOFF_S[0]:
                    logger.warning("job %s: Redis is full (at its maxmemory); its result "
                                   "waits for room", pairs[0][0].job_id)
                time.sleep(wait_s)
                wait_s = min(FULL_BACKOFF_S[1], 2 * wait_s)
        if self.metrics is not None:
            seconds = time.perf_counter() - started
            for (result, _), first in zip(pairs, firsts, strict=True):
                if first:
                    self.metrics.job_done(result, seconds)
        return firsts


def log_end(result: WireResult, kwargs: dict[str, Any]) -> None:
    """The job's last log line (at DEBUG), with its ids."""
    if not logger.isEnabledFor(logging.DEBUG):
        return
    with job_context(result.job_id, kwargs):
        logger.debug("job %s ended %s (%d samples, batches %s)", result.job_id,
                     result.status.value, len(result.sample_ids), result.batch_ids,
                     extra={"batch_id": ",".join(result.batch_ids) or None})


def _tell(job: RunningJob, result: WireResult | None, error: BaseException | None) -> None:
    """Tell a job's runner how it ended; what the runner raises (a failed ack, say) is
    its own, and must not keep the jobs after it from ending."""
    try:
        job.ended(result, error)
    except Exception:
        logger.exception("job %s: its runner raised at its end", job.job_id)
