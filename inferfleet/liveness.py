"""Worker liveness: a dead worker's messages go back to their queues within seconds.

kombu's Redis transport keeps every taken, unacked message in one hash and gives it back
only once its visibility timeout passes (900 s by default, so that no long job is taken
twice): after a `kill -9`, a drill found 34 messages stranded for 15 minutes. Here every
channel that takes messages is a *holder* with an id of its own, the prefix of every
delivery tag it takes under, and a heartbeat in Redis (`keys.HOLDERS`, scored by Redis's
clock, so worker clocks need not agree). The take registers its holder; each worker
beats for its live holders every `heartbeat_timeout_s / 5`. A holder whose beat lapsed
for `heartbeat_timeout_s` is claimed by one worker in one atomic step, marked lapsed (a
lapsed holder can take nothing more, and renews its id when it learns of it), and its
records are pushed back to the head of their queues, marked redelivered, so that each
counts as a delivery. The visibility timeout stays as the backstop.

A worker that was only paused finds its messages gone: `Heartbeats.holds` says no for
its old tags, and the worker neither runs nor acks those (their messages run elsewhere).

Records are immutable once the take writes them (each tag is new), so a give-back reads
one, rewrites its message in Python (orjson keeps every number as it was; Lua's cjson
would round floats to 14 digits) and moves it in a script only if the record is still
there: an ack in between wins, and nothing is given back twice.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import threading
import uuid
from typing import Any

import orjson
import redis

from inferfleet import keys

logger = logging.getLogger(__name__)

#: How long a lapsed holder's mark stays (a holder paused longer than this would take
#: under its old id again; it is one day, the default result TTL).
LAPSED_MARK_TTL_S = 86_400
#: How long one worker may take to give a holder's messages back before another may.
GIVE_BACK_LOCK_S = 30

# KEYS: holders, then each id's lapsed mark.  ARGV: the ids.  Beats each id (Redis's
# clock) unless it was marked lapsed; returns the ids found lapsed. It runs even when
# Redis is at its maxmemory (a beat grows nothing), or a full Redis would make every
# live worker look dead once it has room again.
_BEAT = """#!lua flags=allow-oom
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local lapsed = {}
for i, id in ipairs(ARGV) do
  if redis.call('EXISTS', KEYS[1 + i]) == 1 then lapsed[#lapsed + 1] = id
  else redis.call('ZADD', KEYS[1], now, id) end
end
return lapsed
"""

# KEYS: holders, lapsed holders.  ARGV: heartbeat timeout (s), most to claim, the key
# prefix of lapsed marks, their TTL.  Claims the holders whose beat lapsed: out of the
# heartbeat set, marked lapsed (their takes refuse from now on), into the set of holders
# whose messages are owed back. Only one caller claims each.
_CLAIM = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[1]),
                       'LIMIT', 0, tonumber(ARGV[2]))
for _, id in ipairs(ids) do
  redis.call('ZREM', KEYS[1], id)
  redis.call('SET', ARGV[3] .. id, '1', 'EX', ARGV[4])
  redis.call('SADD', KEYS[2], id)
end
return ids
"""

# KEYS: unacked hash, unacked index, the queue's list (of the message's priority), the
# queue's bell, the job's record.  ARGV: tag,
# message, first take time ('' if unknown).  Moves the message to the head of its queue
# in place of the record, if the record is still there, and notes on the job's record
# (if it has one) when it was first taken, for the reaper.
_GIVE_BACK = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('RPUSH', KEYS[3], ARGV[2])
if redis.call('LLEN', KEYS[4]) == 0 then redis.call('LPUSH', KEYS[4], '1') end
if ARGV[3] ~= '' and redis.call('EXISTS', KEYS[5]) == 1 then
  redis.call('HSETNX', KEYS[5], 'taken_at', ARGV[3])
end
return 1
"""

_UNSAFE = re.compile(r"[^A-Za-z0-9-]")


def new_holder_id() -> str:
    """A fresh holder id: this host and process, and a random part (no '.', which ends
    the id inside a delivery tag, and nothing a Redis MATCH pattern would read)."""
    host = _UNSAFE.sub("-", socket.gethostname())[:32]
    return f"{host}-{os.getpid()}-{uuid.uuid4().hex[:12]}"


def holder_of(tag: str) -> str:
    """The holder id a delivery tag was taken under ('' for tags of other forms)."""
    holder, dot, _ = tag.partition(".")
    return holder if dot else ""


class Heartbeats:
    """The holder ids of this process's live channels: beaten together, and asked whether
    a delivery tag is still this process's own. Safe to share between threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._live: set[str] = set()

    def add(self, holder_id: str) -> None:
        with self._lock:
            self._live.add(holder_id)

    def discard(self, holder_id: str) -> None:
        """Stop beating for a holder (its channel closed): if any of its records are
        left, they are given back once its beat lapses."""
        with self._lock:
            self._live.discard(holder_id)

    def holds(self, tag: str) -> bool:
        """Whether the message taken under `tag` is still this process's own: True for
        tags not taken under a holder (kombu's own), False once its holder lapsed."""
        holder = holder_of(tag)
        return not holder or holder in self._live

    def beat(self, client: redis.Redis) -> list[str]:
        """Beat for every live holder; the ones the fleet found lapsed (dropped here: their
        channels renew their ids at their next take).

        Raises:
            redis.RedisError: if Redis cannot be reached.
        """
        with self._lock:
            ids = sorted(self._live)
        if not ids:
            return []
        lapsed = [_text(i) for i in client.eval(
            _BEAT, 1 + len(ids), keys.HOLDERS, *(keys.holder_lapsed(i) for i in ids), *ids)]
        for holder_id in lapsed:
            logger.error("holder %s was found lapsed (this worker stalled longer than the "
                         "heartbeat timeout); its messages were given to other workers",
                         holder_id)
            self.discard(holder_id)
        return lapsed


def claim_lapsed(client: redis.Redis, *, timeout_s: float, limit: int = 100) -> list[str]:
    """Claim the holders whose heartbeat lapsed `timeout_s` ago (each by one caller only);
    their messages are then owed back (`give_back_owed`)."""
    claimed = client.eval(_CLAIM, 2, keys.HOLDERS, keys.LAPSED_HOLDERS, timeout_s, limit,
                          keys.holder_lapsed(""), LAPSED_MARK_TTL_S)
    return [_text(i) for i in claimed]


def give_back_owed(client: redis.Redis) -> int:
    """Give back the messages of every lapsed holder whose give-back no other worker is
    doing (one that died half-way is taken over once its lock expires); how many."""
    given = 0
    for raw in client.smembers(keys.LAPSED_HOLDERS):
        holder_id = _text(raw)
        lock = keys.holder_giving_back(holder_id)
        if not client.set(lock, os.getpid(), nx=True, ex=GIVE_BACK_LOCK_S):
            continue
        tags = [_text(field) for field, _ in client.hscan_iter(
            keys.UNACKED, match=f"{holder_id}.*", count=500)]
        given += sum(give_back(client, tag) for tag in tags)
        client.srem(keys.LAPSED_HOLDERS, holder_id)
        client.delete(lock)
        logger.warning("gave back %d message(s) of lapsed holder %s", len(tags), holder_id)
    return given


def give_back(client: redis.Redis, tag: str, *, redelivered: bool = True) -> bool:
    """Push the message recorded unacked under `tag` back to the head of its queue, marked
    redelivered (a delivery counted) unless told otherwise, with the time it was first
    taken; False if the record is gone (acked, or given back already) or is not of the
    take's form `[message, "", queue]`."""
    pipe = client.pipeline(transaction=False)
    pipe.hget(keys.UNACKED, tag)
    pipe.zscore(keys.UNACKED_INDEX, tag)
    record, taken_at = pipe.execute()
    if record is None:
        return False
    try:
        message, exchange, queue = orjson.loads(record)
        if exchange != "" or not isinstance(queue, str) or not isinstance(message, dict):
            return False
        message = _as_returned(message, redelivered=redelivered, taken_at=taken_at)
        body = orjson.dumps(message)
        headers = message.get("headers")
        job_id = headers.get("id") if isinstance(headers, dict) else None
    except (ValueError, TypeError, AttributeError):
        return False
    first_taken = message["properties"].get(TAKEN_AT)
    return bool(client.eval(
        _GIVE_BACK, 5, keys.UNACKED, keys.UNACKED_INDEX, queue,
        keys.queue_bell(keys.list_priority(queue)[0]),
        keys.job(job_id) if isinstance(job_id, str) else keys.job(""), tag, body,
        first_taken if isinstance(first_taken, int | float) else ""))


def held_job_ids(client: redis.Redis) -> set[str]:
    """The ids of the jobs whose messages are taken and unacked (held by a worker, or
    waiting to be given back). Reads every record: for the reaper's rare rounds only."""
    held = set()
    for _, record in client.hscan_iter(keys.UNACKED, count=100):
        try:
            message = orjson.loads(record)[0]
            job_id = message["headers"]["id"]
        except (ValueError, TypeError, KeyError, IndexError):
            continue
        if isinstance(job_id, str):
            held.add(job_id)
    return held


#: The property a message's first take time travels in once it was given back.
TAKEN_AT = "inferfleet_taken_at"


def _as_returned(message: dict[str, Any], *, redelivered: bool,
                 taken_at: float | None) -> dict[str, Any]:
    properties = message.setdefault("properties", {})
    if taken_at is not None:
        properties.setdefault(TAKEN_AT, taken_at)
    if redelivered:  # as kombu's own restore marks it
        if isinstance(message.get("headers"), dict):
            message["headers"]["redelivered"] = True
        if not isinstance(properties.get("delivery_info"), dict):
            properties["delivery_info"] = {}
        properties["delivery_info"]["redelivered"] = True
    return message


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
