"""The inference service of one worker process: model sessions, the batcher, the ledger.

`begin` is everything one job does: parse, validate, join a batch. Its end (the result
composed, stored once and reported) is in `worker.endings`, run in the same thread or, for
a job whose batch has yet to run, in the finisher's (`worker.finisher`). It never raises
for a bad job: every failure becomes a stored terminal result.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Hashable, Mapping
from concurrent.futures import Future
from typing import Any

import numpy.typing as npt
import redis

from inferfleet import keys
from inferfleet.batching import Arrival, BatchOutcome, BatchRecord, MicroBatcher
from inferfleet.cache import ResultCache
from inferfleet.errors import (
    ErrorCode,
    InferfleetError,
    JobRefusedError,
    UnknownModelError,
    WireFormatError,
)
from inferfleet.ledger import Ledger, dead_letter
from inferfleet.liveness import Heartbeats
from inferfleet.logs import job_context
from inferfleet.models.postprocess import Column, postprocess
from inferfleet.models.registry import Registry
from inferfleet.models.runtime import OnnxModel
from inferfleet.producer.publish import task_envelope
from inferfleet.schemas import JobRequest, JobStatus, WireResult
from inferfleet.settings import Settings
from inferfleet.stored_inputs import fetch, inline, resolve, stored_apart
from inferfleet.tracing import NO_TRACE, JobTracer
from inferfleet.validation import Limits
from inferfleet.worker.backlog import QueueBacklog, TakeAhead, TakenJobs, messages_to_take
from inferfleet.worker.cached import JobCache, cache_version
from inferfleet.worker.cached import Outputs as CacheOutputs
from inferfleet.worker.delivery import Delivery, InFlightJobs
from inferfleet.worker.discovery import ModelDiscovery
from inferfleet.worker.endings import JobEndings, log_end
from inferfleet.worker.finisher import Finisher
from inferfleet.worker.housekeeping import Housekeeping
from inferfleet.worker.jobs import checked_request, checked_samples
from inferfleet.worker.marks import RunningMarks
from inferfleet.worker.metrics import WorkerMetrics
from inferfleet.worker.pool import ModelPool
from inferfleet.worker.running import JobEnded, Prepared, RunningJob
from inferfleet.worker.upkeep import schedule_upkeep

logger = logging.getLogger(__name__)


class InferenceService:
    """Serves `inferfleet.predict` jobs in one worker process."""

    def __init__(self, settings: Settings, client: redis.Redis) -> None:
        self.settings = settings
        self.client = client
        self.ledger = Ledger(client, ttl_s=settings.result_ttl_s,
                             session_stream_max_jobs=settings.session_stream_max_jobs)
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
        #: Composes, stores and reports every job's result.
        self.endings = JobEndings(self.ledger, settings=settings, running=self.running,
                                  in_flight=self.in_flight)
        #: Ends the jobs whose batch had not run when their pool thread handed them on.
        self.finisher: Finisher[RunningJob, BatchOutcome] = Finisher(
            self.endings.end_round, time_limit_s=settings.job_time_limit_s,
            name=f"finisher-{os.getpid()}")
        #: Serves models added to the folder later; set by a worker serving every model.
        self.discovery: ModelDiscovery | None = None
        #: Rows this process keeps ahead of its batcher: enough for the next batches,
        #: no more.
        self.take_ahead = TakeAhead(settings.max_batch_rows)
        self._rows_per_job = 1.0  # a moving average of the jobs taken

    @property
    def metrics(self) -> WorkerMetrics | None:
        """The worker's Prometheus metrics; None until the worker that serves them sets
        them."""
        return self.endings.metrics

    @metrics.setter
    def metrics(self, metrics: WorkerMetrics | None) -> None:
        self.endings.metrics = metrics

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
        try:
            with job_context(job_id, delivery.kwargs):
                result = self._handle(delivery, ended)
        except BaseException:
            self.in_flight.end(job_id)
            raise
        if result is None:
            return  # handed to the finisher, which ends it
        self.in_flight.end(job_id)
        log_end(result, delivery.kwargs)
        ended(result, None)

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
        job = RunningJob(delivery, ended, started, NO_TRACE if self.tracer is None else
                         self.tracer.job(job_id, kwargs, delivery.headers, started))
        self.running.mark(job_id)
        try:
            if delivery.positional_args:
                raise JobRefusedError(ErrorCode.BAD_REQUEST,
                                      f"{keys.TASK_NAME} takes keyword arguments only (the "
                                      f"wire schema); got {delivery.positional_args} "
                                      "positional")
            with self.batcher.arriving() as arrival:
                job.prepared = prepared = self._prepare(job, arrival)
            if prepared.waits_for_batch() and self._hand_over(job, prepared):
                return None
            result = self.endings.result_of(job, prepared, self._outcome_of(prepared))
        except JobRefusedError as exc:
            result = self.endings.failed(
                job_id, kwargs, exc.code, str(exc),
                status=JobStatus.EXPIRED if exc.code is ErrorCode.EXPIRED else JobStatus.FAILED)
        with job.trace.writing():
            first = self.endings.store(result, kwargs)
        self.endings.stored(job_id, result, job.trace, first=first)
        return result

    def _hand_over(self, job: RunningJob, prepared: Prepared) -> bool:
        """Give the job to the finisher; False if it is not running (stopping, or a
        service used in-process), and this thread must end the job."""
        assert prepared.future is not None  # see Prepared.waits_for_batch
        try:
            self.finisher.hand_over(job, prepared.future)
        except RuntimeError:
            return False
        return True

    def fail(self, job_id: str, kwargs: dict[str, Any], exc: BaseException) -> WireResult:
        """End a job that raised unexpectedly with an `internal_error` result (once).

        Raises:
            redis.RedisError: if the result cannot be stored.
        """
        result = self.endings.internal_failure(job_id, kwargs, exc)
        self.endings.store(result, kwargs)
        return result

    def revoke(self, delivery: Delivery) -> None:
        """End a job revoked before it ran (`celery control revoke`): `failed` with code
        `revoked`, never computed; a result stored already is kept.

        Raises:
            redis.RedisError: if the result cannot be stored.
        """
        logger.info("job %s was revoked; not run", delivery.job_id)
        self.endings.store(self.endings.failed(delivery.job_id, delivery.kwargs,
                                               ErrorCode.REVOKED,
                                               "revoked before a worker ran it"),
                           delivery.kwargs)

    def _dead_letter(self, job_id: str, kwargs: dict[str, Any], deliveries: int) -> WireResult:
        reason = (f"delivered {deliveries} times without finishing (max_deliveries="
                  f"{self.settings.max_deliveries}): its worker died each time")
        logger.error("job %s dead-lettered: %s", job_id, reason)
        result = self.endings.failed(job_id, kwargs, ErrorCode.TOO_MANY_DELIVERIES, reason,
                                     status=JobStatus.DEAD_LETTERED)
        queue = keys.model_queue(str(kwargs.get("model", "")))
        # A replay is a new job: the original's deadline, notify list, submit time and
        # input string (deleted with the result stored below) belong to the original.
        fresh = {**kwargs, "deadline_at": None, "notify": None, "submitted_at": None}
        if "inputs" in fresh:
            fresh["inputs"] = self._inlined_inputs(job_id, fresh["inputs"])
        copy = task_envelope(str(uuid.uuid4()), queue, fresh, f"{{replay of {job_id}}}")
        dead_letter(self.client, queue=queue, reason=reason, raw=copy, job_id=None)
        self.endings.store(result, kwargs)
        return result

    def _prepare(self, job: RunningJob, arrival: Arrival) -> Prepared:
        """The job's checked samples, handed to the batcher.

        Raises:
            JobRefusedError: if the job ends without being computed (`expired` if its
                message was first taken after its deadline).
        """
        delivery = job.delivery
        self._read_stored_inputs(delivery.job_id, delivery.kwargs.get("inputs"))
        request = checked_request(delivery.kwargs, taken_at=delivery.taken_at or job.started,
                                  max_deadline_s=self.settings.result_ttl_s)
        model = self._model_for(request)
        samples = checked_samples(request, model.signature, self.limits)
        high = delivery.priority == "high"

        def submit(inputs: Mapping[str, npt.NDArray[Any]]) -> Future[BatchOutcome]:
            return self.batcher.submit(_batch_key(model, inputs, high=high), inputs,
                                       arrival=arrival, tag=job.trace.link, patient=not high)

        if not len(samples.valid_index):
            return Prepared(request, model, samples, None)
        if request.cache if request.cache is not None else model.config.cache:
            cached = self.cache.begin(request.model, cache_version(model), samples, submit,
                                      self._cache_outputs(model))
            return Prepared(request, model, samples, cached.future, cached)
        return Prepared(request, model, samples, submit(samples.inputs))

    def _read_stored_inputs(self, job_id: str, inputs: object) -> None:
        """Give the job's arrays kept apart their bytes (`inferfleet.stored_inputs`), in
        place: one GET, and no copy.

        Raises:
            JobRefusedError: if the input string is gone, or an array points outside it.
            redis.RedisError: if Redis cannot be read (the message goes back).
        """
        if not stored_apart(inputs):
            return
        try:
            resolve(inputs, fetch(self.client, job_id,
                                  max_bytes=self.settings.max_message_bytes), job_id)
        except WireFormatError as exc:
            raise JobRefusedError(exc.code, str(exc)) from exc

    def _inlined_inputs(self, job_id: str, inputs: object) -> object:
        """The job's inputs with every array's bytes inline, for a copy under a new id;
        as they are if the input string cannot be read (the copy then fails, saying so)."""
        try:
            self._read_stored_inputs(job_id, inputs)
        except JobRefusedError:
            return inputs
        inline(inputs)
        return inputs

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

    @staticmethod
    def _cache_outputs(model: OnnxModel) -> CacheOutputs:
        """What the cache keeps of a model's outputs, and how the rest is made again."""
        return CacheOutputs(tuple(spec.name for spec in model.signature.outputs),
                            lambda columns: postprocess(columns, model.postprocess,
                                                        model.signature.labels))

    def _outcome_of(self, prepared: Prepared) -> BatchOutcome | BaseException | None:
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


def _batch_key(model: OnnxModel, inputs: Mapping[str, npt.NDArray[Any]], *,
               high: bool = False) -> Hashable:
    """Jobs share a batch only for the same model version and per-sample shapes; the key
    holds the model itself, so a batch runs on the version its jobs were checked against
    even if a new one has loaded since. `high` jobs batch apart, and their batches never
    wait for company: their lane runs beside one of bulk work (ONNX Runtime runs a
    session's calls concurrently), never behind its batches."""
    shapes = tuple((name, array.shape[1:]) for name, array in sorted(inputs.items()))
    return (model.signature.name, model, shapes, high)

