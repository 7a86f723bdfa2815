"""`inferfleet bench`: every scenario, for each model, against one Redis on this machine.

The baseline and the fleet never run at the same time: each gets the same cores, the same
Redis (AOF on, as `inferfleet up` runs it) and the same producer process. Each measured
run records the CPU seconds Redis, the workers and the producer spent on it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import numpy.typing as npt
import psutil
import redis

from inferfleet import keys
from inferfleet.bench import scenarios
from inferfleet.bench.cnn import NAME as CNN
from inferfleet.bench.cnn import build_cnn, cnn_rows
from inferfleet.bench.fleets import fleet_workers, naive_worker
from inferfleet.bench.measure import CpuMeter, Measurement, Summary, summarise
from inferfleet.bench.naive import make_naive_app
from inferfleet.embedded import EmbeddedRedis
from inferfleet.errors import ServerError
from inferfleet.fleet import Process
from inferfleet.producer import Client
from inferfleet.producer.inputs import encode_inputs
from inferfleet.producer.publish import task_envelope
from inferfleet.settings import Settings

RAW_BATCHES = (1, 8, 32, 128, 256, 512, 1024)
Rows = npt.NDArray[np.float32]


@dataclass(frozen=True)
class BenchOptions:
    """What to run; `scale` multiplies every sample count (0.01 for a smoke run)."""

    models: tuple[str, ...] = ("digits", "digits_mlp", CNN)
    repeat: int = 3
    scale: float = 1.0
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    #: Samples per bulk job: 256, or per model (the image-sized model's are 12 KiB each).
    job_sizes: dict[str, int] = field(default_factory=lambda: {CNN: 64})
    load_rates: tuple[float, ...] = (100.0, 200.0, 400.0)
    naive_samples: int = 1500
    #: Runs of ~3 s: at 2,000 (~1 s) one full run measured the same fleet at 1,497 and
    #: 1,943 single-sample jobs/s.
    single_samples: int = 6000
    latency_samples: int = 200
    load_seconds: float = 3.0
    bulk_samples: dict[str, int] = field(default_factory=lambda: {
        "digits": 200_000, "digits_mlp": 50_000, CNN: 6_400})
    #: The memory scenario's samples (on the first model only).
    memory_samples: int = 1_000_000

    def count(self, n: int) -> int:
        return max(2, int(n * self.scale))

    def job_size(self, model: str) -> int:
        return self.job_sizes.get(model, 256)


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
    #: Per model, each round's fleet bulk rate over the raw best batch measured just
    #: before it (`Bench._paired_bulk`).
    paired_bulk: dict[str, list[float]] = field(default_factory=dict)

    def add(self, model: str, scenario: str, runs: list[Measurement], note: str = "") -> None:
        self.summaries.append(summarise(model, scenario, runs, note))
        last = self.summaries[-1]
        cpu = " ".join(f"{side} {us:,.0f}" for side, us in last.cpu_us.items())
        print(f"  {model:<11} {scenario:<34} {last.rate:>12,.0f} samples/s  "
              f"p50 {last.p50_ms:8.1f} ms  p99 {last.p99_ms:8.1f} ms"
              f"{'  CPU us/sample: ' + cpu if cpu else ''} {note}", flush=True)


class Bench:
    """One benchmark run: a Redis, then the baseline's and the fleet's workers in turn."""

    def __init__(self, settings: Settings, options: BenchOptions, work_dir: Path, *,
                 redis_pid: int | None = None) -> None:
        self.options = options
        self.work_dir = work_dir
        self.redis_pid = redis_pid
        self.result = BenchResult()
        holdout = np.load(settings.models_dir / "digits" / "holdout.npz")["x"]
        self._digit_rows = np.tile(holdout, (max(1, 200_000 // len(holdout) + 1), 1))
        self.settings = settings.model_copy(update={"models_dir": self._models(settings)})
        self._worker_pids: list[int] = []

    def _models(self, settings: Settings) -> Path:
        """The shipped models, and the image-sized one built for this run."""
        folder = self.work_dir / "models"
        folder.mkdir(parents=True, exist_ok=True)
        for model in os.listdir(settings.models_dir):  # copies: the registry refuses links
            if (settings.models_dir / model / "model.onnx").is_file():
                shutil.copytree(settings.models_dir / model, folder / model)
        if CNN in self.options.models:
            build_cnn(folder)
        return folder

    def rows(self, model: str, n: int) -> Rows:
        """`n` samples for `model`: held-out digits, or images for the CNN."""
        if model == CNN:
            return cnn_rows(n)
        return self._digit_rows[:n]

    def run(self) -> BenchResult:
        for model in self.options.models:
            self._raw(model)
            self._naive(model)
            self._fleet(model)
            self._fleet(model, as_readme=True)
            self._drains(model)
            self._transport_ceiling(model)
        self._durable_submits(self.options.models[0])
        self._memory(self.options.models[0])
        return self.result

    def _measured(self, measure: Callable[[], Measurement]) -> Measurement:
        meter = CpuMeter(self.redis_pid, self._worker_pids)
        meter.start()
        measurement = measure()
        measurement.cpu_s = meter.stop()
        return measurement

    def _repeat(self, measure: Callable[[], Measurement]) -> list[Measurement]:
        return [self._measured(measure) for _ in range(self.options.repeat)]

    @contextmanager
    def _serving(self, fleet: AbstractContextManager[list[Process]]
                 ) -> Iterator[list[Process]]:
        """The fleet's processes, whose CPU the measurements meanwhile count."""
        with fleet as processes:
            self._worker_pids = [p.pid for p in processes]
            try:
                yield processes
            finally:
                self._worker_pids = []

    def _fleet_of(self, model: str, *, as_readme: bool = False
                  ) -> AbstractContextManager[list[Process]]:
        return self._serving(fleet_workers(self.settings, model, workers=self.options.workers,
                                           log_dir=self.work_dir, as_readme=as_readme))

    def _raw_at(self, model: str) -> Callable[[int], Measurement]:
        """Raw ONNX Runtime on `model` at a given batch size, on every core."""
        path = str(self.settings.models_dir / model / "model.onnx")
        threads = max(1, (os.cpu_count() or 1))
        rows = self.rows(model, 2048 if model == CNN else 8192)
        return lambda batch: scenarios.raw(path, rows, batch=batch, threads=threads)

    def _raw(self, model: str) -> None:
        raw_at = self._raw_at(model)
        for batch in RAW_BATCHES:
            self.result.add(model, f"raw batch {batch}", self._repeat(partial(raw_at, batch)))

    def _naive(self, model: str) -> None:
        path = str(self.settings.models_dir / model / "model.onnx")
        options = self.options
        with self._serving(naive_worker(self.settings, self.work_dir)), \
                Client(settings=self.settings) as client:
            app = make_naive_app(self.settings.redis_url)
            submit = scenarios.naive_submitter(app, path)
            wait = scenarios.naive_wait(app)
            scenarios.latency(submit, wait, self.rows(model, 4))
            rows = self.rows(model, options.count(options.naive_samples))
            self.result.add(model, "naive", self._repeat(partial(
                scenarios.throughput, client, submit, rows, per_job=1,
                failures=scenarios.naive_failures)))
            self._latency_and_load(model, "naive", client, submit, wait,
                                   scenarios.naive_failures)

    def _fleet(self, model: str, *, as_readme: bool = False) -> None:
        """The fleet's scenarios: the bench's own fleet, or (`as_readme`) two `inferfleet
        worker`s started as the README says, with every default, throughput only."""
        options, name = self.options, "fleet as the README starts it" if as_readme else "fleet"
        size = options.job_size(model)
        with self._fleet_of(model, as_readme=as_readme), \
                Client(settings=self.settings) as client:
            submit = scenarios.fleet_submitter(client, model)
            wait = scenarios.fleet_wait(client)
            scenarios.latency(submit, wait, self.rows(model, 4))
            rows = self.rows(model, options.count(options.single_samples))
            self.result.add(model, f"{name}: single-sample jobs" if as_readme else
                            "fleet single-sample jobs", self._repeat(partial(
                                scenarios.throughput, client, submit, rows, per_job=1,
                                failures=scenarios.fleet_failures)))
            rows = self.rows(model, options.count(options.bulk_samples.get(model, 50_000)))
            if as_readme:
                self.result.add(model, f"{name}: bulk ({size}/job)", self._repeat(partial(
                    scenarios.bulk, client, model, rows, job_size=size)))
            else:
                self._paired_bulk(model, client, rows)
                self._latency_and_load(model, "fleet", client, submit, wait,
                                       scenarios.fleet_failures)

    def _paired_bulk(self, model: str, client: Client, rows: Rows) -> None:
        """Fleet bulk runs, each right after a raw run at every batch size: the ratio of
        each round, so that both sides of it see the machine at the same speed.

        On this machine the same code ran up to 1.76x slower from one full run to the
        next, and the best of seven noisy raw medians measured minutes earlier drifted
        up (86.5k samples/s at batch 32 against 71-74k at every other size): the
        ratio moved more with the machine than with the fleet. The raw runs of a round
        take place beside the fleet's idle workers; their CPU meanwhile is reported.
        """
        size = self.options.job_size(model)
        raw_at = self._raw_at(model)
        # A first round unmeasured, as raw's first `session.run` is: on the CNN the first
        # round ran 0.55-0.67 of raw where the next ones ran 0.71-0.90, with the fleet
        # warmed up by bulk jobs beforehand or not (ad-hoc runs of this method alone).
        warm_up = max(map(raw_at, RAW_BATCHES), key=lambda m: m.rate)
        warm_up_ratio = scenarios.bulk(client, model, rows, job_size=size).rate / warm_up.rate
        bulk_runs, raw_runs, ratios, idle_shares = [], [], [], []
        for _ in range(self.options.repeat):
            meter = CpuMeter(self.redis_pid, self._worker_pids)
            meter.start()
            started = time.perf_counter()
            best = max(map(raw_at, RAW_BATCHES), key=lambda m: m.rate)
            idle_shares.append(meter.stop()["workers"] / (time.perf_counter() - started))
            raw_runs.append(best)
            bulk_runs.append(self._measured(partial(
                scenarios.bulk, client, model, rows, job_size=size)))
            ratios.append(bulk_runs[-1].rate / best.rate)
        each = ", ".join(f"{ratio:.2f}" for ratio in ratios)
        self.result.add(model, f"fleet bulk ({size}/job)", bulk_runs,
                        note=f"(each run right after a raw round: {each} of its raw best; "
                             f"the warm-up round, not counted: {warm_up_ratio:.2f})")
        self.result.add(model, "raw best batch, in rounds beside the fleet", raw_runs,
                        note=f"(the idle fleet's workers meanwhile: "
                             f"{max(idle_shares):.1%} of a core at most)")
        self.result.paired_bulk[model] = ratios

    def _latency_and_load(self, model: str, name: str, client: Client,
                          submit: scenarios.Submit, wait: scenarios.Wait,
                          failures: Callable[..., int]) -> None:
        options = self.options
        rows = self.rows(model, options.count(options.latency_samples))
        self.result.add(model, f"{name} latency, 1 in flight", self._repeat(partial(
            scenarios.latency, submit, wait, rows)))
        if name == "fleet":
            self._behind_backfill(model, client)
            self._result_cache(model, client)
        for rate in options.load_rates:
            rows = self.rows(model, options.count(int(rate * options.load_seconds)))
            self.result.add(model, f"{name} load {rate:g}/s", [self._measured(partial(
                scenarios.offered_load, client, submit, rows, rate=rate, failures=failures))])

    def _behind_backfill(self, model: str, client: Client) -> None:
        """Single-sample latency behind a bulk backfill queued first: `high` jobs (to set
        against the idle latency above), and one `normal` job, which waits for it all."""
        options = self.options
        backfill = self.rows(model, options.count(options.bulk_samples.get(model, 50_000)))
        probes = self.rows(model, options.count(options.latency_samples))
        for priority, n in (("high", len(probes)), ("normal", 1)):
            self.result.add(model, f"fleet {priority} job behind {len(backfill):,}-sample "
                            "backfill", self._repeat(partial(
                                scenarios.behind_backfill, client, model, backfill,
                                probes[:n], job_size=options.job_size(model),
                                priority=priority)))

    def _result_cache(self, model: str, client: Client) -> None:
        """Bulk jobs with the result cache off and on: half the samples repeats of
        earlier ones (the gain), and every sample new (what a miss costs). Each run sends
        samples no earlier run has sent."""
        options = self.options
        rows = self.rows(model, options.count(options.bulk_samples.get(model, 50_000)))
        rng = np.random.default_rng(7)
        def run(repeated: float, cache: bool) -> Measurement:
            return scenarios.bulk(client, model, scenarios.with_repeats(rows, repeated, rng),
                                  job_size=options.job_size(model), cache=cache)

        for repeated in (0.5, 0.0):
            for cache in (False, True):
                label = f"fleet bulk, {repeated:.0%} repeated, cache {'on' if cache else 'off'}"
                self.result.add(model, label, self._repeat(partial(run, repeated, cache)))

    def _drains(self, model: str) -> None:
        options = self.options
        path = str(self.settings.models_dir / model / "model.onnx")
        size = options.job_size(model)
        with Client(settings=self.settings) as client:
            app = make_naive_app(self.settings.redis_url)
            submit = scenarios.naive_submitter(app, path)
            rows = self.rows(model, options.count(options.naive_samples))
            ids = [submit(rows[i:i + 1]) for i in range(len(rows))]
            with self._serving(naive_worker(self.settings, self.work_dir)):
                self.result.add(model, "drain naive", [self._measured(partial(
                    scenarios.drain, client, ids, len(rows), scenarios.naive_failures))])
            for label, n, per_job in (
                    ("drain fleet single-sample", options.count(options.single_samples), 1),
                    (f"drain fleet bulk ({size}/job)",
                     options.count(options.bulk_samples.get(model, 50_000)), size)):
                jobs = client.submit_many(model, self.rows(model, n), job_size=per_job)
                with self._fleet_of(model):
                    self.result.add(model, label, [self._measured(partial(
                        scenarios.drain, client, [j.id for j in jobs], n,
                        scenarios.fleet_failures))])

    def _transport_ceiling(self, model: str) -> None:
        """The bulk job's very message bytes through the same Redis with a bare loop."""
        size = self.options.job_size(model)
        rows = self.rows(model, size)
        inputs, inputs_string = encode_inputs({None: rows}, 0, size)
        envelope = task_envelope("ceiling", keys.model_queue(model), {
            "v": 1, "model": model, "inputs": inputs}, "{}")
        messages = self.options.count(self.options.bulk_samples.get(model, 50_000)) // size
        client = redis.Redis.from_url(self.settings.redis_url)
        try:
            self.result.add(model, f"transport ceiling ({size}/message)", self._repeat(partial(
                scenarios.transport_ceiling, client, envelope, inputs_string,
                rows_per_message=size,
                messages=max(2, messages))))
        finally:
            client.close()

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
                        scenarios.submits, client, self.rows(model, n),
                        model=self.DURABLE_MODEL)))
                    client.redis.delete(keys.model_queue(self.DURABLE_MODEL))

    def _memory(self, model: str) -> None:
        n = self.options.count(self.options.memory_samples)
        with self._fleet_of(model) as processes:
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

    def _memory_client(self, model: str, n: int) -> dict[str, int]:
        done = subprocess.run(
            [sys.executable, "-m", "inferfleet.bench.memory", self.settings.redis_url,
             model, str(n), str(self.options.job_size(model))],
            capture_output=True, text=True, check=True)
        return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


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
        pid = server.process.pid if server.process else None
        return Bench(bench_settings, options, Path(tmp), redis_pid=pid).run()
