"""The inference service of one worker process: model sessions, the batcher, the ledger.

`handle` is everything one job does: parse, validate, join a batch, store the result.
It never raises for a bad job: every failure becomes a stored terminal result.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
import uuid
from collections.abc import Callable, Hashable, Mapping, Sequence
from concurrent.futures import Future
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import numpy.typing as npt
import redis

from inferfleet import keys
from inferfleet.batching import Arrival, BatchOutcome, BatchRecord, MicroBatcher
from inferfleet.cache import ResultCache
from inferfleet.errors import ErrorCode, InferfleetError, JobRefusedError, UnknownModelError
from inferfleet.ledger import Ledger, dead_letter
from inferfleet.liveness import Heartbeats
from inferfleet.logs import job_context
from inferfleet.models.postprocess import Column, postprocess
from inferfleet.models.registry import Registry
from inferfleet.models.runtime import OnnxModel
from inferfleet.producer.publish import task_envelope
from inferfleet.schemas import ErrorInfo, JobRequest, JobStatus, JobTimings, WireResult
from inferfleet.settings import Settings
from inferfleet.tracing import NO_TRACE, JobTrace, JobTracer
from inferfleet.validation import Limits, ValidatedJob
from inferfleet.worker.backlog import QueueBacklog, TakeAhead, TakenJobs, messages_to_take
from inferfleet.worker.cached import CachedJob, JobCache, cache_version
from inferfleet.worker.cached import Outputs as CacheOutputs
from inferfleet.worker.delivery import Delivery, InFlightJobs
from inferfleet.worker.discovery import ModelDiscovery
from inferfleet.worker.finisher import Finisher
from inferfleet.worker.housekeeping import Housekeeping
from inferfleet.worker.jobs import (
    checked_request,
    checked_samples,
    compose_result,
    failed_result,
)
from inferfleet.worker.marks import RunningMarks
from inferfleet.worker.metrics import WorkerMetrics
from inferfleet.worker.pool import ModelPool
from inferfleet.worker.upkeep import schedule_upkeep
from inferfleet.worker.writer import GroupWriter

logger = logging.getLogger(__name__)

#: The first and the longest wait between writes that a full Redis refused.
FULL_BACKOFF_S = (0.05, 1.0)


@dataclass
class _Prepared:
    request: JobRequest
    model: OnnxModel
    job: ValidatedJob
    future: Future[BatchOutcome] | None
    trace: JobTrace
    #: The job's way through the result cache, when it uses it.
    cached: CachedJob | None = None


#: What a job's runner hears, once, when the job has ended: its stored result (None for a
#: message this process no longer holds), or the `redis.RedisError` that kept it from
#: being stored.
JobEnded = Callable[[WireResult | None, BaseException | None], None]


@dataclass(eq=False)
class _Handed:
    """A job handed to the finisher: what ending it takes."""

    job_id: str
    prepared: _Prepared
    started: float
    kwargs: dict[str, Any]
    ended: JobEnded


class InferenceService:
    """Serves `inferfleet.predict` jobs in one worker process."""

    def __init__(self, settings: Settings, client: redis.Redis) -> None:
        self.settings = settings
        self.client = client
        self.ledger = Ledger(client, ttl_s=settings.result_ttl_s,
                             session_stream_max_jobs=settings.session_stream_max_jobs)
        self.results = GroupWriter(self.ledger.store_results)
        #: The background duties of this process; started by `start`.
        self.housekeeping = Housekeeping(name="worker-housekeeping")
        #: The holder ids of this process's broker channels (the transport's).
        self.heartbeats = Heartbeats()
        schedule_upkeep(self.housekeeping, client=client, ledger=self.ledger,
                        heartbeats=self.heartbeats, settings=settings)
        self.running = RunningMarks(self.ledger, self.housekeeping)
        #: Jobs this process took that no pool thread has begun (the lean path counts).
        self.taken = TakenJobs()
        #: Makes each job's spans (`INFERFLEET_OTEL`); None when tracing is off.
        self.tracer = JobTracer() if settings.otel else None
        #: The result cache, for the jobs that use it.
        self.cache = JobCache(ResultCache(client, ttl_s=settings.cache_ttl_s,
                                          max_bytes=settings.cache_max_bytes))
        self.pool = ModelPool(Registry(settings.models_dir),
                              intra_op_threads=settings.ort_threads_per_process(),
                              providers=settings.provider_list(), on_load=self._publish)
        self.backlog = QueueBacklog(client, self.housekeeping,
                                    taken_not_begun=self.taken.not_begun)
        self.batcher = MicroBatcher(self._run_batch, max_batch_rows=settings.max_batch_rows,
                                    max_wait_ms=settings.max_wait_ms, backlog=self.backlog,
                                    name=f"b{os.getpid()}",
                                    on_batch=self._traced_batch if self.tracer else None)
        self.limits = Limits(max_job_samples=settings.max_job_samples,
                             max_sample_elements=settings.max_sample_elements)
        self.in_flight = InFlightJobs()
        #: Ends the jobs whose batch had not run when their pool thread handed them on.
        self.finisher: Finisher[_Handed, BatchOutcome] = Finisher(
            self._end_handed, time_limit_s=settings.job_time_limit_s,
            name=f"finisher-{os.getpid()}")
        self.metrics: WorkerMetrics | None = None  # set by the worker that serves them
        #: Serves models added to the folder later; set by a worker serving every model.
        self.discovery: ModelDiscovery | None = None
        #: Rows this process keeps ahead of its batcher: enough for the next batches,
        #: no more.
        self.take_ahead = TakeAhead(settings.max_batch_rows)
        self._rows_per_job = 1.0  # a moving average of the jobs taken

    def start(self) -> None:
        """Start the background duties (heartbeats first: a channel takes nothing until
        its holder is registered, which its first take does)."""
        self.housekeeping.start()
        self.finisher.start()

    def consumer_started(self, consumer: Any) -> None:
        """Celery's consumer (re)started task handling: the one to add queues to."""
        if self.discovery is not None:
            self.discovery.attach(consumer)

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the background duties, waiting up to `timeout_s` for the one running."""
        self.housekeeping.stop()
        self.finisher.stop()
        self.housekeeping.join(timeout_s)
        self.finisher.join(timeout_s)

    def job_began(self, job_id: str | None) -> bool:
        """Whether this process began the job (the transport asks as it puts messages back
        at close: one that never began counts no delivery)."""
        return job_id is not None and self.in_flight.claimed(job_id)

    def messages_wanted(self) -> int:
        """How many more messages this worker should take now (the transport asks before
        each take): as many as keep `take_ahead.rows` rows ahead of the batcher.

        Prefetch counts messages, not rows: with 256-sample jobs one worker took 148 of
        196 jobs and ran 650 ms after the other went idle (bulk run, two workers). An idle
        worker always wants one.
        """
        return messages_to_take(self.take_ahead.rows, rows_per_job=self._rows_per_job,
                                queued_rows=self.batcher.queued_rows,
                                jobs_ahead=self.batcher.arriving_jobs +
                                self.taken.not_begun())

    def job_taken(self, queue: str, rows: int) -> None:
        """A message of `rows` samples was taken from `queue` (in the consumer's thread):
        counted until a pool thread begins it, and its rows in the average the take
        budget converts rows to messages with. Counted at the take, not when a pool thread
        decodes the job: the next take is a round trip away, and with the average still at
        a single-sample job's one row a worker took 128 jobs of 256 samples in a burst,
        all of them ahead of a `high` job that came a moment later."""
        self.taken.taken(queue)
        self.backlog.taken(queue)
        self._rows_per_job += 0.2 * (max(1, rows) - self._rows_per_job)

    def warm_up(self, names: list[str]) -> list[str]:
        """Load each model (a first run included) and publish its signature; the names
        served."""
        served = []
        for name in names:
            try:
                self.pool.get(name)
            except InferfleetError as exc:
                logger.error("not serving model %s: %s", name, exc)
                continue
            served.append(name)
        logger.info("models %s loaded and warmed up", served)
        return served

    def _publish(self, model: OnnxModel) -> None:
        """Tell clients the signature (and providers) of a model version just loaded, and
        drop the cached results of its other versions."""
        signature = model.signature.model_copy(update={"providers": model.providers})
        self.client.hset(keys.MODELS_HASH, model.signature.name, signature.model_dump_json())
        self.cache.model_loaded(model)

    def begin(self, delivery: Delivery, ended: JobEnded) -> None:
        """Run one job to its terminal result and store it (once); `ended` hears of it
        exactly once: in this thread, or, for a job whose batch had not run when this
        thread handed it to the batcher, in the finisher's thread once it ran (this
        thread is free meanwhile). The result is None for a message this process no
        longer holds (its holder lapsed while it waited here: the fleet gave it to
        another worker, so it is neither run nor acked here); the error, a
        `redis.RedisError` that kept the result from being stored.

        A job delivered more than `max_deliveries` times (its worker died each time) is
        not computed again: it ends `dead_lettered`, and a copy of it under a new job id
        goes to the dead-letter list, to replay once its cause is fixed. A job that came
        back with its result stored, or that this process is running already, is not
        computed again either: the stored result is returned.

        Raises:
            Exception: what kept the job from ending before `ended` was called (then it
                is not called): a `redis.RedisError`, or a bug.
        """
        job_id = delivery.job_id
        if delivery.tag is not None and not self.heartbeats.holds(delivery.tag):
            logger.warning("job %s: its message was given to another worker while it "
                           "waited here (this worker stalled); not run here", job_id)
            ended(None, None)
            return
        while (earlier := self.in_flight.begin(job_id)) is not None:
            earlier.wait()
            if (stored := self.ledger.stored_result(job_id)) is not None:
                logger.info("job %s delivered again while it ran here; not run twice", job_id)
                ended(stored, None)
                return
        result = None
        try:
            with job_context(job_id, delivery.kwargs):
                result = self._handle(delivery, ended)
        finally:
            if result is not None or sys.exc_info()[0] is not None:
                self.in_flight.end(job_id)  # else the finisher ends it
        if result is not None:
            _log_end(result, delivery.kwargs)
            ended(result, None)

    def handle(self, delivery: Delivery) -> WireResult | None:
        """`begin`, returning once the job has ended: its stored result (None for a
        message this process no longer holds).

        Raises:
            Exception: what kept the job from ending (`redis.RedisError`: its result could
                not be stored).
        """
        over = threading.Event()
        endings: list[tuple[WireResult | None, BaseException | None]] = []

        def ended(result: WireResult | None, error: BaseException | None) -> None:
            endings.append((result, error))
            over.set()

        self.begin(delivery, ended)
        over.wait()
        result, error = endings[0]
        if error is not None:
            raise error
        return result

    def _handle(self, delivery: Delivery, ended: JobEnded) -> WireResult | None:
        """The job's stored result, or None once it is handed to the finisher."""
        job_id, kwargs = delivery.job_id, delivery.kwargs
        if delivery.redelivered:
            deliveries, finished = self.ledger.count_redelivery(job_id)
            # Stored by an earlier delivery whose worker died before the ack: ack it now.
            if finished and (stored := self.ledger.stored_result(job_id)) is not None:
                logger.info("job %s came back with its result stored; not run again", job_id)
                return stored
            if deliveries > self.settings.max_deliveries:
                return self._dead_letter(job_id, kwargs, deliveries)
        started = time.time()
        trace = NO_TRACE if self.tracer is None else \
            self.tracer.job(job_id, kwargs, delivery.headers, started)
        self.running.mark(job_id)
        try:
            if delivery.positional_args:
                raise JobRefusedError(ErrorCode.BAD_REQUEST,
                                      f"{keys.TASK_NAME} takes keyword arguments only (the "
                                      f"wire schema); got {delivery.positional_args} "
                                      "positional")
            with self.batcher.arriving() as arrival:
                prepared = self._prepare(job_id, delivery, delivery.taken_at or started,
                                         arrival, trace)
            if self._hand_over(_Handed(job_id, prepared, started, kwargs, ended)):
                return None
            result = self._finish(job_id, prepared, started, self._outcome_of(prepared))
        except JobRefusedError as exc:
            result = self._failed(job_id, kwargs, exc.code, str(exc),
                                  status=JobStatus.EXPIRED if exc.code is ErrorCode.EXPIRED
                                  else JobStatus.FAILED)
        with trace.writing():
            first = self._store(result, kwargs)
        self._stored(job_id, result, trace, first=first)
        return result

    def _stored(self, job_id: str, result: WireResult, trace: JobTrace, *,
                first: bool) -> None:
        trace.end(result)
        self.running.done(job_id)
        if not first:
            logger.warning("job %s already had a terminal result; kept the first", job_id)

    def _hand_over(self, handed: _Handed) -> bool:
        """Give the job to the finisher if its batch has yet to run; False if this thread
        ends it (its batch ran inline, it has none, or it goes through the cache)."""
        future = handed.prepared.future
        if future is None or handed.prepared.cached is not None or future.done():
            return False
        try:
            self.finisher.hand_over(handed, future)
        except RuntimeError:  # not running (stopping, or a service used in-process)
            return False
        return True

    def _end_handed(self, jobs: Sequence[tuple[_Handed, BatchOutcome | BaseException]]
                    ) -> None:
        """The finisher's call: compose the jobs' results, store them in one round trip,
        and tell each job's runner. One result that cannot be stored (a bug) never keeps
        the others from ending: then each is stored on its own."""
        results = [self._finished_result(handed, outcome) for handed, outcome in jobs]
        try:
            with ExitStack() as writing:
                for handed, _ in jobs:
                    writing.enter_context(handed.prepared.trace.writing())
                firsts = self._write([(result, _notify_list(handed.kwargs))
                                      for (handed, _), result in zip(jobs, results,
                                                                     strict=True)],
                                     self.ledger.store_results)
        except redis.RedisError as exc:
            logger.warning("%d job(s): Redis failed (%s) storing their results",
                           len(jobs), exc)
            for handed, _ in jobs:
                self.in_flight.end(handed.job_id)
                _tell(handed, None, exc)
            return
        except Exception:
            logger.exception("storing %d results at once raised; storing each alone",
                             len(jobs))
            for (handed, _), result in zip(jobs, results, strict=True):
                self._end_alone(handed, result)
            return
        for (handed, _), result, first in zip(jobs, results, firsts, strict=True):
            self._stored(handed.job_id, result, handed.prepared.trace, first=first)
            self.in_flight.end(handed.job_id)
            _log_end(result, handed.kwargs)
            _tell(handed, result, None)

    def _finished_result(self, handed: _Handed,
                         outcome: BatchOutcome | BaseException) -> WireResult:
        with job_context(handed.job_id, handed.kwargs):
            try:
                return self._finish(handed.job_id, handed.prepared, handed.started, outcome)
            except Exception as exc:  # every job must end: a bug still gets a result
                logger.exception("job %s failed unexpectedly", handed.job_id)
                return self._internal_failure(handed.job_id, handed.kwargs, exc)

    def _end_alone(self, handed: _Handed, result: WireResult) -> None:
        """Store one handed-over job's result by itself (`internal_error` if even that
        raises for another reason than Redis), and tell its runner."""
        try:
            try:
                first = self._store(result, handed.kwargs)
            except redis.RedisError:
                raise
            except Exception as exc:
                logger.exception("job %s: its result could not be stored", handed.job_id)
                result = self._internal_failure(handed.job_id, handed.kwargs, exc)
                first = self._store(result, handed.kwargs)
        except redis.RedisError as exc:
            self.in_flight.end(handed.job_id)
            _tell(handed, None, exc)
            return
        self._stored(handed.job_id, result, handed.prepared.trace, first=first)
        self.in_flight.end(handed.job_id)
        _log_end(result, handed.kwargs)
        _tell(handed, result, None)

    def fail(self, job_id: str, kwargs: dict[str, Any], exc: Exception) -> WireResult:
        """End a job that raised unexpectedly with an `internal_error` result (once).

        Raises:
            redis.RedisError: if the result cannot be stored.
        """
        result = self._internal_failure(job_id, kwargs, exc)
        self._store(result, kwargs)
        return result

    def _internal_failure(self, job_id: str, kwargs: dict[str, Any],
                          exc: Exception) -> WireResult:
        message = f"{type(exc).__name__}: {exc}"
        try:
            return self._failed(job_id, kwargs, ErrorCode.INTERNAL_ERROR, message)
        except Exception:  # the request defeats even that: end the job with nothing of it
            logger.exception("job %s: no result could be made of its request", job_id)
            return WireResult(job_id=job_id, model="", status=JobStatus.FAILED,
                              sample_ids=[], sample_status=[],
                              error=ErrorInfo(code=ErrorCode.INTERNAL_ERROR, message=message))

    def revoke(self, delivery: Delivery) -> None:
        """End a job revoked before it ran (`celery control revoke`): `failed` with code
        `revoked`, never computed; a result stored already is kept.

        Raises:
            redis.RedisError: if the result cannot be stored.
        """
        logger.info("job %s was revoked; not run", delivery.job_id)
        self._store(self._failed(delivery.job_id, delivery.kwargs, ErrorCode.REVOKED,
                                 "revoked before a worker ran it"), delivery.kwargs)

    def _dead_letter(self, job_id: str, kwargs: dict[str, Any], deliveries: int) -> WireResult:
        reason = (f"delivered {deliveries} times without finishing (max_deliveries="
                  f"{self.settings.max_deliveries}): its worker died each time")
        logger.error("job %s dead-lettered: %s", job_id, reason)
        result = self._failed(job_id, kwargs, ErrorCode.TOO_MANY_DELIVERIES, reason,
                               status=JobStatus.DEAD_LETTERED)
        queue = keys.model_queue(str(kwargs.get("model", "")))
        # A replay is a new job: the original's deadline, notify list and submit time
        # belong to the original.
        fresh = {**kwargs, "deadline_at": None, "notify": None, "submitted_at": None}
        copy = task_envelope(str(uuid.uuid4()), queue, fresh, f"{{replay of {job_id}}}")
        dead_letter(self.client, queue=queue, reason=reason, raw=copy, job_id=None)
        self._store(result, kwargs)
        return result

    def _failed(self, job_id: str, kwargs: dict[str, Any], code: ErrorCode, message: str,
                *, status: JobStatus = JobStatus.FAILED) -> WireResult:
        """`failed_result`, reporting no more samples than the job may hold."""
        return failed_result(job_id, kwargs, code, message, status=status,
                             most_samples=self.limits.max_job_samples)

    def _store(self, result: WireResult, kwargs: dict[str, Any]) -> bool:
        """Store the result once (False if one was stored already), gathered with those
        of other pool threads storing at the same time, and count it.

        Raises:
            redis.RedisError: if Redis cannot be reached, or refuses for another reason.
        """
        return self._write([(result, _notify_list(kwargs))],
                           lambda pairs: [self.results.store(*pairs[0])])[0]

    def _write(self, pairs: list[tuple[WireResult, str | None]],
               write: Callable[[Sequence[tuple[WireResult, str | None]]], list[bool]]
               ) -> list[bool]:
        """`write(pairs)` (each result once: False if one was stored already), counted.

        A Redis at its maxmemory refuses the write: the jobs wait for room, their messages
        still held (given back by the fleet if this worker dies meanwhile), rather than
        being requeued, which would need room too.

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

    def _prepare(self, job_id: str, delivery: Delivery, taken_at: float,
                 arrival: Arrival, trace: JobTrace) -> _Prepared:
        """The job's checked samples, handed to the batcher.

        Raises:
            JobRefusedError: if the job ends without being computed (`expired` if its
                message was first taken after its deadline).
        """
        request = checked_request(delivery.kwargs, taken_at=taken_at,
                                  max_deadline_s=self.settings.result_ttl_s)
        model = self._model_for(request)
        job = checked_samples(request, model.signature, self.limits)
        high = delivery.priority == "high"

        def submit(inputs: Mapping[str, npt.NDArray[Any]]) -> Future[BatchOutcome]:
            return self.batcher.submit(_batch_key(model, inputs, high=high), inputs,
                                       arrival=arrival, tag=trace.link, patient=not high)

        if not len(job.valid_index):
            return _Prepared(request, model, job, None, trace)
        if request.cache if request.cache is not None else model.config.cache:
            cached = self.cache.begin(request.model, cache_version(model), job, submit,
                                      self._cache_outputs(model))
            return _Prepared(request, model, job, cached.future, trace, cached)
        return _Prepared(request, model, job, submit(job.inputs), trace)

    def _model_for(self, request: JobRequest) -> OnnxModel:
        """Raises: JobRefusedError: if this worker cannot serve the model asked for."""
        try:
            model = self.pool.get(request.model)
        except UnknownModelError as exc:
            raise JobRefusedError(ErrorCode.UNKNOWN_MODEL, str(exc)) from exc
        except InferfleetError as exc:  # a model folder that cannot be loaded
            raise JobRefusedError(ErrorCode.INTERNAL_ERROR, str(exc)) from exc
        wanted = request.model_version
        if wanted is not None and wanted != model.signature.version:
            raise JobRefusedError(ErrorCode.UNKNOWN_MODEL, str(UnknownModelError(
                request.model, f"version {wanted!r} is not served; this worker has "
                               f"{model.signature.version!r}")))
        return model

    def _finish(self, job_id: str, prepared: _Prepared, started: float,
                outcome: BatchOutcome | BaseException | None) -> WireResult:
        """The job's result, from its batch outcome (None: it had no sample to compute),
        or from what its batch raised (`TimeoutError`: none came within the limit)."""
        if isinstance(outcome, TimeoutError):
            logger.error("job %s: no batch result within job_time_limit_s", job_id)
            return self._failed(
                job_id, prepared.request.model_dump(), ErrorCode.INTERNAL_ERROR,
                f"its batch did not finish within job_time_limit_s="
                f"{self.settings.job_time_limit_s:g} (the worker was busy with earlier "
                "batches)")
        if isinstance(outcome, BaseException):  # a broken batch must still end this job
            logger.error("job %s: batch failed", job_id, exc_info=outcome)
            return self._failed(job_id, prepared.request.model_dump(),
                                ErrorCode.INTERNAL_ERROR, f"batch failed: {outcome}")
        # The batch that computed some of its samples (none: all came from the cache).
        batch = outcome if outcome is not None and outcome.batch_id else None
        if batch is not None:
            prepared.trace.batched(batch)
        finished = time.time()
        submitted = prepared.request.submitted_at
        timings = JobTimings(
            queued_ms=None if submitted is None else max(0.0, (started - submitted) * 1000),
            batch_wait_ms=batch.wait_ms if batch else None,
            inference_ms=batch.run_ms if batch else None,
            total_ms=(finished - started) * 1000)
        result = compose_result(job_id, prepared.request, prepared.model.signature,
                                prepared.job, outcome, timings=timings,
                                providers=prepared.model.providers)
        result.latency_ms = None if submitted is None else (finished - submitted) * 1000
        result.batch_ids = [batch.batch_id] if batch else []
        if prepared.cached is not None:
            result.cache_hits = prepared.cached.hit_samples
            if self.metrics is not None:
                self.metrics.cache_used(result.model, hits=len(result.cache_hits),
                                        misses=len(prepared.job.valid_index) -
                                        len(result.cache_hits))
        return result

    @staticmethod
    def _cache_outputs(model: OnnxModel) -> CacheOutputs:
        """What the cache keeps of a model's outputs, and how the rest is made again."""
        return CacheOutputs(tuple(spec.name for spec in model.signature.outputs),
                            lambda columns: postprocess(columns, model.postprocess,
                                                        model.signature.labels))

    def _outcome_of(self, prepared: _Prepared) -> BatchOutcome | BaseException | None:
        """The batch outcome of the job's valid samples (through the cache, if it uses
        it), waiting up to `job_time_limit_s`; what its batch raised, or a `TimeoutError`;
        None if it has no sample to compute."""
        limit = self.settings.job_time_limit_s
        try:
            if prepared.cached is not None:
                return self.cache.finish(prepared.cached, timeout_s=limit)
            if prepared.future is None:
                return None
            return prepared.future.result(timeout=limit)
        except TimeoutError as exc:
            if prepared.future is not None:
                prepared.future.cancel()  # not computed for nobody, if not begun yet
            return exc
        except Exception as exc:
            return exc

    def _run_batch(self, key: Hashable, inputs: Mapping[str, npt.NDArray[Any]]
                   ) -> dict[str, Column]:
        name: str = key[0]  # type: ignore[index]  # see _batch_key
        model: OnnxModel = key[1]  # type: ignore[index]
        started = time.perf_counter()
        outputs = model.run(inputs)
        seconds, rows = time.perf_counter() - started, len(next(iter(inputs.values())))
        self.take_ahead.batch_ran(rows, seconds)
        if self.metrics is not None:
            self.metrics.batch_done(name, rows, seconds)
        return postprocess(outputs, model.postprocess, model.signature.labels)

    def _traced_batch(self, record: BatchRecord) -> None:
        """The batcher's observer when tracing is on: the batch's span."""
        assert self.tracer is not None
        self.tracer.batch(record, model=record.key[0])  # type: ignore[index]  # _batch_key


