"""A Sentinel failover under load: a real primary, a replica and three Sentinels on
loopback, the primary killed mid-run. The fleet (a worker alone, or `inferfleet up
--no-redis`) goes on against the promoted replica without restarts. Without WAIT, what
asynchronous replication lost is counted; with `wait_replicas=1`, no accepted job is
lost."""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from conftest import worker_starter
from faultkit import holdout_rows, stored_results
from sentinelkit import SentinelGroup

from inferfleet import BrokerError, Client, Job
from inferfleet.errors import DurabilityError
from inferfleet.fleet import Process, spawn, stop_processes, wait_for_workers
from inferfleet.settings import Settings, load_settings

T = TypeVar("T")
#: Jobs lost by replication end `expired` this long after submit (deadline + grace).
DEADLINE_S, GRACE_S = 15.0, 2.0


def through_failover(call: Callable[[], T], *, timeout_s: float = 60) -> T:
    """`call()`, tried again while Redis fails over (as a caller would on BrokerError)."""
    give_up = time.monotonic() + timeout_s
    while True:
        try:
            return call()
        except BrokerError:
            if time.monotonic() > give_up:
                raise
            time.sleep(0.2)


def drill(tmp_path: Path, models_dir: Path, *, wait_replicas: int, through_up: bool = False
          ) -> tuple[Counter[str], Counter[str], float]:
    """(states of the jobs submitted before the kill, of those submitted after, seconds
    from the kill to the last of them terminal). The worker is started alone, or by
    `inferfleet up --no-redis` (`through_up`)."""
    group = SentinelGroup(tmp_path / "sentinels").start()
    try:
        settings = load_settings(redis_url=group.url, models_dir=models_dir,
                                 wait_replicas=wait_replicas, job_time_limit_s=GRACE_S)
        start, started = worker_starter(settings, tmp_path / "logs")
        try:
            if through_up:  # default settings: only the URL is the drill's
                started.append(up_without_redis(settings, tmp_path))
            else:
                start(models="digits_mlp")
            with Client(settings=settings) as client:
                before = client.submit_many("digits_mlp", holdout_rows(models_dir, 120 * 256),
                                            job_size=256, deadline_s=DEADLINE_S)
                ids = [job.id for job in before]
                while len(stored_results(client, ids)) < 20:
                    time.sleep(0.01)
                group.kill_primary()
                killed_at = time.monotonic()
                after = through_failover(lambda: submit_after(client, models_dir))
                assert group.primary_port() == group.replica.port  # promoted
                states = [terminal_state(job) for job in [*before, *after]]
                took_s = time.monotonic() - killed_at
        finally:
            stop_processes(started)
    finally:
        group.stop()
    return Counter(states[:len(before)]), Counter(states[len(before):]), took_s


def up_without_redis(settings: Settings, folder: Path) -> Process:
    """`inferfleet up --no-redis --no-flower --workers 1` on the Sentinels' URL, once its
    worker answers."""
    env = {**os.environ, "INFERFLEET_REDIS_URL": settings.redis_url,
           "INFERFLEET_MODELS_DIR": str(settings.models_dir),
           "INFERFLEET_DATA_DIR": str(folder / "up")}
    up = spawn(["up", "--no-redis", "--no-flower", "--workers", "1"], env=env,
               log_path=folder / "logs" / "up.log")
    wait_for_workers(settings, ["worker0@"], timeout_s=90, processes=[up])
    return up


def submit_after(client: Client, models_dir: Path) -> list[Job]:
    """Jobs submitted once the primary is gone. The promoted replica has no replica of its
    own, so a client that asks for one hears so (`DurabilityError`), and its jobs run."""
    try:
        return client.submit_many("digits_mlp", holdout_rows(models_dir, 20 * 256),
                                  job_size=256)
    except DurabilityError as exc:
        assert client.settings.wait_replicas and "0 of the 1 replica(s)" in str(exc)
        return exc.submitted


def terminal_state(job: Job) -> str:
    result = through_failover(lambda: job.result(timeout=DEADLINE_S + GRACE_S + 30))
    if result.status == "expired" and result.error and "no record" in result.error.message:
        return "lost (expired: its record did not reach the replica)"
    return result.status.value


def test_a_failover_mid_run_loses_only_unreplicated_writes_and_the_fleet_goes_on(
        tmp_path: Path, models_dir: Path) -> None:
    before, after, took_s = drill(tmp_path, models_dir, wait_replicas=0)
    assert sum(before.values()) == 120 and set(before) <= {
        "succeeded", "lost (expired: its record did not reach the replica)"}, before
    assert after == {"succeeded": 20}, after  # the fleet goes on, no restarts
    print(f"before the kill: {dict(before)}; after: {dict(after)}; all terminal "
          f"{took_s:.1f} s after the kill")


def test_with_wait_replicas_no_accepted_job_is_lost_in_a_failover(
        tmp_path: Path, models_dir: Path) -> None:
    before, after, took_s = drill(tmp_path, models_dir, wait_replicas=1, through_up=True)
    assert before == {"succeeded": 120}, before
    # After the kill no replica is left to confirm: the first chunk of the submit went,
    # was refused as not durable, and still ran.
    assert after == {"succeeded": 4}, after
    print(f"before the kill: {dict(before)}; after: {dict(after)}; all terminal "
          f"{took_s:.1f} s after the kill")
