"""OpenTelemetry traces across a real producer and a real `inferfleet worker`.

The producer is this process, with an SDK provider exporting to OpenTelemetry's
in-memory exporter. The worker exports over OTLP/HTTP, as in production, to a small
OTLP receiver in this process that decodes the protobuf requests into memory.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from conftest import StartWorker
from faultkit import holdout_rows, wait_until
from opentelemetry import trace
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from inferfleet import Client, keys
from inferfleet.codec import encode_array
from inferfleet.settings import Settings


@dataclass(frozen=True)
class ExportedSpan:
    """A span as the worker exported it over OTLP."""

    name: str
    trace_id: str
    span_id: str
    parent_id: str
    start_ns: int
    end_ns: int
    attributes: dict[str, Any]
    links: list[tuple[str, str]]  # (trace id, span id)
    error: bool


def _value(any_value: Any) -> Any:
    kind = any_value.WhichOneof("value")
    if kind == "array_value":
        return [_value(v) for v in any_value.array_value.values]
    return getattr(any_value, kind) if kind else None


class OtlpReceiver:
    """An OTLP/HTTP trace receiver (`POST /v1/traces`, protobuf) keeping the spans."""

    def __init__(self) -> None:
        self.spans: list[ExportedSpan] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # http.server's name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                request = ExportTraceServiceRequest.FromString(body)
                receiver.keep(request)
                reply = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1/traces"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def keep(self, request: ExportTraceServiceRequest) -> None:
        for resource_spans in request.resource_spans:
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    self.spans.append(ExportedSpan(
                        name=span.name, trace_id=span.trace_id.hex(), span_id=span.span_id.hex(),
                        parent_id=span.parent_span_id.hex(), start_ns=span.start_time_unix_nano,
                        end_ns=span.end_time_unix_nano,
                        attributes={a.key: _value(a.value) for a in span.attributes},
                        links=[(link.trace_id.hex(), link.span_id.hex()) for link in span.links],
                        error=span.status.code == 2))

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    receiver = OtlpReceiver()
    yield receiver
    receiver.close()


@pytest.fixture(scope="module")
def producer_spans() -> Iterator[InMemorySpanExporter]:
    """This process's spans, in memory (OpenTelemetry's global provider is set once)."""
    exporter = InMemorySpanExporter()
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield exporter
    exporter.clear()


def _hex(number: int, digits: int) -> str:
    return f"{number:0{digits}x}"


def test_a_batched_job_is_one_trace_from_the_callers_span_to_its_stored_result(
        private_settings: Settings, start_private_worker: StartWorker, models_dir: Path,
        receiver: OtlpReceiver, producer_spans: InMemorySpanExporter,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", receiver.url)
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")
    start_private_worker(models="digits", otel="1")
    settings = private_settings.model_copy(update={"otel": True})
    tracer = trace.get_tracer("test")
    with Client(settings=settings) as client:
        client.submit("digits", holdout_rows(models_dir, 1)).result(timeout=30)  # warm
        with tracer.start_as_current_span("request") as request:
            jobs = client.submit_many("digits", holdout_rows(models_dir, 64), job_size=1)
        results = client.results([job.id for job in jobs], timeout=60)
    assert {r.status for r in results} == {"succeeded"}
    job_ids = {job.id for job in jobs}

    def job_spans() -> dict[str, ExportedSpan]:
        return {s.attributes["messaging.message.id"]: s for s in receiver.spans
                if s.name == "inferfleet.job digits"
                and s.attributes["messaging.message.id"] in job_ids}

    wait_until(lambda: len(job_spans()) == len(job_ids), timeout_s=30,
               what="the worker's job spans")
    trace_id = _hex(request.get_span_context().trace_id, 32)
    submits = {s.attributes["messaging.message.id"]: s for s in producer_spans.get_finished_spans()
               if s.name == "inferfleet.submit digits"
               and s.attributes["messaging.message.id"] in job_ids}
    assert set(submits) == job_ids
    by_parent: dict[str, list[ExportedSpan]] = {}
    for span in receiver.spans:
        by_parent.setdefault(span.parent_id, []).append(span)
    spans_of_jobs = job_spans()
    for result in results:
        submit, job = submits[result.job_id], spans_of_jobs[result.job_id]
        # the caller's span → submit (producer) → job (worker): one trace
        assert submit.parent is not None and submit.parent.span_id == \
            request.get_span_context().span_id
        assert (job.trace_id, job.parent_id) == (trace_id, _hex(submit.context.span_id, 16))
        assert job.attributes["inferfleet.status"] == "succeeded"
        assert job.attributes["inferfleet.samples"] == 1
        phases = {s.name: s for s in by_parent[job.span_id]}
        assert sorted(phases) == sorted(["inferfleet.queue_wait", "inferfleet.batch_wait",
                                         "inferfleet.inference", "inferfleet.result_write"])
        assert all(p.trace_id == trace_id for p in phases.values())
        assert phases["inferfleet.inference"].attributes["inferfleet.batch_id"] == \
            result.batch_ids[0]
        ends = [phases[name].end_ns for name in ("inferfleet.queue_wait", "inferfleet.batch_wait",
                                                 "inferfleet.inference",
                                                 "inferfleet.result_write")]
        assert ends == sorted(ends)
        assert job.start_ns <= phases["inferfleet.queue_wait"].start_ns
        assert phases["inferfleet.result_write"].end_ns <= job.end_ns

    # Each batch: one span of its own trace, linked to the job span of every job in it.
    batch_of = {r.job_id: r.batch_ids[0] for r in results}
    batches = {s.attributes["inferfleet.batch_id"]: s for s in receiver.spans
               if s.name == "inferfleet.batch digits"}
    jobs_in = {batch_id: sorted(j for j, b in batch_of.items() if b == batch_id)
               for batch_id in set(batch_of.values())}
    assert max(len(j) for j in jobs_in.values()) > 1, "no two jobs shared a batch"
    for batch_id, ids in jobs_in.items():
        batch = batches[batch_id]
        assert batch.trace_id != trace_id and batch.parent_id == ""
        assert sorted(batch.links) == sorted((trace_id, spans_of_jobs[j].span_id) for j in ids)
        assert batch.attributes["inferfleet.batch_rows"] >= len(ids)


def test_a_trace_header_a_foreign_client_got_wrong_starts_a_trace_of_its_own(
        private_settings: Settings, start_private_worker: StartWorker, models_dir: Path,
        receiver: OtlpReceiver, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", receiver.url)
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")
    start_private_worker(models="digits", otel="1")
    celery = Celery(broker=private_settings.redis_url)
    celery.conf.update(task_serializer="json", accept_content=["json"])
    row = holdout_rows(models_dir, 1)
    kwargs = {"v": 1, "model": "digits", "inputs": [encode_array(row[0])]}
    wrong = [12345, "00-not-a-trace-id-01", "x" * 100_000, ["00-a-b-01"], None]
    ids = [str(uuid.uuid4()) for _ in wrong]
    for job_id, header in zip(ids, wrong, strict=True):
        celery.send_task(keys.TASK_NAME, task_id=job_id, kwargs=kwargs,
                         queue=keys.model_queue("digits"),
                         headers={"traceparent": header, "tracestate": header})
    with Client(settings=private_settings) as client:
        results = client.results(ids, timeout=60)
    assert [r.status for r in results] == ["succeeded"] * len(wrong)

    def roots() -> list[ExportedSpan]:
        return [s for s in receiver.spans if s.name == "inferfleet.job digits"
                and s.attributes["messaging.message.id"] in ids]

    wait_until(lambda: len(roots()) == len(ids), timeout_s=30, what="the job spans")
    assert all(span.parent_id == "" for span in roots())
    assert len({span.trace_id for span in roots()}) == len(ids)
    celery.close()