def _log_end(result: WireResult, kwargs: dict[str, Any]) -> None:
    if not logger.isEnabledFor(logging.DEBUG):
        return
    with job_context(result.job_id, kwargs):
        logger.debug("job %s ended %s (%d samples, batches %s)", result.job_id,
                     result.status.value, len(result.sample_ids), result.batch_ids,
                     extra={"batch_id": ",".join(result.batch_ids) or None})


def _tell(handed: _Handed, result: WireResult | None, error: BaseException | None) -> None:
    """Tell a handed-over job's runner how it ended; what the runner raises (a failed
    ack, say) is its own, and must not keep the jobs after it from ending."""
    try:
        handed.ended(result, error)
    except Exception:
        logger.exception("job %s: its runner raised at its end", handed.job_id)


def _notify_list(kwargs: dict[str, Any]) -> str | None:
    """The request's notify list, only if it is one a producer may name."""
    notify = kwargs.get("notify")
    if isinstance(notify, str) and notify.startswith(keys.NOTIFY_PREFIX) and len(notify) < 200:
        return notify
    return None


def _batch_key(model: OnnxModel, inputs: Mapping[str, npt.NDArray[Any]], *,
               high: bool = False) -> Hashable:
    """Jobs share a batch only for the same model version and per-sample shapes; the key
    holds the model itself, so a batch runs on the version its jobs were checked against
    even if a new one has loaded since. `high` jobs batch apart, and their batches never
    wait for company: their lane runs beside one of bulk work (ONNX Runtime runs a
    session's calls concurrently), never behind its batches."""
    shapes = tuple((name, array.shape[1:]) for name, array in sorted(inputs.items()))
    return (model.signature.name, model, shapes, high)

