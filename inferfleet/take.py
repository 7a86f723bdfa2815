"""The take: one Lua step that pops a worker's next messages and records them unacked.

kombu's Redis transport pops with BRPOP and records the message unacked afterwards; a
worker killed between the two lost the message for good. The take does both at once, so
a message is always in its queue or recorded where it can be given back
(`inferfleet.transport` sends it right behind a wait on the queues' bells).
"""

from __future__ import annotations

import math
import time
import uuid
from dataclasses import dataclass
from typing import Any

from inferfleet import keys

# KEYS: unacked hash, unacked index, holders, this holder's lapsed mark, the n lists to
# try in order, then the queues' bells. ARGV: now, n, the most messages to take, then per
# list '1' if its consumer acks (else nothing is recorded: kombu never acks it), per list
# the KEYS index of its queue's bell, per list its queue's name, per list its route back
# (the list of its priority), a prefix unique to this take, and the holder id ('' for
# none; see `liveness`).
#
# A holder the fleet marked lapsed takes nothing: it returns 'lapsed', and the channel
# takes again under a new id. Otherwise the take registers its holder (Redis's clock),
# pops up to that many of the oldest messages of the first non-empty list and records
# each one unacked under a fresh delivery tag (the prefix and its place in the take), in
# kombu's own record form: [message, exchange, routing key], with the anonymous exchange
# and the list of its priority as the route back (a message given back goes to the head
# of that list; kombu's own priority lists route back by the queue, as kombu does). Rings
# the bell again if any list of
# that queue still holds messages, and returns {queue, list, tag, message, tag, message...}
# ('' for the tag of a message not recorded). With every list empty it silences the bells
# (rings before now are stale; a later push rings anew) and returns false.
#
# The message is never decoded here: cjson read each whole envelope (87 KB for a
# 256-sample job) only to find its delivery tag and route, ~60% of Redis's CPU in bulk
# runs. The worker gives the message the take's tag when it decodes it anyway.
TAKE_SCRIPT = """
local n, most = tonumber(ARGV[2]), tonumber(ARGV[3])
local holder = ARGV[5 + 4 * n]
if holder ~= '' then
  if redis.call('EXISTS', KEYS[4]) == 1 then return 'lapsed' end
  local t = redis.call('TIME')
  redis.call('ZADD', KEYS[3], 'NX', tonumber(t[1]) + tonumber(t[2]) / 1e6, holder)
end
for i = 1, n do
  local list = KEYS[4 + i]
  local item = redis.call('RPOP', list)
  if item then
    local taken = {ARGV[3 + 2 * n + i], list}
    local acked = ARGV[3 + i] == '1'
    local route = ', "", ' .. cjson.encode(ARGV[3 + 3 * n + i]) .. ']'
    local prefix = ARGV[4 + 4 * n]
    local count = 0
    while item do
      count = count + 1
      local tag = ''
      if acked then
        tag = prefix .. count
        redis.call('ZADD', KEYS[2], ARGV[1], tag)
        redis.call('HSET', KEYS[1], tag, '[' .. item .. route)
      end
      taken[#taken + 1] = tag
      taken[#taken + 1] = item
      if count >= most then break end
      item = redis.call('RPOP', list)
    end
    local bell_index = tonumber(ARGV[3 + n + i])
    if redis.call('LLEN', KEYS[bell_index]) == 0 then
      for j = 1, n do
        if tonumber(ARGV[3 + n + j]) == bell_index and redis.call('LLEN', KEYS[4 + j]) > 0 then
          redis.call('LPUSH', KEYS[bell_index], '1')
          break
        end
      end
    end
    return taken
  end
end
for i = n + 5, #KEYS do redis.call('DEL', KEYS[i]) end
return false
"""



#: Which priority each take of a worker channel tries first, in a cycle: of every ten
#: takes, eight begin with `high`, one with `normal` and one with `low`; each then goes on
#: through the others from the highest. A take pops from one list only, so while every
#: level has jobs queued, `normal` and `low` each get at least one take in ten: nothing
#: waits for good behind a flood of higher work. With the higher lists empty, every take
#: reaches the lower ones.
TAKE_CYCLE = ("high", "high", "high", "high", "normal", "high", "high", "high", "high", "low")


#: The message property that says which priority's list a message was taken from.
TAKEN_PRIORITY = "inferfleet_priority"


