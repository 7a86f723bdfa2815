"""Prometheus metrics of one worker process, served over HTTP on `metrics_port`.

A worker is one process (Celery's threads pool, no prefork children), so the process's
own registry counts everything it does; each worker process of a machine serves its own
port (`inferfleet up` gives them consecutive ports). Queue depth and the age of the oldest
waiting job are read from Redis when Prometheus scrapes, for every model a worker has
published (and those this one serves): the signals an autoscaler such as KEDA scales
workers on, including a model's queue that no worker consumes yet.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import redis
from prometheus_client import CollectorRegistry, Counter, Histogram, make_wsgi_app
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from inferfleet import keys
from inferfleet.ledger import redis_text, sample_counts
from inferfleet.queues import read_queues
from inferfleet.schemas import JobStatus, WireResult

logger = logging.getLogger(__name__)

#: Seconds buckets from 0.5 ms to 2 min: queue, batch-wait, inference and write times.
_SECONDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
            30, 120)
_ROWS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)


class WorkerMetrics:
    """The metrics one worker records; `serve` starts their HTTP endpoint."""

    def __init__(self, client: redis.Redis, models: Iterable[str] = ()) -> None:
        self.registry = CollectorRegistry()
        self.models = list(models)
        self.samples = Counter("inferfleet_samples", "Samples finished, by model and status.",
                               ["model", "status"], registry=self.registry)
        self.jobs = Counter("inferfleet_jobs", "Jobs ended, by model and terminal state.",
                            ["model", "state"], registry=self.registry)
        self.batch_rows = Histogram("inferfleet_batch_rows", "Rows per ONNX Runtime call.",
                                    ["model"], buckets=_ROWS, registry=self.registry)
        self.queue_seconds = self._seconds(
            "queue", "Time from submit until a worker took the job.")
        self.batch_wait_seconds = self._seconds(
            "batch_wait", "Time a job's rows waited for their batch.")
        self.inference_seconds = self._seconds(
            "inference", "Time of one batch's ONNX Runtime call(s).")
        self.result_write_seconds = self._seconds(
            "result_write", "Time to store one job's result in Redis.")
        self.latency_seconds = self._seconds(
            "latency", "End-to-end time of a job: from submit until its result is stored.")
        self.refused_writes = Counter(
            "inferfleet_result_writes_refused", "Result writes a full Redis (maxmemory, "
            "noeviction) refused; the job waits for room and tries again.", ["model"],
            registry=self.registry)
        self.cache_lookups = Counter(
            "inferfleet_cache_lookups", "Samples of jobs using the result cache: answered "
            "from it (hit) or computed (miss).", ["model", "outcome"], registry=self.registry)
        for model in self.models:
            self._start_at_zero(model)
        self.registry.register(_QueueCollector(client, self))

    def _start_at_zero(self, model: str) -> None:
        """Every series of a served model from the first scrape, at zero: a rate over a
        series that appears with its first jobs already counted would read 0, and a
        panel "no data" instead of 0 refused writes."""
        for status in ("success", "failure", "expired"):
            self.samples.labels(model, status)
        for state in JobStatus:
            self.jobs.labels(model, state.value)
        for histogram in (self.batch_rows, self.queue_seconds, self.batch_wait_seconds,
                          self.inference_seconds, self.result_write_seconds,
                          self.latency_seconds):
            histogram.labels(model)
        self.refused_writes.labels(model)
        for outcome in ("hit", "miss"):
            self.cache_lookups.labels(model, outcome)

    def _seconds(self, what: str, doc: str) -> Histogram:
        return Histogram(f"inferfleet_{what}_seconds", doc, ["model"], buckets=_SECONDS,
                         registry=self.registry)

    def serve(self, port: int, address: str = "0.0.0.0", *,
              not_ready: Callable[[], str | None] = lambda: None) -> None:
        """Serve `/metrics`, `/healthz` (the process answers) and `/readyz` (200 when
        `not_ready()` gives no reason, else 503 with it) on `port`, from a daemon thread."""
        metrics = make_wsgi_app(self.registry)

        def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
            path = environ.get("PATH_INFO", "")
            if path == "/healthz":
                return _text(start_response, "200 OK", "ok")
            if path == "/readyz":
                reason = not_ready()
                return _text(start_response, "503 Service Unavailable" if reason else
                             "200 OK", reason or "ready")
            return metrics(environ, start_response)  # type: ignore[no-any-return]

        server = make_server(address, port, app, server_class=_ThreadingWSGIServer,
                             handler_class=_QuietHandler)
        threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
        logger.info("Prometheus metrics on http://%s:%d/metrics (probes: /healthz, /readyz)",
                    address, port)

    def job_done(self, result: WireResult, write_s: float) -> None:
        """Count a stored job and its samples, and its times."""
        model = result.model
        self.jobs.labels(model, result.status.value).inc()
        for status, count in sample_counts(result).items():
            if count:
                self.samples.labels(model, status).inc(count)
        self.result_write_seconds.labels(model).observe(write_s)
        if result.latency_ms is not None:
            self.latency_seconds.labels(model).observe(result.latency_ms / 1000)
        timings = result.timings
        if timings is not None:
            if timings.queued_ms is not None:
                self.queue_seconds.labels(model).observe(timings.queued_ms / 1000)
            if timings.batch_wait_ms is not None:
                self.batch_wait_seconds.labels(model).observe(timings.batch_wait_ms / 1000)

    def cache_used(self, model: str, *, hits: int, misses: int) -> None:
        """Count a job's samples looked up in the result cache."""
        self.cache_lookups.labels(model, "hit").inc(hits)
        self.cache_lookups.labels(model, "miss").inc(misses)

    def batch_done(self, model: str, rows: int, seconds: float) -> None:
        self.batch_rows.labels(model).observe(rows)
        self.inference_seconds.labels(model).observe(seconds)


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # probes: no log
        pass


def _text(start_response: Any, status: str, body: str) -> list[bytes]:
    start_response(status, [("Content-Type", "text/plain; charset=utf-8")])
    return [body.encode() + b"\n"]


class _QueueCollector(Collector):
    """Queue depth and oldest waiting job's age per served model, read at scrape time."""

    def __init__(self, client: redis.Redis, metrics: WorkerMetrics) -> None:
        self.client, self.metrics = client, metrics

    def collect(self) -> Iterator[GaugeMetricFamily]:
        depth = GaugeMetricFamily("inferfleet_queue_depth",
                                  "Jobs waiting in a model's queue.", labels=["model"])
        age = GaugeMetricFamily("inferfleet_oldest_job_age_seconds",
                                "Age of the oldest job waiting in a model's queue (0: none).",
                                labels=["model"])
        dead = GaugeMetricFamily("inferfleet_dead_letters",
                                 "Messages on the dead-letter list (`inferfleet dead list`).")
        try:
            published = {redis_text(name) for name in self.client.hkeys(keys.MODELS_HASH)}
            models = sorted(published | set(self.metrics.models))
            queues = read_queues(self.client, models)
            dead_letters = self.client.llen(keys.DEAD_LETTERS)
        except redis.RedisError:
            logger.warning("metrics: could not read queue depths", exc_info=True)
            return
        for model, queue in queues.items():
            depth.add_metric([model], queue.depth)
            age.add_metric([model], queue.oldest_age_s)
        dead.add_metric([], int(dead_letters))
        yield depth
        yield age
        yield dead
