"""Deliveries that go wrong: a job delivered twice, a worker killed mid-batch beside a live
one, a warm shutdown with jobs prefetched, connections reset mid-batch, and a Redis that
restarts without its data. Each test asserts the tally RELIABILITY.md reports."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import numpy as np
from conftest import StartWorker
from faultkit import (
    SHORT_CLOCKS,
    holdout_rows,
    slow_job,
    stored_results,
    tally,
    wait_until,
)

from inferfleet import AsyncClient, Client, Job, JobResult, keys
from inferfleet.embedded import EmbeddedRedis
from inferfleet.fleet import stop_processes
from inferfleet.settings import Settings, load_settings

#: A worker that holds few messages at a time, so that a kill finds some done, some in
#: hand and some still queued.
FEW_AT_A_TIME = {**SHORT_CLOCKS, "worker_concurrency": "2"}
#: The same, with every clock at its default (liveness gives a dead worker's jobs back).
FEW_AT_A_TIME_BY_DEFAULT = {"worker_concurrency": "2"}


def test_a_job_delivered_again_after_its_result_is_stored_cannot_overwrite_it(
        private_settings: Settings, tmp_path: Path, models_dir: Path,
        start_private_worker: StartWorker) -> None:
    stop_processes([start_private_worker(models="digits")])  # publishes the signature
    queue = keys.model_queue("digits")
    with Client(settings=private_settings) as client:
        jobs = client.submit_many("digits", holdout_rows(models_dir, 50), job_size=10)
        copies = client.redis.lrange(queue, 0, -1)
        start_private_worker(models="digits")
        ids = [job.id for job in jobs]
        assert {r.status for r in client.results(ids, timeout=60)} == {"succeeded"}
        first = stored_results(client, ids)
        # The broker hands every message out once more (the copies carry no
        # redelivered flag, so the worker cannot tell them from new jobs).
        client.redis.lpush(queue, *copies)
        wait_until(lambda: tally(client, ids).duplicates_computed == 5,
                   what="every copy's write to be refused")
        counts = tally(client, ids, first_seen=first)
        assert (counts.by_state, counts.lost, counts.overwrites) == (
            {"succeeded": 5}, 0, 0), counts
        print(counts)


def test_a_worker_killed_mid_batch_loses_nothing_while_another_serves_on(
        private_settings: Settings, tmp_path: Path, models_dir: Path,
        start_private_worker: StartWorker) -> None:
    doomed = start_private_worker(models="digits_mlp", **FEW_AT_A_TIME_BY_DEFAULT)
    start_private_worker(models="digits_mlp", **FEW_AT_A_TIME_BY_DEFAULT)
    with Client(settings=private_settings) as client:
        jobs = client.submit_many("digits_mlp", holdout_rows(models_dir, 120_000),
                                  job_size=3000)
        ids = [job.id for job in jobs]
        wait_until(lambda: len(stored_results(client, ids)) >= 6, what="6 results")
        first = stored_results(client, ids)
        os.kill(doomed.pid, signal.SIGKILL)  # mid-batch: it holds jobs it has begun
        killed_at = time.monotonic()
        doomed.wait(10)
        results = client.results(ids, timeout=120)
        recovery = time.monotonic() - killed_at
        counts = tally(client, ids, first_seen=first, recovery_s=recovery)
        assert [r.status for r in results] == ["succeeded"] * 40, counts
        assert (counts.lost, counts.overwrites, counts.duplicates_computed) == (0, 0, 0), \
            counts
        assert counts.redeliveries >= 1, counts  # what it held came back
        assert all(len(r.samples) == 3000 for r in results)
        print(counts)


def test_a_warm_shutdown_finishes_jobs_in_hand_and_puts_prefetched_ones_back(
        private_settings: Settings, tmp_path: Path, models_dir: Path,
        start_private_worker: StartWorker) -> None:
    prefetching = {**FEW_AT_A_TIME, "prefetch_multiplier": "4", "visibility_timeout_s": "30"}
    worker = start_private_worker(models="digits_mlp", **prefetching)
    queue = keys.model_queue("digits_mlp")
    with Client(settings=private_settings) as client:
        jobs = client.submit_many("digits_mlp", holdout_rows(models_dir, 90_000),
                                  job_size=3000)
        ids = [job.id for job in jobs]
        wait_until(lambda: len(stored_results(client, ids)) >= 3, what="3 results")
        worker.send_signal(signal.SIGTERM)  # warm shutdown
        worker.wait(30)
        done = stored_results(client, ids)
        # Nothing is left half-held: every job has its result or is back in the queue
        # (at once, not after the visibility timeout).
        assert len(done) + client.redis.llen(queue) == 30
        assert client.redis.hlen("unacked") == 0
        started_again = time.monotonic()
        start_private_worker(models="digits_mlp", **prefetching)
        results = client.results(ids, timeout=120)
        counts = tally(client, ids, first_seen=done,
                       recovery_s=time.monotonic() - started_again)
        assert [r.status for r in results] == ["succeeded"] * 30, counts
        assert (counts.lost, counts.overwrites, counts.duplicates_computed) == (0, 0, 0), \
            counts
        print(counts)


def test_connections_reset_mid_batch_end_the_job_once_and_the_worker_serves_on(
        private_settings: Settings, tmp_path: Path, models_dir: Path) -> None:
    with slow_job(private_settings, tmp_path / "logs", models_dir) as (client, job, _, _):
        wait_until(lambda: job.status() == "running", what="the job to run")
        killed = sum(int(client.redis.execute_command("CLIENT", "KILL", "TYPE", kind))
                     for kind in ("normal", "pubsub"))
        assert killed >= 2  # the worker's and this client's own
        reset_at = time.monotonic()
        result = job.result(timeout=90)
        after = client.submit("digits_mlp", holdout_rows(models_dir, 10))
        after_result = after.result(timeout=60)
        assert after_result.status == "succeeded", after_result.error or after_result.errors
        counts = tally(client, [job.id], recovery_s=time.monotonic() - reset_at)
        # The copy kombu put back while the job ran was taken, waited for it, and acked.
        wait_until(lambda: client.redis.hlen("unacked") == 0, what="every message acked")
        assert client.redis.llen(keys.model_queue("digits_mlp")) == 0
        assert result.status == "succeeded" and len(result.samples) == 100_000, counts
        assert (counts.lost, counts.overwrites, counts.duplicates_computed) == (0, 0, 0), counts
        print(counts)


async def _result_async(settings: Settings, job: Job) -> JobResult:
    async with AsyncClient(settings=settings) as client:
        return await client.result(job.id, timeout=30, deadline_at=job.deadline_at)


def test_redis_restarted_without_its_data_leaves_no_job_pending_past_its_deadline(
        tmp_path: Path, models_dir: Path) -> None:
    server = EmbeddedRedis(tmp_path / "redis", appendonly=False).start()
    settings = load_settings(redis_url=server.url, models_dir=models_dir,
                             job_time_limit_s=0.5, default_deadline_s=1.5)
    try:
        with Client(settings=settings) as client:
            jobs = client.submit_many("never_served", np.zeros((20, 2), np.float32),
                                      job_size=2, deadline_s=1.0, validate=False)
            undated = client.submit("never_served", np.zeros((1, 2), np.float32),
                                    validate=False)
        assert server.process is not None
        server.process.kill()  # SIGKILL: no persistence, so it comes back empty
        server.process.wait(10)
        server.start()
        with Client(settings=settings) as client:
            assert client.redis.dbsize() == 0
            assert {job.status() for job in jobs} == {"unknown"}  # not pending: unknown
            assert undated.status() == "unknown"
            # Given no deadline, it has the default one: it ends too, through either
            # client (one core).
            results = [job.result(timeout=30) for job in [*jobs[1:], undated]]
            results.insert(0, asyncio.run(_result_async(settings, jobs[0])))
            counts = tally(client, [job.id for job in [*jobs, undated]])
            assert [r.status for r in results] == ["expired"] * 11, counts
            assert all(r.error and "no record" in r.error.message for r in results)
            assert (counts.lost, counts.by_state) == (0, {"expired": 11}), counts
            print(counts)
    finally:
        server.stop()
