"""OpenTelemetry traces of jobs: optional (the `tracing` extra), on with `INFERFLEET_OTEL=1`.

A job's trace, when the producer's process has a tracer provider (an app that set up
OpenTelemetry, or `inferfleet submit`):

    <the caller's span, if any>
    └─ inferfleet.submit <model>        producer: building and publishing the message
       └─ inferfleet.job <model>        worker: from submit to stored result
          ├─ inferfleet.queue_wait      submitted → a worker took it
          ├─ inferfleet.batch_wait      in the batcher, until its batch ran
          ├─ inferfleet.inference       its batch's model call (batch id and rows)
          └─ inferfleet.result_write    storing its result
    inferfleet.batch <model>            one per model call, its own trace, linked to
                                        the inferfleet.job span of every job in it

The context travels in the message's headers as W3C `traceparent`/`tracestate`, where
OpenTelemetry's Celery instrumentation puts it too, so a foreign Celery client that
traces its sends joins the same trace. The queue wait starts on the producer's clock and
ends on the worker's; the gap between it and the batch wait is the job's decoding and
validation.

A span costs ~17-40 us of CPU in OpenTelemetry's Python SDK, five per job in a worker:
OpenTelemetry's sampler (`OTEL_TRACES_SAMPLER=parentbased_traceidratio`,
`OTEL_TRACES_SAMPLER_ARG=0.01`) makes the jobs it leaves out cost almost nothing, since a
job whose span is not recorded makes no others.

Off (the default) inferfleet calls nothing of OpenTelemetry: the producer publishes as
before, and a worker's jobs make one call to a no-op per step (`NO_TRACE`, 0.4 us a job
in all, against ~500 us of worker CPU per single-sample job).

inferfleet's own processes (workers, the CLI) export what they record over OTLP/HTTP,
configured by OpenTelemetry's standard variables (`OTEL_EXPORTER_OTLP_ENDPOINT`,
`OTEL_SERVICE_NAME`, ...), unless the process has a tracer provider already (run under
`opentelemetry-instrument`). A library client uses its app's provider, and records
nothing without one.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import TYPE_CHECKING, Any

from inferfleet.errors import ConfigurationError
from inferfleet.ledger import sample_counts

if TYPE_CHECKING:
    from opentelemetry.trace import Span, SpanContext

    from inferfleet.batching import BatchOutcome, BatchRecord
    from inferfleet.schemas import WireResult

logger = logging.getLogger(__name__)

#: The message headers the trace context travels in (W3C Trace Context).
TRACE_HEADERS = ("traceparent", "tracestate")
#: The longest header value taken from a message (W3C's tracestate limit is 512 chars).
_MAX_HEADER_CHARS = 512
INSTRUMENTATION = "inferfleet"


def _require() -> None:
    """Raises: ConfigurationError: if OpenTelemetry is not installed."""
    try:
        import opentelemetry.trace  # noqa: F401
    except ImportError as exc:
        raise ConfigurationError(
            "INFERFLEET_OTEL=1 needs OpenTelemetry: pip install 'inferfleet[tracing]' "
            "(or unset INFERFLEET_OTEL)") from exc


def export_spans(service_name: str) -> Callable[[], None] | None:
    """Make this process export its spans over OTLP/HTTP (OpenTelemetry's standard
    `OTEL_*` variables configure the exporter), unless it has a tracer provider already.
    Returns the provider's shutdown, which flushes what is left; None if it had one.

    Raises:
        ConfigurationError: if the `tracing` extra is not installed.
    """
    _require()
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    if not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        return None  # configured already, say by opentelemetry-instrument
    attributes = {} if os.environ.get("OTEL_SERVICE_NAME") else {"service.name": service_name}
    provider = TracerProvider(resource=Resource.create(attributes))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    logger.info("tracing on: spans go over OTLP/HTTP to %s",
                os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
                or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or "http://localhost:4318")
    return provider.shutdown


def _ns(seconds: float) -> int:
    """Epoch seconds as the nanoseconds OpenTelemetry takes."""
    return int(seconds * 1e9)


# --- the producer ------------------------------------------------------------------------


class SubmitTracer:
    """Spans of a client's submits, and the headers that carry them to the workers."""

    def __init__(self) -> None:
        _require()
        from opentelemetry import trace
        from opentelemetry.propagate import inject

        self._trace = trace
        self._inject = inject
        self._tracer = trace.get_tracer(INSTRUMENTATION)

    @contextmanager
    def submitting(self, model: str, session_id: str | None, job_ids: Sequence[str]
                   ) -> Iterator[list[dict[str, str]]]:
        """One `inferfleet.submit` span per job, children of the current span, open while
        the block publishes; yields each job's trace headers. An exception ends them
        in error."""
        from opentelemetry.trace import SpanKind, Status, StatusCode

        spans = [self._tracer.start_span(
            f"inferfleet.submit {model}", kind=SpanKind.PRODUCER,
            attributes={"messaging.system": "redis", "messaging.operation.type": "send",
                        "messaging.destination.name": model, "messaging.message.id": job_id,
                        "inferfleet.model": model, "inferfleet.session_id": session_id or ""})
            for job_id in job_ids]
        headers: list[dict[str, str]] = []
        for span in spans:
            carrier: dict[str, str] = {}
            self._inject(carrier, context=self._trace.set_span_in_context(span))
            headers.append(carrier)
        try:
            yield headers
        except BaseException as exc:
            for span in spans:
                span.record_exception(exc)
                span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
            raise
        finally:
            for span in spans:
                span.end()


