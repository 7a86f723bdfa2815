"""`Client`: submit jobs, read their results and states; no worker or ONNX Runtime code.

Each job's message goes out in one pipeline with its ledger record (one round trip per
chunk of jobs, see `publish`), and results are read from Redis directly: a GET, then a
BLPOP on the job's doorbell, or the client's notify list for many jobs; never a per-job
pub/sub subscription.
"""

from __future__ import annotations

import functools
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, ParamSpec, TypeVar

import redis

from inferfleet import keys
from inferfleet.celery_app import make_app
from inferfleet.connections import redis_client
from inferfleet.errors import (
    BadArgumentError,
    DurabilityError,
    JobIdConflictError,
    QueueFullError,
    UnknownModelError,
)
from inferfleet.ledger import Enqueued, Ledger, QueuedJob, payload_of
from inferfleet.models.config import ModelSignature
from inferfleet.producer import core
from inferfleet.producer.inputs import checked_inputs, encode_inputs, n_samples, sample_bytes
from inferfleet.producer.messages import (
    Message,
    check_job_id,
    check_model_name,
    check_priority,
    chunks,
    sample_ids_of,
    samples_as_columns,
)
from inferfleet.producer.publish import shown_name, task_envelope
from inferfleet.producer.stream import stream
from inferfleet.producer.tables import is_data_frame
from inferfleet.schemas import (
    WIRE_VERSION,
    JobResult,
    SampleResult,
    SessionSummary,
)
from inferfleet.sessions import Subscription, check_session_id
from inferfleet.settings import Settings, load_settings
from inferfleet.tracing import SubmitTracer
from inferfleet.validation import Limits, SampleColumn
from inferfleet.wire import Wire

P = ParamSpec("P")
R = TypeVar("R")

#: How often a submit waiting for room in a full queue looks again.
ROOM_POLL_S = 0.05
#: How long a published signature is trusted before it is read again.
SIGNATURE_TTL_S = 5.0


def _broker_errors(method: Callable[P, R]) -> Callable[P, R]:
    """Raise the inferfleet error (`core.broker_error`) for Redis failures."""
    @functools.wraps(method)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        with core.mapped_errors(args[0].settings):  # type: ignore[attr-defined]
            return method(*args, **kwargs)
    return wrapper


@dataclass(frozen=True)
class Job:
    """A submitted job: its Celery task id and how to read its result."""

    id: str
    model: str
    n_samples: int
    session_id: str | None
    client: Client = field(repr=False, compare=False)
    #: When the job expires (epoch seconds): the deadline given, or the default one.
    deadline_at: float | None = None

    def result(self, timeout: float = 30.0) -> JobResult:
        """The job's terminal result; raises `ResultTimeoutError` (a TimeoutError) if late.

        A job with a deadline that Redis no longer knows of (a restart without
        persistence lost it) ends `expired` once the deadline has passed: see
        `Client.result`.
        """
        return self.client.result(self.id, timeout=timeout, deadline_at=self.deadline_at)

    def status(self) -> str:
        """queued, running, a terminal status, or unknown."""
        return self.client.status(self.id)


@dataclass(frozen=True)
class _Enqueueing:
    """How one submit's messages are enqueued: their times, how long to wait for room,
    and their priority."""

    submitted_at: float
    deadline_at: float | None
    wait_for_room_s: float
    priority: str


