"""Shared pieces of the fault tests: short clocks, a slow job, and the tally each
scenario reports (the columns of RELIABILITY.md)."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from celery import Celery
from conftest import StartWorker, worker_starter

from inferfleet import Client, Job, keys
from inferfleet.fleet import Process, stop_processes
from inferfleet.ledger import redis_text
from inferfleet.schemas import JobStatus
from inferfleet.settings import Settings

#: Short clocks, so that a job whose worker died comes back within a second or two (the
#: heartbeat), and the visibility timeout's backstop within seconds.
SHORT_CLOCKS = {"heartbeat_timeout_s": "1", "visibility_timeout_s": "4",
                "job_time_limit_s": "1.5", "prefetch_multiplier": "1", "restore_sweep_s": "0.5"}

_TERMINAL = {status.value for status in JobStatus}


def holdout_rows(models_dir: Path, n: int) -> np.ndarray:
    """`n` held-out digits rows (repeated as needed)."""
    rows = np.load(models_dir / "digits" / "holdout.npz")["x"]
    return np.tile(rows, (n // len(rows) + 1, 1))[:n]


def plain_celery(settings: Settings) -> Celery:
    """A Celery client that knows nothing of inferfleet but its documented wire schema."""
    app = Celery(broker=settings.redis_url, backend=settings.redis_url)
    app.conf.update(task_serializer="json", accept_content=["json"],
                    result_accept_content=["json"])
    return app


def slow_rows(models_dir: Path) -> np.ndarray:
    """100,000 held-out rows: seconds of work for digits_mlp on one thread."""
    return holdout_rows(models_dir, 100_000)


@contextmanager
def slow_job(settings: Settings, log_dir: Path, models_dir: Path, **env: str
             ) -> Iterator[tuple[Client, Job, StartWorker, list[Process]]]:
    """A digits_mlp worker with short clocks (and `env`) and a job that keeps it busy for
    seconds; every worker started through it is stopped afterwards."""
    start, started = worker_starter(settings, log_dir)
    try:
        start(models="digits_mlp", **SHORT_CLOCKS, **env)
        with Client(settings=settings) as client:
            yield client, client.submit("digits_mlp", slow_rows(models_dir)), start, started
    finally:
        stop_processes(started)


def wait_until(condition: object, *, timeout_s: float = 60, what: str = "condition") -> float:
    """Poll `condition()` until true; the seconds it took."""
    started = time.monotonic()
    while not condition():  # type: ignore[operator]
        assert time.monotonic() - started < timeout_s, f"timed out waiting for {what}"
        time.sleep(0.02)
    return time.monotonic() - started


@dataclass
class Tally:
    """What a fault scenario did to its jobs, read from the ledger."""

    submitted: int
    by_state: Counter[str]
    lost: int  # not terminal (the promise: 0)
    duplicates_computed: int  # results computed and refused: a result was stored already
    redeliveries: int
    overwrites: int  # results that changed after first read (the promise: 0)
    recovery_s: float | None = None

    def __str__(self) -> str:
        recovery = "" if self.recovery_s is None else f", recovery {self.recovery_s:.1f} s"
        return (f"submitted {self.submitted}, terminal by state {dict(self.by_state)}, lost "
                f"{self.lost}, duplicates computed {self.duplicates_computed}, redeliveries "
                f"{self.redeliveries}, overwrites {self.overwrites}{recovery}")


def tally(client: Client, job_ids: Sequence[str], *, first_seen: dict[str, bytes] | None = None,
          recovery_s: float | None = None) -> Tally:
    """The tally of `job_ids` now; `first_seen` holds results as first read, to count
    overwrites against."""
    pipe = client.redis.pipeline(transaction=False)
    for job_id in job_ids:
        pipe.get(keys.result(job_id))
        pipe.hmget(keys.job(job_id), ["refused_writes", "redeliveries"])
    replies = pipe.execute()
    states: Counter[str] = Counter()
    duplicates = redeliveries = overwrites = 0
    for job_id, stored, (refused, redelivered) in zip(job_ids, replies[::2], replies[1::2],
                                                      strict=True):
        states[client.status(job_id) if stored is not None else "no result"] += 1
        duplicates += int(redis_text(refused)) if refused else 0
        redeliveries += int(redis_text(redelivered)) if redelivered else 0
        if first_seen and job_id in first_seen and first_seen[job_id] != stored:
            overwrites += 1
    lost = sum(n for state, n in states.items() if state not in _TERMINAL)
    return Tally(len(job_ids), states, lost, duplicates, redeliveries, overwrites, recovery_s)


def stored_results(client: Client, job_ids: Sequence[str]) -> dict[str, bytes]:
    """The raw stored results of those jobs that have one."""
    values = client.redis.mget([keys.result(job_id) for job_id in job_ids])
    return {job_id: value for job_id, value in zip(job_ids, values, strict=True)
            if value is not None}