# --- the worker --------------------------------------------------------------------------


class JobTrace:
    """The spans of one job in a worker. This base class records nothing (`NO_TRACE`)."""

    #: What the job's batch links to (None: nothing).
    link: SpanContext | None = None

    def batched(self, outcome: BatchOutcome) -> None:
        """Its batch ran."""

    def writing(self) -> AbstractContextManager[Any]:
        """The block that stores its result."""
        return nullcontext()

    def end(self, result: WireResult) -> None:
        """It ended with `result`."""


NO_TRACE = JobTrace()


class _RecordingJobTrace(JobTrace):
    def __init__(self, tracer: Any, span: Span) -> None:
        self._tracer = tracer
        self._span = span
        self._context = _in_context(span)
        self.link = span.get_span_context()

    def phase(self, name: str, start: float, end: float, **attributes: Any) -> None:
        self._tracer.start_span(name, context=self._context, start_time=_ns(start),
                                attributes=attributes).end(end_time=_ns(end))

    def batched(self, outcome: BatchOutcome) -> None:
        ran_at = outcome.started_at
        self.phase("inferfleet.batch_wait", ran_at - outcome.wait_ms / 1000, ran_at)
        self.phase("inferfleet.inference", ran_at, ran_at + outcome.run_ms / 1000,
                   **{"inferfleet.batch_id": outcome.batch_id,
                      "inferfleet.batch_rows": outcome.batch_rows})

    @contextmanager
    def writing(self) -> Iterator[None]:
        from opentelemetry.trace import Status, StatusCode

        span = self._tracer.start_span("inferfleet.result_write", context=self._context)
        try:
            yield
        except BaseException as exc:  # not stored: the job goes back to its queue
            status = Status(StatusCode.ERROR, f"result not stored: {exc}")
            span.set_status(status)
            span.end()
            self._span.set_status(status)
            self._span.end()
            raise
        span.end()

    def end(self, result: WireResult) -> None:
        from opentelemetry.trace import Status, StatusCode

        counts = sample_counts(result)  # from the errors, no walk over every sample
        failed = counts["failure"] + counts["expired"]
        self._span.set_attributes({"inferfleet.status": result.status.value,
                                   "inferfleet.samples": len(result.sample_ids),
                                   "inferfleet.failed_samples": failed,
                                   "inferfleet.batch_ids": result.batch_ids})
        if result.error is not None:
            self._span.set_status(Status(StatusCode.ERROR, result.error.code.value))
        self._span.end()


def _in_context(span: Span) -> Any:
    from opentelemetry import trace

    return trace.set_span_in_context(span)


class JobTracer:
    """Makes the spans of a worker's jobs and batches."""

    def __init__(self) -> None:
        _require()
        from opentelemetry import trace
        from opentelemetry.propagate import extract

        self._extract = extract
        self._tracer = trace.get_tracer(INSTRUMENTATION)

    def job(self, job_id: str, kwargs: Mapping[str, Any], headers: Mapping[str, Any],
            began: float) -> JobTrace:
        """The trace of a job this worker began at `began` (epoch seconds): a child of
        the submit span its message's headers name (a root of its own without them),
        starting at its submit time, with its queue wait. `NO_TRACE` for a job the
        sampler leaves out."""
        from opentelemetry.trace import SpanKind

        parent = self._extract(_trace_carrier(headers))
        model = kwargs.get("model")
        model = model[:64] if isinstance(model, str) else ""
        submitted = kwargs.get("submitted_at")
        submitted = submitted if isinstance(submitted, int | float) and \
            not isinstance(submitted, bool) and submitted <= began else began
        span = self._tracer.start_span(
            f"inferfleet.job {model}", context=parent, kind=SpanKind.CONSUMER,
            start_time=_ns(submitted),
            attributes={"messaging.system": "redis", "messaging.operation.type": "process",
                        "messaging.message.id": job_id, "inferfleet.model": model})
        if not span.is_recording():
            return NO_TRACE
        job = _RecordingJobTrace(self._tracer, span)
        job.phase("inferfleet.queue_wait", submitted, began)
        return job

    def batch(self, record: BatchRecord, model: str) -> None:
        """The span of one model call, linked to the spans of the jobs in it; none for a
        batch of jobs the sampler left out (sampled, it is a root of its own, sampled on
        its own)."""
        from opentelemetry.trace import Link, SpanContext

        links = [Link(tag) for tag in record.tags if isinstance(tag, SpanContext)]
        if not links:
            return
        self._tracer.start_span(
            f"inferfleet.batch {model}", start_time=_ns(record.started_at), links=links,
            attributes={"inferfleet.model": model, "inferfleet.batch_id": record.batch_id,
                        "inferfleet.batch_rows": record.rows,
                        "inferfleet.batch_jobs": len(record.tags),
                        "inferfleet.failed_rows": record.failed_rows},
        ).end(end_time=_ns(record.started_at + record.run_s))


def _trace_carrier(headers: Mapping[str, Any]) -> dict[str, str]:
    """The trace headers of a message, only those of the right form (a foreign client's
    message may carry anything there)."""
    return {name: value for name in TRACE_HEADERS
            if isinstance(value := headers.get(name), str) and len(value) <= _MAX_HEADER_CHARS}

