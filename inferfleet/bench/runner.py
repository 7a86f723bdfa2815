"""`inferfleet bench`: every scenario, for each model, against one Redis on this machine.

The baseline and the fleet never run at the same time: each gets the same cores, the same
Redis (AOF on, as `inferfleet up` runs it) and the same producer process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import psutil
import redis
from celery import Celery

from inferfleet import keys
from inferfleet.bench import scenarios
from inferfleet.bench.measure import Measurement, Summary, summarise
from inferfleet.bench.naive import make_naive_app
from inferfleet.embedded import EmbeddedRedis
from inferfleet.errors import ServerError
from inferfleet.fleet import Process, spawn, stop_processes, wait_for_workers
from inferfleet.producer import Client
from inferfleet.settings import Settings

RAW_BATCHES = (1, 8, 32, 128, 256, 512, 1024)


@dataclass(frozen=True)
class BenchOptions:
    """What to run; `scale` multiplies every sample count (0.01 for a smoke run)."""

    models: tuple[str, ...] = ("digits", "digits_mlp")
    repeat: int = 3
    scale: float = 1.0
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    job_size: int = 256
    load_rates: tuple[float, ...] = (100.0, 200.0, 400.0)
    naive_samples: int = 1500
    single_samples: int = 2000
    latency_samples: int = 200
    load_seconds: float = 3.0
    bulk_samples: dict[str, int] = field(default_factory=lambda: {
        "digits": 200_000, "digits_mlp": 50_000})
    #: The memory scenario's samples (on the first model only).
    memory_samples: int = 1_000_000

    def count(self, n: int) -> int:
        return max(2, int(n * self.scale))


@dataclass
class MemoryReport:
    """Client peak RSS against its data, and worker RSS before and after, in bytes."""

    samples: int
    input_bytes: int
    output_bytes: int
    client_growth: int
    worker_before: list[int]
    worker_after: list[int]

    @property
    def client_ratio(self) -> float:
        """Peak RSS growth over (input + outputs); the goal is at most 2."""
        return self.client_growth / (self.input_bytes + self.output_bytes)

    @property
    def worker_growth(self) -> float:
        """The largest relative RSS growth of a worker across the run."""
        return max(after / before - 1 for before, after in
                   zip(self.worker_before, self.worker_after, strict=True))


@dataclass
class BenchResult:
    """Every summary of a run, in the order measured."""

    summaries: list[Summary] = field(default_factory=list)
    memory: MemoryReport | None = None

    def add(self, model: str, scenario: str, runs: list[Measurement], note: str = "") -> None:
        self.summaries.append(summarise(model, scenario, runs, note))
        last = self.summaries[-1]
        print(f"  {model:<11} {scenario:<26} {last.rate:>12,.0f} samples/s  "
              f"p50 {last.p50_ms:8.1f} ms  p99 {last.p99_ms:8.1f} ms {note}", flush=True)


class Bench:
    """One benchmark run: a Redis, then the baseline's and the fleet's workers in turn."""

    def __init__(self, settings: Settings, options: BenchOptions, work_dir: Path) -> None:
        self.settings = settings
        self.options = options
        self.work_dir = work_dir
        self.result = BenchResult()
        holdout = np.load(settings.models_dir / "digits" / "holdout.npz")["x"]
        self.rows = np.tile(holdout, (max(1, 200_000 // len(holdout) + 1), 1))

    def run(self) -> BenchResult:
        for model in self.options.models:
            self._raw(model)
            self._naive(model)
            self._fleet(model)
            self._drains(model)
        self._durable_submits(self.options.models[0])
        self._memory(self.options.models[0])
        return self.result

    #: A model no bench worker serves: durable submits are measured alone.
    DURABLE_MODEL = "bench-durable"

    def _durable_submits(self, model: str) -> None:
        """What `wait_replicas=1` costs a submit: against a replica of the bench's Redis,
        the same single-sample submits with and without Redis WAIT."""
        n = self.options.count(self.options.single_samples)
        primary = int(urlsplit(self.settings.redis_url).port or 6379)
        with EmbeddedRedis(self.work_dir / "replica", appendonly=False, extra_args=[
                "--replicaof", "127.0.0.1", str(primary)]) as replica:
            _wait_for_sync(replica)
            for label, replicas in (("submit alone", 0), ("submit alone, WAIT 1 replica", 1)):
                settings = self.settings.model_copy(update={"wait_replicas": replicas})
                with Client(settings=settings) as client:
                    self.result.add(model, label, self._repeat(partial(
                        scenarios.submits, client, self.rows[:n], model=self.DURABLE_MODEL)))
                    client.redis.delete(keys.model_queue(self.DURABLE_MODEL))

    def _memory(self, model: str) -> None:
        n = self.options.count(self.options.memory_samples)
        with self._fleet_workers(model) as processes:
            workers = [psutil.Process(p.pid) for p in processes]
            # A first run of the same size lets the workers reach their working size
            # (prefetched messages, batch buffers, thread stacks, malloc arenas); "flat"
            # is judged across the measured run after it. Measured: 1M samples after a
            # 100k warm-up grew a worker 6.5%, the next 1M runs +1% each.
            self._memory_client(model, n)
            before = [w.memory_info().rss for w in workers]
            client = self._memory_client(model, n)
            after = [w.memory_info().rss for w in workers]
        report = MemoryReport(n, client["input_bytes"], client["output_bytes"],
                              client["rss_peak"] - client["rss_before"], before, after)
        self.result.memory = report
        print(f"  {model:<11} memory, {n:,} samples: client peak RSS growth "
              f"{report.client_growth / 2**20:,.0f} MiB = {report.client_ratio:.2f}x "
              f"(input {report.input_bytes / 2**20:,.0f} MiB + outputs "
              f"{report.output_bytes / 2**20:,.0f} MiB); worker RSS growth "
              f"{report.worker_growth:+.1%}", flush=True)

    def _repeat(self, measure: Callable[[], Measurement]) -> list[Measurement]:
        return [measure() for _ in range(self.options.repeat)]

    def _raw(self, model: str) -> None:
        path = str(self.settings.models_dir / model / "model.onnx")
        threads = max(1, (os.cpu_count() or 1))
        for batch in RAW_BATCHES:
            self.result.add(model, f"raw batch {batch}", self._repeat(
                lambda b=batch: scenarios.raw(path, self.rows[:8192], batch=b,  # type: ignore[misc]
                                              threads=threads)))

    def _naive(self, model: str) -> None:
        path = str(self.settings.models_dir / model / "model.onnx")
        options = self.options
        with self._naive_worker(), Client(settings=self.settings) as client:
            app = make_naive_app(self.settings.redis_url)
            submit = scenarios.naive_submitter(app, path)
            wait = scenarios.naive_wait(app)
            scenarios.latency(submit, wait, self.rows[:4])
            n = options.count(options.naive_samples)
            self.result.add(model, "naive", self._repeat(lambda: scenarios.throughput(
                client, submit, self.rows[:n], per_job=1, failures=scenarios.naive_failures)))
            self._latency_and_load(model, "naive", client, submit, wait,
                                   scenarios.naive_failures)

    def _fleet(self, model: str) -> None:
        options = self.options
        with self._fleet_workers(model), Client(settings=self.settings) as client:
            submit = scenarios.fleet_submitter(client, model)
            wait = scenarios.fleet_wait(client)
            scenarios.latency(submit, wait, self.rows[:4])
            n = options.count(options.single_samples)
            self.result.add(model, "fleet single-sample jobs", self._repeat(
                lambda: scenarios.throughput(client, submit, self.rows[:n], per_job=1,
                                             failures=scenarios.fleet_failures)))
            n = options.count(options.bulk_samples.get(model, 50_000))
            self.result.add(model, f"fleet bulk ({options.job_size}/job)", self._repeat(
                lambda: scenarios.bulk(client, model, self.rows[:n],
                                       job_size=options.job_size)))
            self._latency_and_load(model, "fleet", client, submit, wait,
                                   scenarios.fleet_failures)

    def _latency_and_load(self, model: str, name: str, client: Client,
                          submit: scenarios.Submit, wait: scenarios.Wait,
                          failures: Callable[..., int]) -> None:
        options = self.options
        n = options.count(options.latency_samples)
        self.result.add(model, f"{name} latency, 1 in flight", self._repeat(
            lambda: scenarios.latency(submit, wait, self.rows[:n])))
        for rate in options.load_rates:
            n = options.count(int(rate * options.load_seconds))
            self.result.add(model, f"{name} load {rate:g}/s", [scenarios.offered_load(
                client, submit, self.rows[:n], rate=rate, failures=failures)])

    def _drains(self, model: str) -> None:
        options = self.options
        path = str(self.settings.models_dir / model / "model.onnx")
        naive_n = options.count(options.naive_samples)
        single_n = options.count(options.single_samples)
        bulk_n = options.count(options.bulk_samples.get(model, 50_000))
        with Client(settings=self.settings) as client:
            app = make_naive_app(self.settings.redis_url)
            self.result.add(model, "drain naive", [self._drain_naive(client, app, path, naive_n)])
            for label, n, size in (("drain fleet single-sample", single_n, 1),
                                   (f"drain fleet bulk ({options.job_size}/job)", bulk_n,
                                    options.job_size)):
                jobs = client.submit_many(model, self.rows[:n], job_size=size)
                with self._fleet_workers(model):
                    self.result.add(model, label, [scenarios.drain(
                        client, [j.id for j in jobs], n, scenarios.fleet_failures)])

    def _drain_naive(self, client: Client, app: Celery, path: str, n: int) -> Measurement:
        submit = scenarios.naive_submitter(app, path)
        ids = [submit(self.rows[i:i + 1]) for i in range(n)]
        with self._naive_worker():
            return scenarios.drain(client, ids, n, scenarios.naive_failures)

    def _memory_client(self, model: str, n: int) -> dict[str, int]:
        done = subprocess.run(
            [sys.executable, "-m", "inferfleet.bench.memory", self.settings.redis_url,
             model, str(n), str(self.options.job_size)],
            capture_output=True, text=True, check=True)
        return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]

    @contextmanager
    def _naive_worker(self) -> Iterator[list[Process]]:
        process = spawn([self.settings.redis_url], env=os.environ, module="inferfleet.bench.naive",
                        log_path=self.work_dir / "naive.log")
        yield from self._serve([process], ["naive@"])

    @contextmanager
    def _fleet_workers(self, model: str) -> Iterator[list[Process]]:
        env = {**os.environ, "INFERFLEET_REDIS_URL": self.settings.redis_url,
               "INFERFLEET_MODELS_DIR": str(self.settings.models_dir),
               "INFERFLEET_WORKER_PROCESSES": str(self.options.workers)}
        names = [f"bench{i}@" for i in range(self.options.workers)]
        processes = [spawn(["worker", "--models", model, f"--hostname={name}%h",
                            "--loglevel=WARNING"], env=env,
                           log_path=self.work_dir / f"{name[:-1]}.log") for name in names]
        yield from self._serve(processes, names)

    def _serve(self, processes: list[Process], names: list[str]) -> Iterator[list[Process]]:
        try:
            wait_for_workers(self.settings, names, timeout_s=60, processes=processes)
            yield processes
        finally:
            stop_processes(processes)


def _wait_for_sync(replica: EmbeddedRedis, timeout_s: float = 30.0) -> None:
    client = redis.Redis(port=replica.port)
    deadline = time.monotonic() + timeout_s
    while client.info("replication").get("master_link_status") != "up":
        if time.monotonic() > deadline:
            raise ServerError("the bench's replica did not sync with its primary in time")
        time.sleep(0.05)


def run_bench(settings: Settings, options: BenchOptions) -> BenchResult:
    """Run every scenario against a fresh embedded Redis; print as it goes."""
    with tempfile.TemporaryDirectory(prefix="inferfleet-bench-") as tmp, \
            EmbeddedRedis(Path(tmp) / "redis") as server:
        bench_settings = settings.model_copy(update={"redis_url": server.url})
        print(f"inferfleet bench: redis {server.url}, {os.cpu_count()} cores, "
              f"{options.workers} fleet worker process(es), {options.repeat} repetitions",
              flush=True)
        return Bench(bench_settings, options, Path(tmp)).run()
