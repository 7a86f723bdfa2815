"""kombu's Redis transport with these changes, each measured or seen to matter.

- A message is taken from its queue and recorded as unacked in one atomic step (the
  take, `inferfleet.take`), not popped by BRPOP and recorded by the worker afterwards: a
  worker killed between the two lost the message for good (seen in the mid-batch kill
  test). The take gives each message its delivery tag, and its record the queue it came
  from as the way back (kombu's restore pushes it there again). The script cannot block,
  so each read
  waits on the queues' bells (`keys.queue_bell`, rung by inferfleet's producers, and kept
  ringing by the take while a queue holds messages) for at most `idle_poll_s`, with the
  take sent right behind the wait: one round trip per message, as BRPOP was. A message
  pushed by something that rings no bell (a plain Celery client on kombu's own transport,
  kombu's restore) waits at most `idle_poll_s` for an idle worker.
- A take pops up to `most_per_take` messages, no more than prefetch leaves room for nor
  than the consumer's `take_budget` wants; acks ride with the next take.
- Under a dense stream of small jobs, a take that emptied the queue is followed by a
  hold of a few milliseconds (`take.TakeLinger`), so that the jobs arriving meanwhile
  are taken, and batched, together: at 800 single-sample jobs/s, 13% less worker CPU a
  job, with no change to the latency at one job in flight or at 400 jobs/s.
- With the worker's `heartbeats`, a channel takes under a holder id of its own, so that
  when its worker dies or stalls the fleet gives its messages back within seconds
  (`inferfleet.liveness`); it acks nothing that was given back meanwhile, and a warm
  shutdown puts back what it never began without counting a delivery, what a take in
  flight brought after the consumer was cancelled included.
- One Redis client per channel instead of one per call: kombu's `conn_or_acquire` built a
  new `redis.Redis` (over the same pool) for every publish and every ack; in a worker that
  sends three task events and one ack per job that was ~9% of its CPU (py-spy).
- A message that breaks the task-message contract (`inferfleet.admission`) does not reach
  Celery: kombu decodes the envelope inside its event loop, so `LPUSH queue "{not json"`
  made a worker exit (and the popped message was lost), a body of `{"a": 1}` made every
  worker exit, and a pickle message was dropped by Celery with its id reading PENDING
  forever. Such messages go to the dead-letter list with the reason (and a terminal
  `dead_lettered` result for the job they name), and the worker goes on.

`_brpop_read` follows kombu 5.7's own; pyproject pins kombu below 5.8 for that reason.
Every kombu method this module overrides and every private name it uses is listed in
`inferfleet.upstream`, which a worker checks against the installed kombu as it starts.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import cached_property
from queue import Empty
from typing import Any

import redis
from kombu.asynchronous import get_event_loop
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from kombu.utils.encoding import bytes_to_str

from inferfleet import keys, upstream
from inferfleet.admission import Admitted, admit, job_id_of
from inferfleet.ledger import dead_letter
from inferfleet.liveness import TAKEN_AT, Heartbeats, give_back, new_holder_id
from inferfleet.take import (
    TAKEN_PRIORITY,
    TakeLinger,
    TakeSource,
    take_command,
    take_order,
)
from inferfleet.wire import packed

logger = logging.getLogger(__name__)

#: What `broker_transport` names to use this transport (over Sentinels: the second).
TRANSPORT_PATH = "inferfleet.transport:Transport"
SENTINEL_TRANSPORT_PATH = "inferfleet.transport:SentinelTransport"
#: Where an admitted envelope carries its decoded body to `Message` (never sent anywhere).
_DECODED_BODY = "_inferfleet_decoded_body"


class Message(virtual.Message):
    """kombu's message, with the body `admission.admit` decoded already: Celery would
    decode it again with the standard library's JSON."""

    def __init__(self, payload: dict[str, Any], channel: Any = None, **kwargs: Any) -> None:
        decoded = payload.pop(_DECODED_BODY, None)
        super().__init__(payload, channel, **kwargs)
        if decoded is not None:
            upstream.set_decoded_body(self, decoded)


