"""Load drills: `inferfleet bench --load steady|ramp|overload`.

Single-sample jobs are offered in an open loop (sent on a clock, whatever the fleet
does) to two `inferfleet worker`s started as the README starts them, on an embedded
Redis, after the fleet's capacity is measured by draining jobs as fast as it takes them:

- `steady`: 50% of capacity;
- `ramp`: from 0 to 150% of capacity;
- `overload`: 300% of capacity, against `max_queued_jobs` of one second of capacity, and
  a deadline of a few seconds per job.

Each one-second window of the drill reports the offered load, the goodput (samples that
succeeded, by when they were submitted), the refusals (`QueueFullError`, which is
immediate), the jobs that expired, and latency percentiles of the accepted jobs. The jobs
due at each moment go in one pipelined `submit_many` of one-sample jobs, so that one
producer thread can offer three times what the fleet takes. At the
end every accepted job must have ended in exactly one terminal state: the drill reports
any that did not (lost) as a failure of the fleet.
"""

from __future__ import annotations

import json
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from inferfleet import keys
from inferfleet.bench.fleets import fleet_workers
from inferfleet.embedded import EmbeddedRedis
from inferfleet.errors import QueueFullError
from inferfleet.producer import Client
from inferfleet.settings import Settings, load_settings

DRILLS = ("steady", "ramp", "overload")
#: The deadline of each job in the overload drill: queued longer, it expires.
OVERLOAD_DEADLINE_S = 3.0


@dataclass
class Window:
    """One second of a drill, by submit time."""

    offered: int = 0
    refused: int = 0
    succeeded: int = 0
    expired: int = 0
    failed: int = 0
    latencies_ms: list[float] = field(default_factory=list)

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")


@dataclass
class DrillReport:
    """A drill's windows, the fleet's measured capacity, and what was not accounted for."""

    kind: str
    capacity: float  # jobs/s, drained as fast as the fleet takes them
    windows: list[Window]
    refusal_ms_p99: float
    lost: list[str]  # accepted jobs with no terminal result at the end

    def table(self) -> str:
        lines = [f"drill {self.kind}: capacity {self.capacity:,.0f} jobs/s (single-sample "
                 "digits, two README-default workers)",
                 "| second | offered/s | goodput/s | refused | expired | failed | p50 ms | "
                 "p95 ms | p99 ms |", "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
                 "| ---: |"]
        for second, w in enumerate(self.windows):
            lines.append(f"| {second} | {w.offered:,} | {w.succeeded:,} | {w.refused:,} | "
                         f"{w.expired:,} | {w.failed:,} | {w.percentile(50):.1f} | "
                         f"{w.percentile(95):.1f} | {w.percentile(99):.1f} |")
        totals = Counter[str]()
        for w in self.windows:
            totals.update({"offered": w.offered, "refused": w.refused,
                           "succeeded": w.succeeded, "expired": w.expired, "failed": w.failed})
        lines.append(f"\ntotal: {dict(totals)}; refusals answered within "
                     f"{self.refusal_ms_p99:.1f} ms (p99); accepted jobs without a terminal "
                     f"result: {len(self.lost)}")
        return "\n".join(lines)


def run_drill(kind: str, *, models_dir: Path, seconds: float = 10.0, workers: int = 2,
              log: Callable[[str], None] = print) -> DrillReport:
    """Start the fleet, measure its capacity, offer the drill's load, account for every job.

    Raises:
        ValueError: for a drill that is not one of `DRILLS`.
    """
    if kind not in DRILLS:
        raise ValueError(f"drill {kind!r}: choose one of {DRILLS}")
    work = Path(tempfile.mkdtemp(prefix="inferfleet-drill-"))
    redis = EmbeddedRedis(work / "redis").start()
    try:
        settings = load_settings(redis_url=redis.url, models_dir=models_dir)
        with fleet_workers(settings, "digits", workers=workers, log_dir=work, as_readme=True):
            rows = np.load(models_dir / "digits" / "holdout.npz")["x"]
            capacity = _capacity(settings, rows)
            log(f"capacity: {capacity:,.0f} jobs/s")
            return _offer(kind, settings, rows, capacity, seconds)
    finally:
        redis.stop()


def _capacity(settings: Settings, rows: np.ndarray, jobs: int = 3000) -> float:
    """Jobs/s of the fleet draining single-sample jobs submitted as fast as they go."""
    with Client(settings=settings) as client:
        client.submit("digits", rows[:1]).result(timeout=60)  # warm
        started = time.perf_counter()
        ids = [client.submit("digits", rows[i % len(rows)][None]).id for i in range(jobs)]
        client.results(ids, timeout=600)
        return jobs / (time.perf_counter() - started)


def _rate_at(kind: str, capacity: float, elapsed_s: float, seconds: float) -> float:
    if kind == "steady":
        return 0.5 * capacity
    if kind == "ramp":
        return max(1.0, 1.5 * capacity * elapsed_s / seconds)
    return 3.0 * capacity