def take_order(take_number: int) -> tuple[str, ...]:
    """The priorities take number `take_number` tries, in order (see `TAKE_CYCLE`)."""
    first = TAKE_CYCLE[take_number % len(TAKE_CYCLE)]
    return (first, *(level for level in keys.PRIORITIES if level != first))


@dataclass(frozen=True)
class TakeSource:
    """One list a take may pop from, in priority order: the Redis list, the queue it
    belongs to (the route back), and whether its consumer acks."""

    list_key: str
    queue: str
    acked: bool

    @property
    def route(self) -> str:
        """Where a message given back goes: this list for inferfleet's own priority lists
        (`liveness.give_back` and kombu's restore push to the route), else the queue
        (kombu's restore adds its own priority suffix)."""
        return self.list_key if keys.list_priority(self.list_key)[1] != "normal" else self.queue


def take_command(sources: list[TakeSource], *, most: int, holder: str | None,
                 unacked: str, unacked_index: str) -> list[Any]:
    """The EVAL command that takes up to `most` messages from the first non-empty source,
    recorded under delivery tags that start with `holder` (see `liveness`)."""
    queues = list(dict.fromkeys(source.queue for source in sources))
    bells = [keys.queue_bell(queue) for queue in queues]
    first_bell = 5 + len(sources)  # Lua's KEYS index of the first bell
    holder = holder or ""
    prefix = f"{holder}.{uuid.uuid4().hex[:16]}." if holder else f"{uuid.uuid4().hex}."
    return ["EVAL", TAKE_SCRIPT, 4 + len(sources) + len(bells), unacked, unacked_index,
            keys.HOLDERS, keys.holder_lapsed(holder), *(s.list_key for s in sources), *bells,
            time.time(), len(sources), most, *("1" if s.acked else "0" for s in sources),
            *(first_bell + queues.index(s.queue) for s in sources),
            *(s.queue for s in sources), *(s.route for s in sources), prefix, holder]


class TakeLinger:
    """How long a channel waits before its next take, so that single-sample jobs that
    arrive close together are taken, and batched, together.

    Each take is a round trip, a turn of kombu's event loop and a hand-off to a pool
    thread; each batch an ONNX Runtime call and a result write. A worker that takes every
    job alone as it comes spends that on each one: measured with two workers on two
    cores, a lone digits_mlp job cost ~2,100 us of worker CPU (the model call alone ~310,
    the take ~430, the result write ~180), against ~360 us for a job batched with ~26
    others. Under a steady stream of single-sample jobs the workers, keeping the queue
    empty, ran batches of 1-3 jobs and took the CPU the producer needed.

    So a take that emptied the queue (it brought some messages, fewer than it could) is
    followed by a wait of `most_s` before the next, but only where more are known to be
    coming: where this channel's recent arrival rate expects at least `expected` messages
    within `most_s`. Sparse jobs never wait: at one job in flight, or a few hundred jobs a
    second, the next take is sent at once as before. Bulk jobs are too few per second to
    wait for, and a take that filled up (the queue holds more) never waits.

    Redis cannot do the waiting: an idle server ends a blocking command's timeout only
    at its next cron tick (a 2 ms BRPOP timeout lasted 100 ms at hz 10).
    """

    def __init__(self, *, most_s: float = 0.003, expected: float = 1.0,
                 memory_s: float = 0.05) -> None:
        self.most_s = most_s
        self.expected = expected
        self.memory_s = memory_s
        #: This channel's recent arrival rate, messages a second: a moving average that
        #: forgets with time, not with takes (weight exp(-age / memory_s)), so that the
        #: first jobs after a quiet spell are not held for a stream long gone.
        self.rate = 0.0
        self._last_taken_at: float | None = None
        self._wait_next = False

    def took(self, count: int, *, most: int, now: float) -> None:
        """A take's reply brought `count` messages of the `most` it asked for."""
        if count <= 0:
            self._wait_next = False
            return
        if self._last_taken_at is not None:
            interval = max(now - self._last_taken_at, 1e-4)
            weight = 1.0 - math.exp(-interval / self.memory_s)
            self.rate += weight * (count / interval - self.rate)
        self._last_taken_at = now
        self._wait_next = count < most

    def next_wait_s(self) -> float:
        """How long to wait before the next take (0: send it at once); asked once per
        take, as the channel would send it."""
        wait = self._wait_next and self.rate * self.most_s >= self.expected
        self._wait_next = False
        return self.most_s if wait else 0.0