class QoS(kombu_redis.QoS):
    """kombu's Redis QoS without its own round trips per message: the take records a
    message unacked already (kombu wrote the same record again, one pipeline per message:
    ~12% of a worker's CPU), and an ack is sent with the channel's next take."""

    channel: Channel

    def append(self, message: Any, delivery_tag: str) -> None:
        if delivery_tag in self.channel.recorded_by_take:
            virtual.QoS.append(self, message, delivery_tag)
        else:  # taken some other way (kombu's basic_get): record it as kombu does
            super().append(message, delivery_tag)

    def ack(self, delivery_tag: str) -> None:
        if self.channel.holds(delivery_tag):
            self.channel.acks_to_send.append(delivery_tag)
        else:  # given back by the fleet meanwhile: the record is no longer ours to remove
            logger.warning("not acking %s: its holder lapsed and the message was given back",
                           delivery_tag)
        virtual.QoS.ack(self, delivery_tag)

    def restore_unacked(self, client: Any = None) -> None:
        """Put back the messages this channel holds unacked as it closes: those whose jobs
        began marked redelivered (a delivery counted), the others as they came, so that a
        warm shutdown (SIGTERM) counts no delivery for what it never ran."""
        began = self.channel.job_began
        with self.channel.conn_or_acquire(client) as conn:
            for tag, message in list(upstream.delivered_unacked(self).items()):
                if not self.channel.holds(tag):
                    continue  # being given back by the fleet already
                ran = began is None or began(job_id_of(message.headers or {}))
                if not give_back(conn, tag, redelivered=ran):  # not of the take's form
                    self.restore_by_tag(tag, client=conn)
        upstream.delivered_unacked(self).clear()

    def restore_by_tag(self, tag: Any, client: Any = None, leftmost: bool = False) -> None:
        """kombu's restore, except that a record no message can be made of (the take
        records what it pops undecoded; a worker that died before dead-lettering a
        malformed message leaves it there) goes to the dead-letter list instead of
        raising in every sweep after it."""
        try:
            super().restore_by_tag(tag, client, leftmost)
        except (ValueError, TypeError, AttributeError) as exc:
            with self.channel.conn_or_acquire(client) as conn:
                record = conn.hget(self.unacked_key, tag)
                if record is not None:
                    logger.error("dead-lettered unacked record %s: %s", tag, exc)
                    dead_letter(conn, queue="", raw=record, job_id=None,
                                reason=f"an unacked record the restore could not read: {exc}")
                upstream.forget_unacked(self, tag, conn.pipeline()).execute()


