"""Measurements shared by every scenario: a result poller and summary statistics.

Both the baseline and the fleet store results under Celery's result keys, so one poller
(MGET over the keys still missing) reads both: neither side gets a cheaper client path.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

import numpy as np
import redis

from inferfleet import keys

WINDOW = 512
MIN_PAUSE_S = 0.0005


@dataclass
class Measurement:
    """One run of one scenario."""

    samples: int
    seconds: float
    latencies_ms: list[float] = field(default_factory=list)
    failures: int = 0

    @property
    def rate(self) -> float:
        return self.samples / self.seconds if self.seconds > 0 else 0.0

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")


@dataclass
class Summary:
    """The median of repeated measurements of one scenario."""

    model: str
    scenario: str
    rate: float
    p50_ms: float
    p99_ms: float
    runs: int
    note: str = ""


def summarise(model: str, scenario: str, runs: Sequence[Measurement], note: str = "") -> Summary:
    """Medians over runs (rate, p50, p99)."""
    return Summary(model, scenario, float(np.median([r.rate for r in runs])),
                   float(np.median([r.percentile(50) for r in runs])),
                   float(np.median([r.percentile(99) for r in runs])), len(runs), note)


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