class Client:
    """Producer and reader of inferfleet jobs over one Redis (broker and results)."""

    def __init__(self, redis_url: str | None = None, *, settings: Settings | None = None) -> None:
        if settings is None:
            settings = load_settings(**({"redis_url": redis_url} if redis_url else {}))
        self.settings = settings
        self._app = make_app(settings)
        self.redis = redis_client(settings)
        self._wire = Wire(self.redis)
        self._ledger = Ledger(self.redis, ttl_s=settings.result_ttl_s, send=self._wire.send)
        self._limits = Limits(max_job_samples=settings.max_job_samples,
                              max_sample_elements=settings.max_sample_elements)
        self._signatures: dict[str, tuple[float, ModelSignature]] = {}
        self.notify_list = keys.notify_list(uuid.uuid4().hex)
        self._block_s = core.block_s(settings)
        # Jobs of this client whose notification was popped while waiting for others.
        self._landed: set[str] = set()
        #: Spans of the submits (`INFERFLEET_OTEL`); None when tracing is off.
        self._tracer = SubmitTracer() if settings.otel else None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the Redis connections."""
        self._wire.close()
        self.redis.close()
        self._app.close()

    def models(self) -> dict[str, ModelSignature]:
        """Signatures of every model some worker has published, by name."""
        return core.run(core.models(), self.redis, self.settings)

    @_broker_errors
    def signature(self, model: str) -> ModelSignature:
        """The published signature of `model` (read again after `SIGNATURE_TTL_S`).

        Raises:
            UnknownModelError: if no worker has published it.
        """
        return self._signature(model)

    def _signature(self, model: str) -> ModelSignature:
        cached = self._signatures.get(model)
        if cached is not None and time.monotonic() - cached[0] < SIGNATURE_TTL_S:
            return cached[1]
        raw = self.redis.hget(keys.MODELS_HASH, model)
        if raw is None:
            raise UnknownModelError(model, core.not_served_reason(self.redis.hkeys(
                keys.MODELS_HASH)))
        signature = ModelSignature.model_validate_json(raw)
        self._signatures[model] = (time.monotonic(), signature)
        return signature

    @_broker_errors
    def submit(self, model: str, samples: Any, *, session_id: str | None = None,
               sample_ids: Sequence[str] | None = None, model_version: str | None = None,
               deadline_s: float | None = None, validate: bool = True, strict: bool = False,
               wait_for_room_s: float = 0.0, job_id: str | None = None,
               priority: str = "normal", cache: bool | None = None) -> Job:
        """Enqueue one job holding every sample of `samples`.

        `samples` is an array whose first axis is the samples, a dict of input name to
        such arrays, a list of per-sample dicts, or a table: a pandas DataFrame or a list
        of {feature: value} dicts, matched to the model's features by name (a DataFrame's
        index gives the sample ids). Each sample is validated against the published
        signature: a bad one (NaN, wrong shape, ...) fails alone in the result, with its
        code, and the rest run; with `strict`, any bad sample raises before anything is
        enqueued. If the model's queue is at `max_queued_jobs`, wait up to
        `wait_for_room_s` for room, then raise.

        `job_id` makes the submit idempotent: a retry with the same id and the same
        inputs (model, version, session, samples, sample ids) returns the job submitted
        first, enqueued once; the same id with other inputs is refused. Without it, each
        submit is a new job with a fresh id.

        `priority` ("high", "normal" or "low") orders the model's queue: a worker takes
        `high` jobs before those queued earlier at `normal` (a bulk backfill), and `low`
        after both, with one take in ten kept for each lower level while higher ones
        have work, so that none waits for good.

        `cache=True` answers samples seen before (by this model version) from the
        fleet-wide result cache, without running the model (`SampleResult.cache_hit`);
        None leaves it to the model's config, False refuses it.

        Raises:
            InvalidInputError: listing each bad sample, if `strict` and any is bad
                (nothing is enqueued).
            UnknownModelError: if `validate` and no worker serves `model`.
            QueueFullError: if the model's queue has no room (nothing is enqueued).
            BadArgumentError: if the arguments cannot work (a table's missing or extra
                columns are named).
            JobIdConflictError: if `job_id` names a job submitted with other inputs.
        """
        check_job_id(job_id)
        return self._submit(model, samples, job_size=None, session_id=session_id,
                            sample_ids=sample_ids, model_version=model_version,
                            deadline_s=deadline_s, validate=validate, strict=strict,
                            wait_for_room_s=wait_for_room_s, job_id=job_id,
                            priority=priority, cache=cache)[0]

    @_broker_errors
    def submit_many(self, model: str, samples: Any, *, job_size: int = 256,
                    session_id: str | None = None, sample_ids: Sequence[str] | None = None,
                    model_version: str | None = None, deadline_s: float | None = None,
                    validate: bool = True, strict: bool = False,
                    wait_for_room_s: float = 0.0, priority: str = "normal",
                    cache: bool | None = None) -> list[Job]:
        """Split `samples` into jobs of `job_size` and enqueue them in pipelined chunks.

        Raises:
            The same as `submit`; nothing is enqueued if any sample is invalid. A
            `QueueFullError` lists, in `submitted`, the jobs enqueued before the queue
            filled.
        """
        if job_size < 1:
            raise BadArgumentError(f"job_size must be >= 1, got {job_size!r}")
        return self._submit(model, samples, job_size=job_size, session_id=session_id,
                            sample_ids=sample_ids, model_version=model_version,
                            deadline_s=deadline_s, validate=validate, strict=strict,
                            wait_for_room_s=wait_for_room_s, priority=priority, cache=cache)

    def stream(self, model: str, samples: Iterable[Any], *, max_in_flight: int = 1024,
               job_size: int | None = None, session_id: str | None = None, start: int = 0,
               timeout: float = 300.0, **options: Any) -> Iterator[SampleResult]:
        """Every sample of `samples` (any iterable or generator, one sample per item)
        through the fleet: its `SampleResult`s in input order as they land, with at most
        `max_in_flight` samples out at once, so memory stays flat however long it is.

        Samples go in jobs of `job_size` (default: a quarter of `max_in_flight`, at most
        256), their ids their positions from `start`. A bad sample is a failed result in
        the stream. `options` are those of `submit` (`model_version`, `deadline_s`, ...).

        Raises:
            StreamInterruptedError: (a BrokerError) if Redis fails or stalls, within the
                socket timeout, with `position`: resume with `stream(model,
                islice(samples, position - start, None), start=position)`.
            BadArgumentError: for bounds that cannot work, or samples that cannot be read.
        """
        if session_id is not None:
            check_session_id(session_id)
        return stream(self, model, samples, max_in_flight=max_in_flight, job_size=job_size,
                      start=start, timeout_s=timeout,
                      options={"session_id": session_id, **options})

    def predict_frame(self, model: str, frame: Any, *, job_size: int = 256,
                      session_id: str | None = None, timeout: float = 300.0,
                      **options: Any) -> Any:
        """A DataFrame through the fleet, its results as a DataFrame with the same index:
        status, label, score, `prob_<class>` per class and the error of each row.

        `options` are those of `submit_many`. Bad rows fail alone (their status and
        error say why) unless `strict=True`.

        Raises:
            The same as `submit_many`, and `ResultTimeoutError` after `timeout`.
        """
        from inferfleet.frames import results_frame

        jobs = self.submit_many(model, frame, job_size=job_size, session_id=session_id,
                                **options)
        results = self.results([job.id for job in jobs], timeout=timeout)
        return results_frame(results, signature=self._signature(model),
                             index_name=str(frame.index.name or "id"))

    def _submit(self, model: str, samples: Any, *, job_size: int | None,
                session_id: str | None, sample_ids: Sequence[str] | None,
                model_version: str | None, deadline_s: float | None,
                validate: bool, strict: bool, wait_for_room_s: float,
                job_id: str | None = None, priority: str = "normal",
                cache: bool | None = None) -> list[Job]:
        check_model_name(model)
        check_priority(priority)
        if cache is not None and not isinstance(cache, bool):
            raise BadArgumentError(f"cache must be True, False or None, got {cache!r}")
        if session_id is not None:
            check_session_id(session_id)
        table = is_data_frame(samples)
        signature = self._signature(model) if validate or table else None
        columns, table_ids = samples_as_columns(samples, signature)
        total = n_samples(columns)
        if total == 0:
            raise BadArgumentError("no samples to submit")
        size = job_size or total
        if size > self._limits.max_job_samples:
            raise BadArgumentError(
                f"a job of {size} samples is over max_job_samples="
                f"{self._limits.max_job_samples}; use submit_many with a smaller job_size")
        if validate and signature is not None:
            # Every sample is checked here; the per-job limit was checked just above.
            limits = replace(self._limits, max_job_samples=total)
            columns = checked_inputs(columns, signature, limits, strict=strict)
        ids = sample_ids_of(sample_ids if sample_ids is not None else table_ids, total)
        submitted_at = time.time()
        deadline_at = submitted_at + self._checked_deadline_s(deadline_s)
        common = {"v": WIRE_VERSION, "model": model, "model_version": model_version,
                  "session_id": session_id, "submitted_at": submitted_at,
                  "notify": self.notify_list,
                  "deadline_at": deadline_at, **({} if cache is None else {"cache": cache})}
        jobs: list[Job] = []
        for chunk_start, chunk_stop in chunks(total, size,
                                              sample_bytes=sample_bytes(columns, total)):
            messages = [self._message(job_id, common, columns, ids, start,
                                      min(start + size, total))
                        for start in range(chunk_start, chunk_stop, size)]
            self._publish(model, session_id, messages, _Enqueueing(
                submitted_at, deadline_at, wait_for_room_s, priority), jobs)
            jobs += [Job(m.job_id, model, m.samples, session_id, self, deadline_at)
                     for m in messages]
        return jobs

    @staticmethod
    def _message(job_id: str | None, common: dict[str, Any],
                 columns: Mapping[str | None, SampleColumn], ids: list[str] | None,
                 start: int, stop: int) -> Message:
        """The message of the job of samples [start, stop)."""
        inputs, string = encode_inputs(columns, start, stop)
        return Message(job_id or str(uuid.uuid4()), {
            **common, "inputs": inputs, "sample_ids": None if ids is None else ids[start:stop]},
            stop - start, given_id=job_id is not None, inputs_string=string)

    def _checked_deadline_s(self, deadline_s: float | None) -> float:
        """The job's deadline from now: the one given, else `default_deadline_s`.

        Raises:
            BadArgumentError: for one that is not positive, or beyond `result_ttl_s`
                (workers refuse it: the job's record would expire first).
        """
        if deadline_s is None:
            return self.settings.default_deadline_s
        if not 0 < deadline_s <= self.settings.result_ttl_s:
            raise BadArgumentError(f"deadline_s must be in (0, result_ttl_s="
                                   f"{self.settings.result_ttl_s}], got {deadline_s!r}")
        return deadline_s

    def _publish(self, model: str, session_id: str | None, messages: list[Message],
                 how: _Enqueueing, submitted: list[Job]) -> None:
        """Push the messages with their ledger records in one atomic round trip (in a
        span per job, when tracing is on).

        Raises:
            QueueFullError: if the queue has no room for them within `wait_for_room_s`.
        """
        if self._tracer is None:
            self._enqueue(model, session_id, messages, [None] * len(messages), how, submitted)
            return
        with self._tracer.submitting(model, session_id, [m.job_id for m in messages]
                                     ) as trace_headers:
            self._enqueue(model, session_id, messages, trace_headers, how, submitted)

    def _enqueue(self, model: str, session_id: str | None, messages: list[Message],
                 trace_headers: Sequence[dict[str, str] | None], how: _Enqueueing,
                 submitted: list[Job]) -> None:
        submitted_at, deadline_at = how.submitted_at, how.deadline_at
        queue = keys.model_queue(model)
        # The repr Flower shows; given so that nothing reprs the arrays.
        session = f", session: {session_id!r}" if session_id else ""
        queued_jobs = [QueuedJob(m.job_id, m.samples, task_envelope(
            m.job_id, queue, m.kwargs, f"{{model: {model!r}{session}, samples: {m.samples}}}",
            shadow=shown_name(model), trace_headers=headers), m.fingerprint(),
            m.inputs_string)
            for m, headers in zip(messages, trace_headers, strict=True)]
        # The input string counts: it is what the message would hold inline.
        biggest = max(len(job.envelope) + len(job.inputs_string or b"") for job in queued_jobs)
        if biggest > self.settings.max_message_bytes:
            raise BadArgumentError(
                f"a job's message would be {biggest} bytes, over max_message_bytes="
                f"{self.settings.max_message_bytes}: submit fewer samples per job")
        limit = self.settings.max_queued_jobs
        deadline = time.monotonic() + how.wait_for_room_s
        while True:
            try:
                outcome = self._ledger.enqueue(
                    queue, queued_jobs, model=model, session_id=session_id,
                    submitted_at=submitted_at, deadline_at=deadline_at, limit=limit,
                    wait_replicas=self.settings.wait_replicas,
                    wait_timeout_ms=self.settings.wait_timeout_ms, priority=how.priority)
            except redis.exceptions.OutOfMemoryError as exc:
                raise core.broker_full(self.settings, submitted) from exc
            if outcome.conflict is not None:
                raise JobIdConflictError(outcome.conflict)
            if outcome.accepted:
                self._check_replicas(outcome, [*submitted, *(
                    Job(m.job_id, model, m.samples, session_id, self, deadline_at)
                    for m in messages)])
                return
            if time.monotonic() >= deadline or len(messages) > limit:
                raise QueueFullError(model, outcome.queued, limit, submitted)
            time.sleep(ROOM_POLL_S)

    def _check_replicas(self, outcome: Enqueued, submitted: list[Job]) -> None:
        """Raises: DurabilityError: if fewer replicas confirmed than `wait_replicas`."""
        wanted = self.settings.wait_replicas
        if outcome.replicas is not None and outcome.replicas < wanted:
            raise DurabilityError(
                f"the primary took the jobs, but {outcome.replicas} of the {wanted} replica(s) "
                f"asked for (wait_replicas) confirmed them within wait_timeout_ms="
                f"{self.settings.wait_timeout_ms}: a failover now could lose them",
                submitted)

    def result(self, job_id: str, *, timeout: float = 30.0,
               deadline_at: float | None = None) -> JobResult:
        """The terminal result of any job, by its task id.

        `deadline_at` is the job's deadline (epoch seconds) where the caller knows it. A
        job that Redis holds no record of (a restart without persistence lost its
        message, record and deadline) is then ended here as `expired` once that deadline
        is `job_time_limit_s` past, as the workers' reaper would have: stored once, so
        nothing reads pending forever and no late worker overwrites it.

        Raises:
            ResultTimeoutError: (a TimeoutError) if none is stored within `timeout` seconds.
            BrokerError: if Redis cannot be reached in time.
        """
        return core.run(core.result(job_id, timeout_s=timeout, deadline_at=deadline_at,
                                    settings=self.settings), self.redis, self.settings)

    @_broker_errors
    def results(self, job_ids: Iterable[str], *, timeout: float = 300.0) -> list[JobResult]:
        """Terminal results of many jobs, in the order given.

        Jobs submitted by this client are waited for on its notify list (no polling);
        others are read directly once a second. One `results` call at a time per client
        is fastest: concurrent calls share the list and fall back on those reads.

        Raises:
            ResultTimeoutError: naming a job still without a result after `timeout`.
        """
        ids = list(job_ids)
        landed = self._ledger.iter_notified_results(ids, self.notify_list, timeout_s=timeout,
                                                    landed_before=self._landed,
                                                    block_s=self._block_s)
        found = {job_id: JobResult.from_wire(payload_of(raw)) for job_id, raw in landed}
        return [found[job_id] for job_id in ids]

    def status(self, job_id: str) -> str:
        """queued, running, a terminal status, or unknown (unknown and expired ids)."""
        return core.run(core.status(job_id), self.redis, self.settings)

    def subscribe(self, session_id: str, *, from_start: bool = True, after: str | None = None,
                  timeout: float = 60.0) -> Subscription:
        """The session's `SampleResult`s in arrival order, until every job submitted to it
        is done (or `timeout` seconds pass).

        `from_start` replays what landed before (within the stream's retention); `after`
        goes on from a previous subscription's `position`, with no loss or duplicates.

        Raises:
            BadArgumentError: for a malformed session id or position.
        """
        return Subscription(self.redis, session_id, after=after, from_start=from_start,
                            timeout_s=timeout, block_s=self._block_s)

    @_broker_errors
    def expect(self, session_id: str, samples: int) -> None:
        """Say that `samples` samples in all will be submitted to the session, so that
        `session_summary` (and `inferfleet watch`) can give a percentage and an ETA.

        Raises:
            BadArgumentError: for a malformed session id or a negative count.
        """
        check_session_id(session_id)
        if not isinstance(samples, int) or samples < 0:
            raise BadArgumentError(f"samples must be a count >= 0, got {samples!r}")
        stats = keys.session_stats(session_id)
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(stats, "samples_expected", samples)
            pipe.expire(stats, self.settings.result_ttl_s)
            pipe.execute()

    def session_summary(self, session_id: str) -> SessionSummary:
        """Counts, success rate, latency percentiles and samples/s of a session, read from
        its counters (cheap while it runs).

        Raises:
            BadArgumentError: for a malformed session id.
        """
        return core.run(core.session_summary(session_id), self.redis, self.settings)