class Channel(kombu_redis.Channel):
    """A kombu Redis channel that reuses one client, takes several messages per round
    trip, sends acks with its takes, and dead-letters unusable messages."""

    QoS = QoS
    Message = Message

    #: The task names a message on an acked queue must carry (unset: any message that is
    #: a kombu envelope); from the broker's transport options. Workers set it, so that
    #: every message they take is checked against the whole task-message contract.
    accepted_tasks: frozenset[str] | None = None
    #: The worker's heartbeats (`liveness.Heartbeats`); from the broker's transport
    #: options. With them the channel takes under a holder id of its own, so that its
    #: messages go back within seconds of its worker's death.
    heartbeats: Heartbeats | None = None
    #: Whether the job a message names began in this process (unset: assume so); from
    #: the broker's transport options.
    job_began: Callable[[str | None], bool] | None = None
    #: Messages above this many bytes are dead-lettered (0: no limit); set from the
    #: broker's transport options like kombu's own options.
    max_message_bytes = 0
    #: How many more messages the consumer wants now (unset: as many as prefetch allows);
    #: from the broker's transport options. A worker wants only enough to keep its
    #: batcher busy, so that the rest stays in Redis for whichever worker frees up first.
    take_budget: Callable[[], int] | None = None
    from_transport_options = (*kombu_redis.Channel.from_transport_options,
                              "max_message_bytes", "take_budget", "accepted_tasks",
                              "heartbeats", "job_began")

    #: How long a worker whose queues were empty waits on their bells before it looks
    #: again (the longest an idle worker takes to see a message that rang no bell, and
    #: the longest an ack waits to be sent).
    idle_poll_s = 0.2

    #: The most messages one take pops (fewer if the prefetch limit leaves less room).
    most_per_take = 16

    @cached_property
    def acks_to_send(self) -> deque[str]:
        """Delivery tags acked since the last take: they go to Redis with the next take
        (or at close), not one pipeline each. Until then a tag stays in the unacked hash;
        if this worker dies first, the sweep restores the message, and its redelivery
        finds the result stored and is acked without running again."""
        return deque()

    #: How many ack commands the take in flight carries (their replies follow its own).
    _acks_in_flight = 0

    @cached_property
    def recorded_by_take(self) -> set[str]:
        """Delivery tags the take recorded unacked, while they are being delivered."""
        return set()

    #: The holder id this channel takes under (None without heartbeats).
    holder_id: str | None = None

    def _renew_holder(self) -> None:
        """Take under a new holder id from now on (at the first take, and once the fleet
        found the old one lapsed: its messages are being given to other workers)."""
        assert self.heartbeats is not None
        if self.holder_id is not None:
            self.heartbeats.discard(self.holder_id)
        self.holder_id = new_holder_id()
        self.heartbeats.add(self.holder_id)

    def holds(self, tag: str) -> bool:
        """Whether the message taken under `tag` is still this channel's own (False once
        its holder lapsed: it is being given back, and must not be acked)."""
        return self.heartbeats is None or self.heartbeats.holds(tag)

    @cached_property
    def _shared_client(self) -> Any:
        return upstream.new_client(self)

    @cached_property
    def _no_ack_queues(self) -> set[str]:
        """Queues consumed without acks (Celery's control replies): nothing to record."""
        return set()

    def basic_consume(self, queue: str, no_ack: bool = False, *args: Any,
                      **kwargs: Any) -> Any:
        (self._no_ack_queues.add if no_ack else self._no_ack_queues.discard)(queue)
        return super().basic_consume(queue, no_ack, *args, **kwargs)

    def _put(self, queue: str, message: Any, **kwargs: Any) -> None:
        """kombu's publish (control replies, Celery clients on this transport), ringing
        the queue's bell so that an idle consumer takes it at once."""
        super()._put(queue, message, **kwargs)
        bell = keys.queue_bell(queue)
        # Bounded, and gone an hour after the last ring (reply queues come and go).
        self._shared_client.pipeline(transaction=False).lpush(bell, "1").ltrim(
            bell, 0, 255).expire(bell, 3600).execute()

    @cached_property
    def linger(self) -> TakeLinger:
        """When to hold the next take for more messages to arrive (`take.TakeLinger`)."""
        return TakeLinger()

    #: Until when (monotonic) the next take is held; see `_took`.
    _linger_until = 0.0
    #: The most messages the take in flight may bring.
    _take_most = 0

    def _took(self, count: int) -> None:
        """A take's reply brought `count` messages: hold the next take a moment if
        `take.TakeLinger` says so. Decided here, as the event loop handles the reply,
        and not in `_brpop_start`: the loop reads its timers for the next wait before it
        calls that, so a timer set there woke nothing (a 0.3 s hold lasted 1 s)."""
        now = time.monotonic()
        self.linger.took(count, most=self._take_most, now=now)
        wait_s = self.linger.next_wait_s()
        hub = get_event_loop() if wait_s > 0 else None
        if hub is not None:  # without an event loop to wake (a plain consumer), no hold
            self._linger_until = now + wait_s
            hub.call_later(wait_s, _linger_over)

    def _brpop_start(self, timeout: float | None = None) -> None:
        if time.monotonic() < self._linger_until:
            return  # held: the event loop's timer brings it back here (`_took`)
        queues = upstream.queues_in_turn(self, len(self.active_queues))
        if not queues:
            return
        # Without a prefetch limit (a plain kombu consumer), one per take, as kombu does.
        room = self.qos.can_consume_max_estimate() or 1
        if self.take_budget is not None:
            # Asked here, before a take is sent, never through QoS.can_consume: kombu
            # leaves a reply unread while that says no, and a take's messages are out of
            # their queue already (seen: 64 jobs stranded in `unacked`).
            wanted = self.take_budget()
            if wanted <= 0:
                return  # busy enough; asked again on the event loop's next turn
            room = min(room, wanted)
        most = self._take_most = max(1, min(self.most_per_take, room))
        if self.heartbeats is not None and self.holder_id is None:
            self._renew_holder()  # channels that never take (events, control) hold nothing
        self._takes += 1
        sources = [TakeSource(list_key, queue, acked=queue not in self._no_ack_queues)
                   for level in take_order(self._takes) for queue in queues
                   for list_key in self._lists_of(queue, level)]
        wait = ["BRPOP", *(keys.queue_bell(queue) for queue in queues), self.idle_poll_s]
        take = take_command(sources, most=most, holder=self.holder_id,
                            unacked=self.unacked_key, unacked_index=self.unacked_index_key)
        # A wait for a ring, the take right behind it, then the acks since the last take,
        # in one round trip: Redis runs the take as soon as the wait ends (at once while
        # a queue holds messages: the take keeps its bell ringing). The acks go last so
        # that their replies cannot wake the event loop into a blocking read of the wait.
        commands = [wait, take, *self._ack_commands()]
        self._acks_in_flight = len(commands) - 2
        connection = self.client.connection
        upstream.take_sent(self, connection)
        # Packed by hiredis (`wire.packed`): redis-py's `pack_commands` passes each of the
        # take's ~30 arguments through its Python encoder first.
        connection.send_packed_command(packed(commands))

    #: Takes sent so far (they cycle through the priorities' turns: `take_order`).
    _takes = 0

    def _lists_of(self, queue: str, level: str) -> list[str]:
        """The lists of one priority of `queue`: inferfleet's own for `high` and `low`;
        for `normal`, the queue and kombu's priority lists of it (where a plain Celery
        client's `priority=` puts a message, 0 first, as on any kombu Redis queue)."""
        if level != "normal":
            return [keys.priority_list(queue, level)]
        return [upstream.priority_list(self, queue, pri) for pri in self.priority_steps]

    def _ack_commands(self) -> list[list[Any]]:
        tags = []
        while self.acks_to_send:
            tags.append(self.acks_to_send.popleft())
        if not tags:
            return []
        return [["ZREM", self.unacked_index_key, *tags], ["HDEL", self.unacked_key, *tags]]

    def close(self) -> None:
        # Sent now, or kombu's close (which restores only what was never acked) would
        # leave them for the sweep to deliver again.
        if (commands := self._ack_commands()) and not self.closed:
            try:
                pipe = self._shared_client.pipeline(transaction=False)
                for command in commands:
                    pipe.execute_command(*command)
                pipe.execute()
            except (redis.RedisError, OSError):  # closing anyway: kombu's close must run
                logger.warning("could not send %d ack(s) at close; their messages come "
                               "back and are acked without running again", len(commands[0]) - 2)
        try:
            super().close()
        finally:
            # No more beats, even when kombu's close raised (its restore could not reach
            # Redis): whatever it could not put back is given back by the fleet once the
            # beat lapses. A holder still beating would keep them until the visibility
            # timeout (seen in the failover drill: a job stuck past its test's wait).
            if self.heartbeats is not None and self.holder_id is not None:
                self.heartbeats.discard(self.holder_id)

    @contextmanager
    def conn_or_acquire(self, client: Any = None) -> Iterator[Any]:
        yield client or self._shared_client

    def _brpop_read(self, **options: Any) -> bool:
        try:
            reply = self._take_reply(**options)
            if not reply or reply == b"lapsed":
                if reply == b"lapsed":
                    self._renew_holder()
                self._took(0)
                raise Empty()
            dest, popped, *taken = reply
            taken_at = time.time()
            self._took(len(taken) // 2)
            dest = bytes_to_str(dest)  # the queue, whichever of its lists the take popped
            priority = keys.list_priority(bytes_to_str(popped))[1]
            upstream.rotate_queues(self, dest)
            for raw_tag, item in zip(taken[::2], taken[1::2], strict=True):
                tag = bytes_to_str(raw_tag) or None
                message = self._usable(dest, item, tag)
                if message is None:
                    continue
                if tag is not None:  # the tag it is recorded under, whatever it came with
                    message["properties"]["delivery_tag"] = tag
                    # A message given back keeps the time of its first take: its deadline
                    # is checked against that.
                    message["properties"].setdefault(TAKEN_AT, taken_at)
                    message["properties"][TAKEN_PRIORITY] = priority
                    self.recorded_by_take.add(tag)
                try:
                    upstream.deliver(self, message, dest)
                finally:  # QoS.append saw it during the delivery, or never will
                    if tag is not None:
                        self.recorded_by_take.discard(tag)
            return True
        finally:
            upstream.take_read(self)

    def _take_reply(self, **options: Any) -> Any:
        """The reply of the take sent by `_brpop_start` (after the wait's, before the
        acks'); raises Empty for a take a full Redis refused."""
        acks, self._acks_in_flight = self._acks_in_flight, 0
        try:
            _, reply, *_ = self._read_replies(["BRPOP", "EVAL", *["ACK"] * acks], **options)
        except self.connection_errors:  # type: ignore[attr-defined]  # set in kombu's __init__
            # Disconnect, so that the next iteration reconnects (as kombu does).
            self.client.connection.disconnect()
            raise
        except redis.exceptions.OutOfMemoryError:
            # Refused before it ran: the messages stay in their queue. (It used to end the
            # worker: "Unrecoverable error: OutOfMemoryError".)
            self._wait_for_room()
            raise Empty() from None
        if self._full_since is not None:
            logger.warning("Redis has room again after %.1f s; taking messages",
                           time.monotonic() - self._full_since)
            self._full_since = None
        return reply

    #: Since when Redis has refused takes for want of memory (None: it has not).
    _full_since: float | None = None
    #: How long a worker waits before it tries to take again from a full Redis.
    full_backoff_s = 0.5

    def _wait_for_room(self) -> None:
        if self._full_since is None:
            self._full_since = time.monotonic()
            logger.warning("Redis is full (at its maxmemory, noeviction): taking nothing "
                           "until it has room; held messages stay held")
        time.sleep(self.full_backoff_s)  # Redis refuses what this loop would do anyway

    def _read_replies(self, commands: list[str], **options: Any) -> list[Any]:
        """One reply per command sent; an error reply (Redis out of memory, say) is
        raised only once every reply is read, so that the next read starts in step."""
        replies, error = [], None
        for command in commands:
            try:
                replies.append(self.client.parse_response(self.client.connection, command,
                                                          **options))
            except redis.ResponseError as exc:
                replies.append(None)
                error = error or exc
        if error is not None:
            raise error
        return replies

    def _usable(self, queue: str, item: bytes, tag: str | None) -> dict[str, Any] | None:
        """The decoded envelope (carrying its decoded body for `Message`), or None after
        dead-lettering a message no worker can take (and acking `tag`, its unacked
        record, so that it is never restored)."""
        verdict = admit(item, max_bytes=self.max_message_bytes,
                        tasks=None if queue in self._no_ack_queues else self.accepted_tasks)
        if isinstance(verdict, Admitted):
            if verdict.body is not None:
                verdict.envelope[_DECODED_BODY] = verdict.body
            return verdict.envelope
        try:
            self.dead_letter(queue=queue, reason=verdict.reason, raw=item,
                             job_id=verdict.job_id)
        except redis.RedisError as exc:  # left held: given back once this channel is gone
            logger.error("could not dead-letter a message from %s (%s); it stays held",
                         queue, exc)
            return None
        if tag is not None:
            self.qos.ack(tag)
        return None

    def dead_letter(self, *, queue: str, reason: str, raw: bytes | str,
                    job_id: str | None) -> None:
        """Keep a message no worker can take on the dead-letter list (see
        `ledger.dead_letter`)."""
        logger.error("dead-lettered a message from %s: %s", queue, reason)
        dead_letter(self._shared_client, queue=queue, reason=reason, raw=raw, job_id=job_id)


def _linger_over() -> None:
    """The timer that ends a held take: its only work is to wake the event loop."""


class _UnconsumedGoBackUncounted(virtual.Transport):
    """A transport whose messages taken for a queue nobody consumes any more go back
    as they came, with no delivery counted.

    A warm shutdown cancels the task consumer while a take may be in flight; what that
    take pops arrives for a queue with no consumer. kombu requeues it through its
    restore, which marks it redelivered: the next worker counted a delivery for a job
    nothing ran (seen about once in 40 warm shutdowns under load).
    """

    def _reject_inbound_message(self, raw_message: dict[str, Any]) -> None:
        tag = (raw_message.get("properties") or {}).get("delivery_tag")
        for channel in self.channels or []:
            if isinstance(channel, Channel) and tag in channel.recorded_by_take:
                with channel.conn_or_acquire() as conn:
                    if give_back(conn, tag, redelivered=False):
                        return
        super()._reject_inbound_message(raw_message)


class Transport(_UnconsumedGoBackUncounted, kombu_redis.Transport):
    """kombu's Redis transport with `Channel` above."""

    Channel = Channel


class SentinelChannel(Channel, kombu_redis.SentinelChannel):
    """`Channel`, on the primary that kombu's Sentinel channel finds (and finds again
    after a failover)."""

    from_transport_options = tuple(dict.fromkeys(
        (*Channel.from_transport_options, *kombu_redis.SentinelChannel.from_transport_options)))


class SentinelTransport(_UnconsumedGoBackUncounted, kombu_redis.SentinelTransport):
    """kombu's Sentinel transport with `SentinelChannel` above."""

    Channel = SentinelChannel
