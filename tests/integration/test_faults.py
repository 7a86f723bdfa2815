"""Faults: messages no worker can use, workers and Redis that die or stall, full queues,
deadlines. Nothing lost, nothing pending forever (see RELIABILITY.md)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from conftest import worker_starter
from faultkit import SHORT_CLOCKS, plain_celery, slow_job, slow_rows

from inferfleet import Client, ErrorCode, keys
from inferfleet.codec import decode_array, encode_array
from inferfleet.deadletters import DeadLetters
from inferfleet.fleet import stop_processes
from inferfleet.settings import Settings, load_settings


def pickle_envelope(job_id: str, queue: str) -> str:
    """What a Celery client configured for pickle would push (body: a pickled tuple)."""
    return json.dumps({
        "body": "gASVEAAAAAAAAAApfZR9lIeULg==", "content-encoding": "binary",
        "content-type": "application/x-python-serialize",
        "headers": {"lang": "py", "task": keys.TASK_NAME, "id": job_id, "root_id": job_id,
                    "retries": 0, "timelimit": [None, None], "argsrepr": "()",
                    "kwargsrepr": "{}"},
        "properties": {"correlation_id": job_id, "reply_to": "", "delivery_mode": 2,
                       "delivery_info": {"exchange": "", "routing_key": queue},
                       "priority": 0, "body_encoding": "base64", "delivery_tag": "t1"}})


@pytest.mark.usefixtures("worker")
def test_garbage_and_pickle_messages_are_dead_lettered_and_the_worker_keeps_serving(
        settings: Settings, client: Client, tmp_path: Path) -> None:
    queue = keys.model_queue("digits")
    pickled = str(uuid.uuid4())
    client.redis.lpush(queue, "{not json", "[1, 2]", pickle_envelope(pickled, queue))
    job = client.submit("digits", np.zeros((2, 64), np.float32))
    assert job.result(timeout=30).status == "succeeded"  # queued behind the garbage

    assert client.result(pickled, timeout=30).status == "dead_lettered"
    assert client.status(pickled) == "dead_lettered"
    result = client.result(pickled, timeout=1)
    assert result.error is not None and result.error.code == ErrorCode.MALFORMED_MESSAGE
    with DeadLetters(client.redis) as letters:
        reasons = {entry.reason.split(":")[0] for entry in letters.entries()}
    assert {"not a JSON message", "not a kombu message envelope",
            "content type 'application/x-python-serialize' is refused; only application/json "
            "is accepted"} <= reasons

    env = {**os.environ, "INFERFLEET_REDIS_URL": settings.redis_url}
    listed = subprocess.run([sys.executable, "-m", "inferfleet", "dead", "list"], env=env,
                            capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0 and pickled in listed.stdout


def test_a_dead_letter_replayed_goes_back_to_its_queue(client: Client) -> None:
    from inferfleet.ledger import dead_letter

    queue = "inferfleet.replay-test"  # consumed by no worker, so it stays to be seen
    with DeadLetters(client.redis) as letters:
        dead_letter(client.redis, queue=queue, reason="test", raw=b"payload", job_id=None)
        before = len(letters.entries())
        [newest] = letters.entries()[:1]
        assert (newest.queue, newest.bytes) == (queue, 7)
        assert letters.replay([0]) == 1
        assert len(letters.entries()) == before - 1
        assert letters.message(newest) is None
    assert client.redis.lrange(queue, 0, -1) == [b"payload"]
    assert client.redis.llen(keys.queue_bell(queue)) == 1  # an idle worker wakes for it


def test_a_job_past_its_deadline_is_not_computed_and_ends_expired(
        private_settings: Settings, tmp_path: Path) -> None:
    start, started = worker_starter(private_settings, tmp_path / "logs")
    try:
        start(models="digits")  # publishes the signature
        stop_processes(started)
        with Client(settings=private_settings) as client:
            late = client.submit("digits", np.zeros((3, 64), np.float32), deadline_s=0.2,
                                 session_id="deadlines")
            in_time = client.submit("digits", np.zeros((1, 64), np.float32), deadline_s=300)
            time.sleep(0.5)
            assert late.status() == "queued"
            start(models="digits")
            expired = late.result(timeout=30)
            assert in_time.result(timeout=30).status == "succeeded"
            assert expired.status == "expired"
            assert [s.status for s in expired.samples] == ["expired"] * 3
            assert expired.batch_ids == [] and expired.error is not None
            assert expired.error.code == ErrorCode.EXPIRED
            assert client.session_summary("deadlines").samples_expired == 3
    finally:
        stop_processes(started)


def test_a_full_queue_refuses_more_and_says_what_did_go(settings: Settings) -> None:
    import threading

    from inferfleet import QueueFullError

    model = "nobody_consumes_this"  # no worker serves it, so its queue only fills
    queue = keys.model_queue(model)
    one = np.zeros((1, 2), np.float32)
    with Client(settings=settings.model_copy(update={"max_queued_jobs": 5})) as client:
        for _ in range(5):
            client.submit(model, one, validate=False)
        with pytest.raises(QueueFullError, match="holds 5 jobs, its limit is 5") as full:
            client.submit(model, one, validate=False)
        assert full.value.submitted == [] and client.redis.llen(queue) == 5

        # A consumer makes room: a waiting submit goes in once there is.
        threading.Timer(0.3, lambda: client.redis.rpop(queue, 2)).start()
        job = client.submit(model, one, validate=False, wait_for_room_s=10)
        assert job.status() == "queued" and client.redis.llen(queue) == 4
        client.redis.delete(queue)

    with Client(settings=settings.model_copy(update={"max_queued_jobs": 100})) as client:
        # Chunks of 4, 8, 16, 32, then 64 jobs: the first four (60) fit, the next (124) not.
        with pytest.raises(QueueFullError) as halfway:
            client.submit_many(model, np.zeros((130, 2), np.float32), job_size=1,
                               validate=False)
        submitted = halfway.value.submitted
        assert len(submitted) == 60 and client.redis.llen(queue) == 60
        assert all(job.status() == "queued" for job in submitted[:3])
        client.redis.delete(queue)


def test_a_job_whose_worker_dies_each_time_ends_dead_lettered_after_max_deliveries(
        private_settings: Settings, tmp_path: Path, models_dir: Path) -> None:
    with slow_job(private_settings, tmp_path / "logs", models_dir, max_deliveries="2") as (
        client, job, start, started):
        assert client.redis.strlen(keys.job_inputs(job.id)) == slow_rows(models_dir).nbytes
        last_start = None
        for _ in range(2):  # deliveries 1 and 2: killed while running
            deadline = time.monotonic() + 60
            # Each delivery marks the job running anew, with its own start time.
            while (started_at := client.redis.hget(keys.job(job.id), "started_at")) in (
                    None, last_start):
                assert time.monotonic() < deadline, f"job stuck in {job.status()}"
                time.sleep(0.02)
            last_start = started_at
            os.kill(started[-1].pid, 9)
            started[-1].wait(10)
            start(models="digits_mlp", **SHORT_CLOCKS, max_deliveries="2")
        result = job.result(timeout=60)  # delivery 3: not computed
        assert result.status == "dead_lettered"
        assert result.error is not None
        assert result.error.code == ErrorCode.TOO_MANY_DELIVERIES
        assert "delivered 3 times without finishing" in result.error.message
        assert result.batch_ids == []
        with DeadLetters(client.redis) as letters:
            [entry] = [e for e in letters.entries() if "max_deliveries" in e.reason]
            copy = json.loads(letters.message(entry) or b"")
        assert copy["headers"]["task"] == keys.TASK_NAME
        assert copy["headers"]["id"] != job.id  # a replay is a new job
        replay_kwargs = json.loads(copy["body"])[1]
        assert replay_kwargs["deadline_at"] is None and replay_kwargs["notify"] is None
        # The job kept its arrays beside its message; the copy, under a new id, carries
        # them inline, and the original's input string went with its result.
        [replayed] = replay_kwargs["inputs"].values()
        assert "bytes_at" not in replayed and isinstance(replayed["data"], str)
        np.testing.assert_array_equal(decode_array(replayed), slow_rows(models_dir))
        assert not client.redis.exists(keys.job_inputs(job.id))
        after = client.submit("digits_mlp", slow_rows(models_dir)[:10])
        assert after.result(timeout=30).status == "succeeded"  # the worker serves on


def test_a_paused_redis_gives_a_clear_error_within_seconds_then_recovers(
        private_settings: Settings) -> None:
    from inferfleet.errors import BrokerError

    one = np.zeros((1, 2), np.float32)
    with Client(settings=private_settings.model_copy(update={"socket_timeout_s": 1.0})) as client:
        job = client.submit("paused_model", one, validate=False)
        pid = int(client.redis.info("server")["process_id"])
        os.kill(pid, signal.SIGSTOP)
        try:
            for call in (lambda: client.submit("paused_model", one, validate=False),
                         lambda: client.status(job.id),
                         lambda: client.result(job.id, timeout=30)):
                started = time.monotonic()
                with pytest.raises(BrokerError, match=r"did not answer within "
                                                      r"socket_timeout_s=1"):
                    call()
                assert time.monotonic() - started < 5
            asyncio.run(_async_calls_fail_clearly(client.settings, job.id))
        finally:
            os.kill(pid, signal.SIGCONT)
        assert client.submit("paused_model", one, validate=False).status() == "queued"


async def _async_calls_fail_clearly(settings: Settings, job_id: str) -> None:
    """AsyncClient maps a stalled Redis to the same BrokerError as Client (one core)."""
    from inferfleet import AsyncClient
    from inferfleet.errors import BrokerError

    async with AsyncClient(settings=settings) as client:
        for call in (lambda: client.status(job_id), lambda: client.result(job_id, timeout=30),
                     lambda: client.models(), lambda: client.session_summary("s")):
            started = time.monotonic()
            with pytest.raises(BrokerError, match=r"did not answer within socket_timeout_s=1"):
                await call()
            assert time.monotonic() - started < 5


def test_a_job_whose_message_was_lost_is_reaped_after_its_deadline(
        private_settings: Settings, tmp_path: Path) -> None:
    start, started = worker_starter(private_settings, tmp_path / "logs")
    try:
        start(models="digits", reaper_interval_s="0.2", job_time_limit_s="0.5")
        with Client(settings=private_settings) as client:
            lost = client.submit("never_served", np.zeros((4, 2), np.float32),
                                 deadline_s=0.3, session_id="reaped", validate=False)
            client.redis.delete(keys.model_queue("never_served"))  # the message is lost
            assert lost.status() == "queued"
            result = lost.result(timeout=30)
            assert result.status == "expired" and lost.status() == "expired"
            assert [s.status for s in result.samples] == ["expired"] * 4
            assert result.error is not None and "reaped" in result.error.message
            assert client.session_summary("reaped").samples_expired == 4
            assert client.redis.zcard(keys.DEADLINES) == 0
    finally:
        stop_processes(started)


def test_redis_killed_and_restarted_with_aof_loses_no_queued_job(
        tmp_path: Path, models_dir: Path) -> None:
    from inferfleet.embedded import EmbeddedRedis

    server = EmbeddedRedis(tmp_path / "redis", appendonly=True).start()
    settings = load_settings(redis_url=server.url, models_dir=models_dir)
    start, started = worker_starter(settings, tmp_path / "logs")
    try:
        start(models="digits")
        stop_processes(started)
        with Client(settings=settings) as client:
            jobs = client.submit_many("digits", np.zeros((40, 64), np.float32), job_size=2,
                                      session_id="aof")
        assert server.process is not None
        server.process.kill()  # SIGKILL: no shutdown save
        server.process.wait(10)
        server.start()  # same folder, same port: replays the AOF
        with Client(settings=settings) as client:
            assert client.redis.llen(keys.model_queue("digits")) == 20
            start(models="digits")
            results = client.results([job.id for job in jobs], timeout=60)
            assert [r.status for r in results] == ["succeeded"] * 20
            assert client.session_summary("aof").jobs_done == 20
    finally:
        stop_processes(started)
        server.stop()


def test_redis_killed_under_a_busy_worker_and_restarted_with_aof_expires_nothing_taken(
        tmp_path: Path, models_dir: Path) -> None:
    """The drill of issue 13: jobs with a 60 s deadline held by a live worker when Redis is
    killed were ended `expired` by the reaper, never computed."""
    from faultkit import holdout_rows, stored_results, tally, wait_until

    from inferfleet.embedded import EmbeddedRedis

    server = EmbeddedRedis(tmp_path / "redis", appendonly=True).start()
    settings = load_settings(redis_url=server.url, models_dir=models_dir)
    start, started = worker_starter(settings, tmp_path / "logs")
    try:
        start(models="digits_mlp")  # default settings
        with Client(settings=settings) as client:
            jobs = client.submit_many("digits_mlp", holdout_rows(models_dir, 100 * 256),
                                      job_size=256, deadline_s=60)
            ids = [job.id for job in jobs]
            wait_until(lambda: len(stored_results(client, ids)) >= 10, what="10 results")
        assert server.process is not None
        server.process.kill()  # SIGKILL, with messages taken and unacked
        server.process.wait(10)
        server.start()  # same folder, same port: replays the AOF
        restarted_at = time.monotonic()
        with Client(settings=settings) as client:
            results = client.results(ids, timeout=120)
            counts = tally(client, ids, recovery_s=time.monotonic() - restarted_at)
        assert [r.status for r in results] == ["succeeded"] * 100, counts
        assert (counts.lost, counts.overwrites) == (0, 0), counts
        print(counts)
    finally:
        stop_processes(started)
        server.stop()


def test_a_job_whose_result_cannot_be_stored_runs_again_rather_than_being_lost(
        private_settings: Settings, tmp_path: Path, models_dir: Path) -> None:
    with slow_job(private_settings, tmp_path / "logs", models_dir, socket_timeout_s="1") as (
        client, job, _, _):
        deadline = time.monotonic() + 60
        while job.status() != "running":
            assert time.monotonic() < deadline
            time.sleep(0.02)
        pid = int(client.redis.info("server")["process_id"])
        os.kill(pid, signal.SIGSTOP)  # paused while the worker computes and stores
        time.sleep(6)
        os.kill(pid, signal.SIGCONT)
        result = job.result(timeout=90)
        assert result.status == "succeeded"
        assert len(result.samples) == 100_000
        # It did fail to store, and came back: its record counts a redelivery.
        assert client.redis.hget(keys.job(job.id), "redeliveries") is not None


def test_messages_over_the_byte_limit_are_refused_by_clients_and_dead_lettered_by_workers(
        private_settings: Settings, tmp_path: Path) -> None:
    from inferfleet.errors import BadArgumentError

    start, started = worker_starter(private_settings, tmp_path / "logs")
    try:
        start(models="digits", max_message_bytes="200000")
        big = np.zeros((1000, 64), np.float32)  # 256 kB: kept beside a small message
        small = private_settings.model_copy(update={"max_message_bytes": 200_000})
        with Client(settings=small) as client:
            with pytest.raises(BadArgumentError, match="over max_message_bytes=200000"):
                client.submit("digits", big)
            assert client.redis.llen(keys.model_queue("digits")) == 0
        with Client(settings=private_settings) as client:  # a client with a bigger limit
            # Its input string is refused unread: the job fails, saying why.
            oversized = client.submit("digits", big, validate=False).result(timeout=30)
            assert oversized.status == "failed" and oversized.error is not None
            assert oversized.error.code == ErrorCode.TOO_LARGE
            assert "holds 256000 bytes, over max_message_bytes=200000" in \
                oversized.error.message
            assert not client.redis.exists(keys.job_inputs(oversized.job_id))
            # A message of the same bytes inline (any Celery client's) is dead-lettered.
            job_id = str(uuid.uuid4())
            plain_celery(private_settings).send_task(
                keys.TASK_NAME, task_id=job_id, queue=keys.model_queue("digits"),
                kwargs={"v": 1, "model": "digits", "inputs": encode_array(big)})
            assert client.result(job_id, timeout=30).status == "dead_lettered"
            assert client.submit("digits", big[:10]).result(timeout=30).status == "succeeded"
            with DeadLetters(client.redis) as letters:
                [entry] = letters.entries()
            assert entry.job_id == job_id and "over max_message_bytes" in entry.reason
    finally:
        stop_processes(started)
