"""What tracing costs: CPU per single-sample job with `INFERFLEET_OTEL` off or on.

    python scripts/trace_cost.py off|on [--jobs 8000] [--rounds 2] [--sample RATIO]

Two `inferfleet worker`s with every default but the tracing switch, on one embedded
Redis; the jobs go one `Client.submit` at a time, then their results are read. Each round
prints jobs/s and the CPU microseconds per job of the workers, Redis and this producer,
and the workers' CPU divided by the producer's: this machine's speed drifts by tens of
percent within minutes, and the ratio takes most of that out of an A/B comparison.

`on` starts an OTLP/HTTP sink in a process of its own (it answers 200 and counts the
bytes), exports the workers' spans to it, and records the producer's spans with an SDK
provider exporting there too; `--sample` keeps that share of the traces (OpenTelemetry's
`parentbased_traceidratio` sampler, on both sides). `off` touches nothing of
OpenTelemetry, so the same script measures a commit from before tracing existed.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from inferfleet import Client
from inferfleet.bench.measure import CpuMeter
from inferfleet.embedded import EmbeddedRedis, free_port
from inferfleet.fleet import spawn, stop_processes, wait_for_workers
from inferfleet.settings import load_settings

REPO = Path(__file__).resolve().parents[1]
SINK = """
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer
class Sink(BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()
    def log_message(self, *args):
        pass
HTTPServer(("127.0.0.1", int(sys.argv[1])), Sink).serve_forever()
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("mode", choices=["off", "on"])
    parser.add_argument("--jobs", type=int, default=8000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--sample", type=float, default=None)
    args = parser.parse_args()
    models_dir = REPO / "models"
    work = Path(tempfile.mkdtemp(prefix="trace-cost-"))
    redis = EmbeddedRedis(work / "redis", appendonly=False).start()
    sink = None
    flush_spans = None
    env = {k: v for k, v in os.environ.items() if not k.startswith("INFERFLEET_")}
    env.update(INFERFLEET_REDIS_URL=redis.url, INFERFLEET_MODELS_DIR=str(models_dir))
    settings = load_settings(redis_url=redis.url, models_dir=models_dir)
    if args.mode == "on":
        port = free_port()
        sink = subprocess.Popen([sys.executable, "-c", SINK, str(port)])
        endpoint = f"http://127.0.0.1:{port}/v1/traces"
        env.update(INFERFLEET_OTEL="1", OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=endpoint)
        if args.sample is not None:
            os.environ.update(OTEL_TRACES_SAMPLER="parentbased_traceidratio",
                              OTEL_TRACES_SAMPLER_ARG=str(args.sample))
            env.update(OTEL_TRACES_SAMPLER="parentbased_traceidratio",
                       OTEL_TRACES_SAMPLER_ARG=str(args.sample))
        flush_spans = _trace_this_process(endpoint)
        settings = settings.model_copy(update={"otel": True})
    names = [f"cost{i}@" for i in range(2)]
    workers = [spawn(["worker", "--models", "digits", f"--hostname={name}%h",
                      "--loglevel=WARNING"], env=env, log_path=work / f"{name[:-1]}.log")
               for name in names]
    try:
        wait_for_workers(settings, names, timeout_s=90, processes=workers)
        rows = np.load(models_dir / "digits" / "holdout.npz")["x"]
        with Client(settings=settings) as client:
            client.results([client.submit("digits", rows[:1]).id for _ in range(200)])  # warm
            redis_pid = redis.process.pid if redis.process else None
            for round_number in range(args.rounds):
                meter = CpuMeter(redis_pid, [w.pid for w in workers])
                _round(client, rows, args.jobs, meter, f"{args.mode} round {round_number + 1}")
    finally:
        stop_processes(workers)
        redis.stop()
        if flush_spans is not None:
            flush_spans()
        if sink is not None:
            sink.kill()
            sink.wait()


def _round(client: Client, rows: np.ndarray, jobs: int, meter: CpuMeter, label: str) -> None:
    meter.start()
    started = time.perf_counter()
    ids = [client.submit("digits", rows[i % len(rows)][None]).id for i in range(jobs)]
    results = client.results(ids, timeout=600)
    seconds = time.perf_counter() - started
    cpu = meter.stop()
    assert all(r.status == "succeeded" for r in results)
    per_job = {side: cpu[side] / jobs * 1e6 for side in cpu}
    print(f"{label}: {jobs / seconds:,.0f} jobs/s; us/job workers {per_job['workers']:.0f}, "
          f"redis {per_job['redis']:.0f}, producer {per_job['client']:.0f}; workers/producer "
          f"{per_job['workers'] / per_job['client']:.2f}", flush=True)


def _trace_this_process(endpoint: str) -> Callable[[], None]:
    """The producer's spans recorded and exported, as an app with OpenTelemetry has them;
    the function that flushes them."""
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    trace.set_tracer_provider(provider)
    return provider.shutdown


if __name__ == "__main__":
    main()
