"""Measurements shared by every scenario: a result poller and summary statistics.

Both the baseline and the fleet store results under Celery's result keys, so one poller
(MGET over the keys still missing) reads both: neither side gets a cheaper client path.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

import numpy as np
import psutil
import redis

from inferfleet import keys

WINDOW = 512
MIN_PAUSE_S = 0.0005


@dataclass
class Measurement:
    """One run of one scenario; `cpu_s` the CPU seconds each side spent on it (redis,
    workers, client), where measured."""

    samples: int
    seconds: float
    latencies_ms: list[float] = field(default_factory=list)
    failures: int = 0
    cpu_s: dict[str, float] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.samples / self.seconds if self.seconds > 0 else 0.0

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")


class CpuMeter:
    """CPU seconds (user + system) that Redis, the workers and this process spend between
    `start` and `stop`: where a scenario's time goes."""

    SIDES = ("redis", "workers", "client")

    def __init__(self, redis_pid: int | None, worker_pids: Sequence[int]) -> None:
        self._pids = {"redis": [] if redis_pid is None else [redis_pid],
                      "workers": list(worker_pids), "client": [os.getpid()]}
        self._started: dict[str, float] = {}
        # The baseline's prefork pool works in its children; this process's own children
        # are the Redis and the workers, counted apart.
        self._with_children = {"redis": False, "workers": True, "client": False}

    def start(self) -> None:
        self._started = self._now()

    def stop(self) -> dict[str, float]:
        now = self._now()
        return {side: now[side] - self._started[side] for side in self.SIDES}

    def _now(self) -> dict[str, float]:
        return {side: sum(_cpu_seconds(pid, children=self._with_children[side])
                          for pid in pids) for side, pids in self._pids.items()}


def _cpu_seconds(pid: int, *, children: bool) -> float:
    """A process's CPU seconds so far (with its live children's, if asked); 0 once it is
    gone."""
    try:
        process = psutil.Process(pid)
        own = process.cpu_times()
        total = own.user + own.system
        for child in process.children(recursive=True) if children else ():
            times = child.cpu_times()
            total += times.user + times.system
        return float(total)
    except psutil.Error:
        return 0.0

@dataclass
class Summary:
    """The median of repeated measurements of one scenario; `cpu_us` each side's CPU
    microseconds per sample (median), where measured."""

    model: str
    scenario: str
    rate: float
    p50_ms: float
    p99_ms: float
    runs: int
    note: str = ""
    cpu_us: dict[str, float] = field(default_factory=dict)


def summarise(model: str, scenario: str, runs: Sequence[Measurement], note: str = "") -> Summary:
    """Medians over runs (rate, p50, p99, CPU per sample)."""
    cpu = {side: float(np.median([r.cpu_s[side] * 1e6 / max(1, r.samples) for r in runs]))
           for side in CpuMeter.SIDES if all(side in r.cpu_s for r in runs)}
    return Summary(model, scenario, float(np.median([r.rate for r in runs])),
                   float(np.median([r.percentile(50) for r in runs])),
                   float(np.median([r.percentile(99) for r in runs])), len(runs), note, cpu)


def collect(client: redis.Redis, task_ids: Sequence[str], *, timeout_s: float,
            decode: Callable[[dict[str, Any]], int],
            max_pause_s: float = 0.02) -> tuple[dict[str, float], int]:
    """Wait for every task's result: the time (perf_counter) each was first seen, and the
    number of failed samples.

    The oldest `WINDOW` missing results are read per MGET; the pause between reads grows
    while few land and shrinks while many do, up to `max_pause_s` (which bounds how late a
    result may be seen), so that the poller takes little CPU from the system it measures.
    `decode` turns a stored meta into its number of failed samples, timed with the rest,
    as a caller must decode what it reads.

    Raises:
        TimeoutError: if results are still missing after `timeout_s`.
    """
    seen: dict[str, float] = {}
    upcoming = iter(task_ids)
    window = list(islice(upcoming, WINDOW))
    deadline = time.monotonic() + timeout_s
    failures = 0
    pause_s = MIN_PAUSE_S
    while window:
        values = client.mget([keys.result(task_id) for task_id in window])
        now = time.perf_counter()
        still = []
        for task_id, value in zip(window, values, strict=True):
            if value is None:
                still.append(task_id)
            else:
                seen[task_id] = now
                failures += decode(json.loads(value))
        landed = len(window) - len(still)
        window = still + list(islice(upcoming, landed))
        if landed > WINDOW // 4:
            pause_s = max(MIN_PAUSE_S, pause_s / 2)
            continue
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(window)} results still missing after {timeout_s} s")
        if landed < WINDOW // 32:
            pause_s = min(max_pause_s, pause_s * 2)
        time.sleep(pause_s)
    return seen, failures
