"""Liveness: a worker that dies or stalls has its messages given back by the others
within seconds, under the default settings; a stalled one that wakes runs and acks none
of them; a warm shutdown counts no delivery; a deadline is decided when a job is taken.
Each test prints the tally RELIABILITY.md reports."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import orjson
import redis
from conftest import StartWorker
from faultkit import holdout_rows, stored_results, tally, wait_until

from inferfleet import Client, keys
from inferfleet.embedded import EmbeddedRedis
from inferfleet.ledger import redis_text
from inferfleet.liveness import (
    TAKEN_AT,
    Heartbeats,
    claim_lapsed,
    give_back,
    give_back_owed,
    holder_of,
    new_holder_id,
)
from inferfleet.settings import Settings
from inferfleet.take import TakeSource, take_command, take_order

#: The kill drill's target: every job terminal this long after `kill -9` (issue 13).
TERMINAL_WITHIN_S = 30.0


def held_by(client: Client, holder: str) -> int:
    return sum(1 for tag in client.redis.hkeys(keys.UNACKED)
               if redis_text(tag).startswith(f"{holder}."))


def holders(client: Client) -> set[str]:
    return {redis_text(h) for h in client.redis.zrange(keys.HOLDERS, 0, -1)}


def holders_of_unacked(client: Client) -> set[str]:
    return {holder_of(redis_text(tag)) for tag in client.redis.hkeys(keys.UNACKED)}


def test_a_killed_workers_jobs_are_all_terminal_within_seconds_under_default_settings(
        private_settings: Settings, models_dir: Path,
        start_private_worker: StartWorker) -> None:
    doomed = start_private_worker(models="digits_mlp")  # every other setting its default
    with Client(settings=private_settings) as client:
        jobs = client.submit_many("digits_mlp", holdout_rows(models_dir, 320 * 256),
                                  job_size=256)
        ids = [job.id for job in jobs]
        wait_until(lambda: len(stored_results(client, ids)) >= 20, what="20 results")
        assert client.redis.hlen(keys.UNACKED) > 0  # it holds messages as it dies
        first = stored_results(client, ids)
        os.killpg(doomed.pid, signal.SIGKILL)  # the whole process group, as an OOM kill
        doomed.wait(10)
        killed_at = time.monotonic()
        start_private_worker(models="digits_mlp")
        wait_until(lambda: tally(client, ids).lost == 0, timeout_s=TERMINAL_WITHIN_S,
                   what=f"every job terminal within {TERMINAL_WITHIN_S:g} s of the kill")
        counts = tally(client, ids, first_seen=first,
                       recovery_s=time.monotonic() - killed_at)
        assert counts.by_state == {"succeeded": 320}, counts
        assert (counts.lost, counts.overwrites) == (0, 0), counts
        assert counts.redeliveries >= 1, counts  # what it held came back, counted
        assert "running" not in {client.status(job_id) for job_id in ids}
        print(counts)


def test_a_paused_worker_that_wakes_finds_its_messages_gone_and_runs_and_acks_none(
        private_settings: Settings, models_dir: Path, tmp_path: Path,
        start_private_worker: StartWorker) -> None:
    quick = {"heartbeat_timeout_s": "2", "worker_concurrency": "2", "max_batch_rows": "256"}
    paused = start_private_worker(models="digits_mlp", **quick)
    with Client(settings=private_settings) as client:
        jobs = client.submit_many("digits_mlp", holdout_rows(models_dir, 40 * 2000),
                                  job_size=2000)
        ids = [job.id for job in jobs]
        wait_until(lambda: client.redis.hlen(keys.UNACKED) >= 2, what="messages held")
        [holder] = holders_of_unacked(client)
        os.kill(paused.pid, signal.SIGSTOP)
        try:
            held = held_by(client, holder)
            assert held >= 1
            stopped_at = time.monotonic()
            start_private_worker(models="digits_mlp", **quick)
            results = client.results(ids, timeout=120)
            recovery_s = time.monotonic() - stopped_at
            first = stored_results(client, ids)
            assert held_by(client, holder) == 0  # all given back
        finally:
            os.kill(paused.pid, signal.SIGCONT)
        wait_until(lambda: any(f"holder {holder} was found lapsed" in log.read_text()
                               for log in (tmp_path / "logs").glob("*.log")),
                   what="the woken worker to learn it lapsed")
        after = client.submit("digits_mlp", holdout_rows(models_dir, 10))
        assert after.result(timeout=60).status == "succeeded"  # both serve on
        counts = tally(client, ids, first_seen=first, recovery_s=recovery_s)
        assert [r.status for r in results] == ["succeeded"] * 40, counts
        assert (counts.lost, counts.overwrites) == (0, 0), counts
        assert paused.poll() is None
        assert holder not in holders(client)  # it took under a new id since
        print(counts, f"(held when paused: {held})")


def test_a_warm_shutdown_counts_no_delivery_for_what_it_puts_back(
        private_settings: Settings, models_dir: Path,
        start_private_worker: StartWorker) -> None:
    worker = start_private_worker(models="digits_mlp", worker_concurrency="2")
    with Client(settings=private_settings) as client:
        jobs = client.submit_many("digits_mlp", holdout_rows(models_dir, 60 * 2000),
                                  job_size=2000)
        ids = [job.id for job in jobs]
        wait_until(lambda: len(stored_results(client, ids)) >= 2, what="2 results")
        worker.send_signal(signal.SIGTERM)
        worker.wait(30)
        assert client.redis.hlen(keys.UNACKED) == 0  # finished, or put back at once
        start_private_worker(models="digits_mlp")
        results = client.results(ids, timeout=120)
        counts = tally(client, ids)
        assert [r.status for r in results] == ["succeeded"] * 60, counts
        assert (counts.lost, counts.redeliveries) == (0, 0), counts
        print(counts)


def test_a_job_taken_before_its_deadline_whose_worker_died_is_computed_not_reaped(
        private_settings: Settings, models_dir: Path,
        start_private_worker: StartWorker) -> None:
    clocks = {"heartbeat_timeout_s": "2", "job_time_limit_s": "1", "reaper_interval_s": "0.2",
              "visibility_timeout_s": "60"}
    doomed = start_private_worker(models="digits_mlp", **clocks)
    with Client(settings=private_settings) as client:
        job = client.submit("digits_mlp", holdout_rows(models_dir, 100_000), deadline_s=2.0)
        wait_until(lambda: job.status() == "running", what="the job to run")
        os.kill(doomed.pid, signal.SIGKILL)
        doomed.wait(10)
        start_private_worker(models="digits_mlp", **clocks)  # reaps every 0.2 s
        result = job.result(timeout=90)
        counts = tally(client, [job.id])
        assert result.status == "succeeded", (result.error, counts)  # past its deadline
        assert counts.redeliveries == 1, counts
        print(counts)


def test_a_lapsed_holder_is_claimed_once_and_its_records_given_back_once_each(
        redis_server: EmbeddedRedis) -> None:
    client = redis.Redis.from_url(redis_server.url)
    client.flushdb()
    beats = Heartbeats()
    holder = new_holder_id()
    beats.add(holder)
    assert beats.beat(client) == [] and beats.holds(f"{holder}.t.1")
    envelope = {"body": "[]", "headers": {"id": "job-1"},
                "properties": {"delivery_info": {"routing_key": "q"}}}
    for n in (1, 2):
        record = b"[" + orjson.dumps(envelope) + b', "", "inferfleet.q"]'
        client.hset(keys.UNACKED, f"{holder}.t.{n}", record)
        client.zadd(keys.UNACKED_INDEX, {f"{holder}.t.{n}": 1234.5})
    client.hdel(keys.UNACKED, f"{holder}.t.2")  # acked before the give-back: it wins
    client.zrem(keys.UNACKED_INDEX, f"{holder}.t.2")

    assert claim_lapsed(client, timeout_s=0.0) == [holder]
    assert claim_lapsed(client, timeout_s=0.0) == []  # claimed by one caller only
    assert beats.beat(client) == [holder] and not beats.holds(f"{holder}.t.1")
    assert give_back_owed(client) == 1
    assert give_back_owed(client) == 0 and not give_back(client, f"{holder}.t.1")
    [returned] = client.lrange("inferfleet.q", 0, -1)
    message = orjson.loads(returned)
    assert message["headers"]["redelivered"] is True
    assert message["properties"]["delivery_info"]["redelivered"] is True
    assert message["properties"][TAKEN_AT] == 1234.5  # its first take, for its deadline
    assert client.hlen(keys.UNACKED) == 0 and client.zcard(keys.UNACKED_INDEX) == 0
    assert client.llen(keys.queue_bell("inferfleet.q")) == 1  # an idle worker wakes


def test_a_message_given_back_returns_to_the_list_of_its_priority(
        redis_server: EmbeddedRedis) -> None:
    """A take records each message's route back as the list it was popped from, so that a
    `high` job whose worker died is given back at the head of `:high`, not of `normal`."""
    client = redis.Redis.from_url(redis_server.url)
    client.flushdb()
    queue = keys.model_queue("q")
    envelopes = {level: orjson.dumps({"body": "[]", "headers": {"id": f"job-{level}"},
                                      "properties": {}})
                 for level in keys.PRIORITIES}
    for level, envelope in envelopes.items():
        client.lpush(keys.priority_list(queue, level), envelope)
    tags = []
    for number in range(3):
        sources = [TakeSource(list_key, queue, acked=True)
                   for level in take_order(number * 10)  # each take begins with high
                   for list_key in [keys.priority_list(queue, level)]]
        _, popped, tag, _message = client.execute_command(*take_command(
            sources, most=1, holder=None, unacked=keys.UNACKED,
            unacked_index=keys.UNACKED_INDEX))
        tags.append((redis_text(popped), redis_text(tag)))
    assert [popped for popped, _ in tags] == keys.queue_lists(queue)  # high, normal, low
    for popped, tag in tags:
        assert give_back(client, tag)
        [returned] = client.lrange(popped, 0, -1)
        assert orjson.loads(returned)["headers"]["id"] == f"job-{keys.list_priority(popped)[1]}"
    assert client.llen(keys.queue_bell(queue)) == 1  # the queue's bell, for every level
    client.close()