def _offer(kind: str, settings: Settings, rows: np.ndarray, capacity: float,
           seconds: float) -> DrillReport:
    overload = kind == "overload"
    if overload:
        settings = settings.model_copy(update={"max_queued_jobs": max(10, int(capacity))})
    windows = [Window() for _ in range(int(np.ceil(seconds)))]
    accepted: dict[str, tuple[float, int]] = {}  # job id -> submit time, window
    refusal_ms: list[float] = []
    with Client(settings=settings) as client:
        reader = _Reader(client, accepted)
        reader.start()
        started = time.perf_counter()
        due, last, offered = 0.0, 0.0, 0
        while (elapsed := time.perf_counter() - started) < seconds:
            due += _rate_at(kind, capacity, elapsed, seconds) * (elapsed - last)
            last = elapsed
            count = int(due) - offered
            if count <= 0:
                time.sleep(0.0005)
                continue
            # The jobs due now go in one pipelined call (one job per sample): a lone
            # producer thread could not offer 3x the fleet's capacity one call per job.
            second = int(elapsed)
            window = windows[min(second, len(windows) - 1)]
            picked = np.arange(offered, offered + count) % len(rows)
            offered += count
            window.offered += count
            at = time.perf_counter()
            try:
                jobs = client.submit_many(
                    "digits", rows[picked], job_size=1, validate=False,
                    deadline_s=OVERLOAD_DEADLINE_S if overload else None)
            except QueueFullError as full:
                jobs = full.submitted
                window.refused += count - len(jobs)
                refusal_ms.append((time.perf_counter() - at) * 1000)
            for job in jobs:
                reader.add(job.id, at, second)
        reader.finish(timeout_s=OVERLOAD_DEADLINE_S + settings.job_time_limit_s + 30)
    for job_id, (submitted, second) in accepted.items():
        outcome = reader.outcomes.get(job_id)
        if outcome is None:
            continue
        status, done = outcome
        window = windows[min(second, len(windows) - 1)]
        if status == "succeeded":
            window.succeeded += 1
            window.latencies_ms.append((done - submitted) * 1000)
        elif status == "expired":
            window.expired += 1
        else:
            window.failed += 1
    lost = [job_id for job_id in accepted if job_id not in reader.outcomes]
    return DrillReport(kind, capacity, windows,
                       float(np.percentile(refusal_ms, 99)) if refusal_ms else 0.0, lost)


class _Reader(threading.Thread):
    """Reads each accepted job's terminal result as it lands (MGET every millisecond)."""

    def __init__(self, client: Client, accepted: dict[str, tuple[float, int]]) -> None:
        super().__init__(name="drill-reader", daemon=True)
        self.client, self.accepted = client, accepted
        self.outcomes: dict[str, tuple[str, float]] = {}
        self._pending: list[str] = []
        self._lock = threading.Lock()
        self._stop_at: float | None = None

    def add(self, job_id: str, at: float, second: int) -> None:
        with self._lock:
            self.accepted[job_id] = (at, second)
            self._pending.append(job_id)

    def finish(self, *, timeout_s: float) -> None:
        """Stop once every accepted job has a result, or after `timeout_s`."""
        self._stop_at = time.perf_counter() + timeout_s
        self.join()

    def run(self) -> None:
        while True:
            with self._lock:
                pending = self._pending[:512]
            if not pending:
                if self._stop_at is not None:
                    return
                time.sleep(0.001)
                continue
            values = self.client.redis.mget([keys.result(i) for i in pending])
            now = time.perf_counter()
            landed = {job_id: json.loads(raw)["result"]["status"]
                      for job_id, raw in zip(pending, values, strict=True) if raw is not None}
            with self._lock:
                for job_id, status in landed.items():
                    self.outcomes[job_id] = (status, now)
                # Only the window was read: keep its jobs still out, then the rest as is.
                self._pending = [i for i in pending if i not in landed] + \
                    self._pending[len(pending):]
            if self._stop_at is not None and time.perf_counter() > self._stop_at:
                return
            time.sleep(0.001)


def plot_drill(report: DrillReport, path: Path) -> None:
    """Offered load, goodput and refusals per second; latency percentiles per second."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seconds = list(range(len(report.windows)))
    figure, (load, latency) = plt.subplots(1, 2, figsize=(13, 5))
    load.plot(seconds, [w.offered for w in report.windows], marker="o", label="offered")
    load.plot(seconds, [w.succeeded for w in report.windows], marker="o", label="goodput")
    load.plot(seconds, [w.refused for w in report.windows], marker="x", label="refused")
    load.plot(seconds, [w.expired for w in report.windows], marker="x", label="expired")
    load.axhline(report.capacity, color="grey", linestyle=":", label="capacity")
    load.set_xlabel("second of the drill (by submit time)")
    load.set_ylabel("jobs")
    load.set_title(f"{report.kind}: load, goodput, refusals")
    load.legend()
    for q, style in ((50, "-"), (95, "--"), (99, ":")):
        latency.plot(seconds, [w.percentile(q) for w in report.windows], linestyle=style,
                     marker="o", label=f"p{q}")
    latency.set_yscale("log")
    latency.set_xlabel("second of the drill (by submit time)")
    latency.set_ylabel("end-to-end latency of accepted jobs, ms (log)")
    latency.set_title(f"{report.kind}: latency")
    latency.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
