"""Results written in groups against a real server: each caller learns its own outcome,
a write-once refusal included, and a server that lost its scripts still stores; running
marks are sent only for jobs still running when they go."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Sequence

import redis

from inferfleet import keys
from inferfleet.embedded import EmbeddedRedis
from inferfleet.errors import ErrorCode
from inferfleet.ledger import Ledger
from inferfleet.schemas import WireResult
from inferfleet.worker.housekeeping import Housekeeping
from inferfleet.worker.jobs import failed_result
from inferfleet.worker.marks import RunningMarks
from inferfleet.worker.writer import GroupWriter


def _result(job_id: str) -> WireResult:
    return failed_result(job_id, {"model": "digits"}, ErrorCode.BAD_REQUEST, "a test result")


def test_threads_storing_at_once_share_writes_and_each_learns_its_outcome(
        redis_server: EmbeddedRedis) -> None:
    client = redis.Redis.from_url(redis_server.url)
    ledger = Ledger(client, ttl_s=60)
    already = str(uuid.uuid4())
    assert ledger.store_result(_result(already))
    group_sizes: list[int] = []
    gate = threading.Event()

    def store_many(results: Sequence[tuple[WireResult, str | None]]) -> list[bool]:
        gate.wait(5)  # the first write lasts until every thread has queued behind it
        group_sizes.append(len(results))
        return ledger.store_results(results)

    writer = GroupWriter(store_many)
    ids = [already, *(str(uuid.uuid4()) for _ in range(19))]
    outcomes: dict[str, bool] = {}
    threads = [threading.Thread(target=lambda i=i: outcomes.update({i: writer.store(_result(i))}))
               for i in ids]
    for thread in threads:
        thread.start()
    while len(writer._queue) < len(ids) - 1:  # one writes, the rest queue
        threading.Event().wait(0.01)
    gate.set()
    for thread in threads:
        thread.join(10)
    assert outcomes == {i: i != already for i in ids}
    assert sorted(group_sizes) == [1, 19]  # two round trips for twenty results
    assert all(client.exists(keys.result(i)) for i in ids)


def test_a_failed_write_raises_in_every_thread_it_carried(redis_server: EmbeddedRedis) -> None:
    def broken(results: Sequence[tuple[WireResult, str | None]]) -> list[bool]:
        raise redis.ConnectionError("gone")

    writer = GroupWriter(broken)
    try:
        writer.store(_result(str(uuid.uuid4())))
    except redis.ConnectionError as exc:
        assert str(exc) == "gone"
    else:
        raise AssertionError("the write's error was swallowed")


def test_a_server_that_lost_its_scripts_still_stores_once(redis_server: EmbeddedRedis) -> None:
    client = redis.Redis.from_url(redis_server.url)
    ledger = Ledger(client, ttl_s=60)
    first, second = str(uuid.uuid4()), str(uuid.uuid4())
    assert ledger.store_results([(_result(first), None)]) == [True]
    client.script_flush()
    assert ledger.store_results([(_result(first), None), (_result(second), None)]) == \
        [False, True]


def test_a_job_that_ends_before_its_running_mark_is_sent_is_never_marked(
        redis_server: EmbeddedRedis) -> None:
    client = redis.Redis.from_url(redis_server.url)
    housekeeping = Housekeeping().start()
    marks = RunningMarks(Ledger(client, ttl_s=60), housekeeping)
    quick, slow = str(uuid.uuid4()), str(uuid.uuid4())
    marks.mark(quick)
    marks.mark(slow)
    marks.done(quick)  # ended within RunningMarks.GATHER_S
    deadline = time.monotonic() + 5
    while client.hget(keys.job(slow), "state") is None:
        assert time.monotonic() < deadline, "the running job was never marked"
        time.sleep(0.01)
    assert client.hget(keys.job(slow), "state") == b"running"
    assert client.hget(keys.job(quick), "state") is None
    housekeeping.stop()
    housekeeping.join(5)
    assert not housekeeping.running
