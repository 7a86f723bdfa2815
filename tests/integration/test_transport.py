"""inferfleet's kombu transport against a real server: a take pops several messages (as
many as the prefetch limit leaves room for) and records each unacked in the same step;
acks go to Redis with the next take, or at close, never lost."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from kombu import Connection, Consumer, Exchange, Message, Producer, Queue
from kombu.asynchronous import Hub, set_event_loop

from inferfleet import keys
from inferfleet.embedded import EmbeddedRedis
from inferfleet.liveness import Heartbeats
from inferfleet.take import TakeLinger
from inferfleet.transport import TRANSPORT_PATH

QUEUE = Queue("transport-test", Exchange("transport-test", type="direct"),
              routing_key="transport-test")


@pytest.fixture
def connection(redis_server: EmbeddedRedis) -> Iterator[Connection]:
    with Connection(redis_server.url, transport=TRANSPORT_PATH) as conn:
        channel = conn.default_channel
        channel.client.delete("unacked", "unacked_index", QUEUE.name)
        yield conn


def _publish(connection: Connection, n: int) -> None:
    producer = Producer(connection.channel(), exchange=QUEUE.exchange,
                        routing_key=QUEUE.routing_key, serializer="json")
    for i in range(n):
        producer.publish({"n": i}, declare=[QUEUE])


def _drain_once(connection: Connection, received: list[Message]) -> None:
    connection.drain_events(timeout=2)
    assert received, "nothing delivered"


def test_a_take_budget_limits_takes_below_the_prefetch_limit(
        redis_server: EmbeddedRedis) -> None:
    wanted = [3]
    options = {"take_budget": lambda: wanted[0]}
    with Connection(redis_server.url, transport=TRANSPORT_PATH,
                    transport_options=options) as connection:
        connection.default_channel.client.delete("unacked", "unacked_index", QUEUE.name)
        _publish(connection, 8)
        with _consuming(connection, prefetch=10) as received:
            _drain_once(connection, received)
            assert len(received) == 3
            wanted[0] = 0  # busy enough: nothing more is taken
            with pytest.raises(TimeoutError):
                connection.drain_events(timeout=0.5)
            assert len(received) == 3
            assert connection.default_channel.client.llen(QUEUE.name) == 5
            wanted[0] = 10
            _drain_once(connection, received)
            assert len(received) == 8


@contextmanager
def _consuming(connection: Connection, prefetch: int) -> Iterator[list[Message]]:
    """Consume QUEUE with this prefetch limit; yields the list messages land in."""
    received: list[Message] = []
    with Consumer(connection.default_channel, [QUEUE], accept=["json"],
                  callbacks=[lambda _, m: received.append(m)], prefetch_count=prefetch):
        yield received


def test_one_take_pops_what_the_prefetch_limit_allows_and_records_each_unacked(
        connection: Connection) -> None:
    _publish(connection, 12)
    channel = connection.default_channel
    with _consuming(connection, prefetch=5) as received:
        _drain_once(connection, received)
        assert [m.decode()["n"] for m in received] == [0, 1, 2, 3, 4]
        assert channel.client.hlen("unacked") == 5
        assert channel.client.llen(QUEUE.name) == 7


def test_acks_go_with_the_next_take_and_at_close(connection: Connection,
                                                 redis_server: EmbeddedRedis) -> None:
    _publish(connection, 4)
    channel = connection.default_channel
    with _consuming(connection, prefetch=2) as received:
        _drain_once(connection, received)
        for message in received:
            message.ack()
        assert channel.client.hlen("unacked") == 2  # not sent yet
        received.clear()
        _drain_once(connection, received)  # the next take carries them
        assert channel.client.hlen("unacked") == 2  # only the two just taken
        for message in received:
            message.ack()
    connection.close()  # sends the last acks
    with Connection(redis_server.url, transport=TRANSPORT_PATH) as fresh:
        client = fresh.default_channel.client
        assert (client.hlen("unacked"), client.zcard("unacked_index")) == (0, 0)
        assert client.llen(QUEUE.name) == 0


def test_a_message_got_without_the_take_is_still_recorded_unacked(
        connection: Connection) -> None:
    _publish(connection, 1)
    channel = connection.default_channel
    message = channel.basic_get(QUEUE.name)  # kombu's own pop, not the take
    assert message is not None
    assert channel.client.hlen("unacked") == 1
    message.ack()


def test_a_taken_message_left_unacked_goes_back_to_its_queue_marked_redelivered(
        connection: Connection, redis_server: EmbeddedRedis) -> None:
    _publish(connection, 2)
    channel = connection.default_channel
    with _consuming(connection, prefetch=2) as received:
        _drain_once(connection, received)
        tags = {m.delivery_tag for m in received}
        assert tags == {tag.decode() for tag in channel.client.hkeys("unacked")}
        received[0].ack()
        for tag in tags - {received[0].delivery_tag}:
            channel.qos.restore_by_tag(tag)  # what the visibility sweep does
    assert (channel.client.hlen("unacked"), channel.client.llen(QUEUE.name)) == (1, 1)
    with Connection(redis_server.url, transport=TRANSPORT_PATH) as other_worker, \
            _consuming(other_worker, prefetch=1) as again:
        _drain_once(other_worker, again)
        assert again[0].decode() == received[1].decode()
        assert again[0].delivery_info["redelivered"] is True
        assert again[0].delivery_tag not in tags  # each take gives a fresh tag


def test_what_a_take_brings_for_a_queue_no_longer_consumed_goes_back_uncounted(
        connection: Connection, redis_server: EmbeddedRedis) -> None:
    # A warm shutdown cancels the consumer while a take is in flight: what it pops
    # arrives for a queue nobody consumes. Nothing ran it, so no delivery is counted.
    _publish(connection, 2)
    channel = connection.default_channel
    with _consuming(connection, prefetch=2) as received:
        del connection.transport._callbacks[QUEUE.name]  # the cancel, racing the take
        with contextlib.suppress(TimeoutError):
            connection.drain_events(timeout=1)
        assert received == []
        assert (channel.client.hlen("unacked"), channel.client.llen(QUEUE.name)) == (0, 2)
    with Connection(redis_server.url, transport=TRANSPORT_PATH) as other_worker, \
            _consuming(other_worker, prefetch=2) as again:
        _drain_once(other_worker, again)
        assert sorted(m.decode()["n"] for m in again) == [0, 1]
        assert not any(m.delivery_info.get("redelivered") for m in again)


def test_an_unacked_record_of_a_malformed_message_is_dead_lettered_not_restored(
        connection: Connection) -> None:
    # What a worker killed between a take and the dead-lettering of what it took leaves.
    channel = connection.default_channel
    client = channel.client
    client.delete(keys.DEAD_LETTERS)
    client.hset("unacked", "garbage-tag", '[{not json, "", "transport-test"]')
    client.zadd("unacked_index", {"garbage-tag": 0})
    channel.qos.restore_by_tag("garbage-tag")
    assert (client.hlen("unacked"), client.zcard("unacked_index")) == (0, 0)
    assert client.llen(QUEUE.name) == 0
    assert b"could not read" in client.lindex(keys.DEAD_LETTERS, 0)


def test_a_channel_closed_while_redis_is_down_stops_beating_for_its_holder(
        tmp_path: Path) -> None:
    # Its close cannot put back what it holds; unless its beats stop, the fleet never
    # gives those messages back (seen in the failover drill: a job stuck for good).
    server = EmbeddedRedis(tmp_path / "redis", appendonly=False).start()
    heartbeats = Heartbeats()
    connection = Connection(server.url, transport=TRANSPORT_PATH,
                            transport_options={"heartbeats": heartbeats})
    try:
        _publish(connection, 2)
        with _consuming(connection, prefetch=10) as received:
            _drain_once(connection, received)
            tag = received[0].delivery_tag
            assert heartbeats.holds(tag)
            server.stop()
            with contextlib.suppress(Exception):  # its restore cannot reach Redis
                connection.default_channel.close()
        assert not heartbeats.holds(tag)
    finally:
        server.stop()
        with contextlib.suppress(Exception):
            connection.release()


def test_a_take_that_emptied_a_busy_queue_is_held_and_then_brings_what_came_meanwhile(
        connection: Connection) -> None:
    """`TakeLinger` in kombu's event loop (the worker's): the hold ends by the loop's own
    timer, and the messages pushed during it come in one take. (A hold of 0.3 s, and a
    stream any two takes qualify as, so that nothing races the clock.)"""
    channel = connection.default_channel
    channel.linger = TakeLinger(most_s=0.3, expected=1e-6)
    hub = Hub()
    set_event_loop(hub)
    try:
        connection.register_with_event_loop(hub)
        with _consuming(connection, prefetch=16) as received:
            for n in (1, 2):  # two takes of one message each: a stream, the queue emptied
                _publish(connection, 1)
                _run_until(hub, lambda n=n: len(received) == n)
            held_from = time.monotonic()
            _publish(connection, 3)
            _run_until(hub, lambda: len(received) == 5)
            waited = time.monotonic() - held_from
        tags = [m.delivery_tag.rpartition(".")[0] for m in received[2:]]
        assert len(set(tags)) == 1, tags  # one take brought all three
        assert 0.25 <= waited < 0.9, waited  # without the loop's timer it took over 1 s
    finally:
        set_event_loop(None)
        hub.close()


def _run_until(hub: Hub, done: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not done():
        assert time.monotonic() < deadline, "the event loop delivered nothing in time"
        hub.run_once()
