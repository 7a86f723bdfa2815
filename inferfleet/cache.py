"""The fleet-wide result cache: a sample seen before is answered without running the model.

Opt in per submit (`cache=True`) or per model (`"cache": true` in its config). Workers
check it before batching, one round trip per job, and store what they computed after.

**Keys.** An entry is one sample's outputs (after postprocessing: label and score
included) under a BLAKE2b digest of 160 bits over every input's name, dtype, shape and
bytes, inside a hash per model *version*: a new version never answers from an old one's
entries, and the worker that loads it deletes them.

**Memory.** The broker Redis runs with `noeviction`, so that no queued job is ever
dropped for room, and an LRU policy would evict queues with the cache. The cache needs
a bound of its own, in the same Redis: entries go into hashes per time bucket of
`cache_ttl_s`, each expiring whole `cache_ttl_s` after its bucket ends (so an entry lives
one to two TTLs), and a counter per bucket adds up the bytes written into it (digest,
outputs and 64 bytes of Redis's own per entry). A write that would take the two live
buckets past `cache_max_bytes` is skipped: the cache stops growing, never evicts, and
frees what it holds as buckets expire. A separate Redis with `allkeys-lru` would keep the
hottest entries instead, at the cost of a second server to run; the bound here costs none.

**Failures are never cached**, and samples identical to one this worker is computing now
wait for it rather than computing it again (`InFlight`).
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson
import redis

from inferfleet import keys

#: Bytes of a sample's digest: 160 bits (Triton's 64-bit key carries a collision warning).
DIGEST_BYTES = 20
#: What one entry costs Redis beyond its field and value, in the memory bound.
ENTRY_OVERHEAD_BYTES = 64

def sample_digests(inputs: Mapping[str, npt.NDArray[Any]]) -> list[bytes]:
    """One digest per row of `inputs` (stacked per input, the same rows in each): over
    every input's name, dtype, per-sample shape and bytes."""
    names = sorted(inputs)
    heads = [f"{name}\0{inputs[name].dtype.str}\0{inputs[name].shape[1:]}\0".encode()
             for name in names]
    arrays = [np.ascontiguousarray(inputs[name]) for name in names]
    if len(arrays) == 1 and len(arrays[0]):  # one call a row: the head keys the hash
        key = hashlib.blake2b(heads[0], digest_size=32).digest()
        flat = arrays[0].reshape(-1).view(np.uint8).data
        width = arrays[0][0].nbytes
        return [hashlib.blake2b(flat[i * width:(i + 1) * width], digest_size=DIGEST_BYTES,
                                key=key).digest() for i in range(len(arrays[0]))]
    digests = []
    for row in range(len(arrays[0]) if arrays else 0):
        digest = hashlib.blake2b(digest_size=DIGEST_BYTES)
        for head, array in zip(heads, arrays, strict=True):
            digest.update(head)
            digest.update(array[row].data)
        digests.append(digest.digest())
    return digests


def encode_rows(outputs: Mapping[str, Any], rows: Sequence[int]) -> list[bytes]:
    """Cache entries for `rows` of the output columns: a header (the layout, the same for
    every entry of a model version), then each array output's bytes, then the other
    outputs' values as JSON. Built per column, not per value: ~2 us an entry."""
    arrays = {name: np.ascontiguousarray(column[list(rows)]) for name, column in outputs.items()
              if _is_numeric(column)}
    listed = [name for name in outputs if name not in arrays]
    header = orjson.dumps([[[name, a.dtype.str, list(a.shape[1:])] for name, a in arrays.items()],
                           listed])
    head = len(header).to_bytes(2, "big") + header
    blobs = [a.tobytes() for a in arrays.values()]
    sizes = [a[0].nbytes if len(a) else 0 for a in arrays.values()]
    entries = []
    for i, row in enumerate(rows):
        parts = [head, *(blob[i * size:(i + 1) * size] for blob, size in zip(blobs, sizes,
                                                                            strict=True))]
        if listed:
            parts.append(orjson.dumps([_plain(outputs[name][row]) for name in listed],
                                      option=orjson.OPT_SERIALIZE_NUMPY))
        entries.append(b"".join(parts))
    return entries


def _is_numeric(column: Any) -> bool:
    """An array whose bytes are its values (not strings or objects: an ONNX string
    output is an array of Python objects, whose bytes are pointers)."""
    return isinstance(column, np.ndarray) and column.dtype.kind in "biuf"


def _plain(value: Any) -> Any:
    """A value JSON can carry: arrays of strings or objects as lists."""
    return value.tolist() if isinstance(value, np.ndarray) else value


def decode_entries(entries: Sequence[bytes]) -> dict[str, Any]:
    """The output columns of `entries` (one row each), decoded together.

    Raises:
        ValueError: if the entries do not share one layout, or are not entries.
    """
    if not entries:
        return {}
    size = int.from_bytes(entries[0][:2], "big")
    head = entries[0][:2 + size]
    if any(not entry.startswith(head) for entry in entries):
        raise ValueError("cache entries of different layouts")
    arrays, listed = orjson.loads(head[2:])
    width = sum(np.dtype(dtype).itemsize * int(np.prod(shape)) for _, dtype, shape in arrays)
    body = np.frombuffer(b"".join(entry[len(head):len(head) + width] for entry in entries),
                         dtype=np.uint8).reshape(len(entries), width)
    columns: dict[str, Any] = {}
    offset = 0
    for name, dtype, shape in arrays:
        nbytes = np.dtype(dtype).itemsize * int(np.prod(shape))
        columns[name] = body[:, offset:offset + nbytes].copy().view(np.dtype(dtype)).reshape(
            len(entries), *shape)
        offset += nbytes
    if listed:
        values = orjson.loads(b"[" + b",".join(entry[len(head) + width:]
                                               for entry in entries) + b"]")
        for index, name in enumerate(listed):
            columns[name] = [row[index] for row in values]
    return columns


# KEYS: this bucket's hash, the bytes counters of this bucket and the one before, the
# model's index of buckets. ARGV: max bytes, ttl (s), overhead per entry, then digest,
# entry pairs. Writes the entries (one HSET) that fit before the two live buckets would
# hold more than max bytes, and counts their bytes (an entry written again is counted
# again: the bound errs on the small side); returns how many it wrote.
_PUT = """
local used = tonumber(redis.call('GET', KEYS[2]) or '0') +
  tonumber(redis.call('GET', KEYS[3]) or '0')
local most, ttl, overhead = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local last, added = 3, 0
for i = 4, #ARGV, 2 do
  local size = #ARGV[i] + #ARGV[i + 1] + overhead
  if used + added + size > most then break end
  added = added + size
  last = i + 1
end
if last == 3 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 4, last))
redis.call('INCRBY', KEYS[2], added)
redis.call('EXPIRE', KEYS[1], 2 * ttl)
redis.call('EXPIRE', KEYS[2], 2 * ttl)
redis.call('SADD', KEYS[4], KEYS[1])
redis.call('EXPIRE', KEYS[4], 2 * ttl)
return (last - 3) / 2
"""
#: Entries per `_PUT` call (Lua's unpack takes a few thousand values at most).
PUT_CHUNK = 1024


class ResultCache:
    """Entries of the fleet-wide cache in one Redis, bounded by `max_bytes`."""

    def __init__(self, client: redis.Redis, *, ttl_s: int, max_bytes: int) -> None:
        self.client = client
        self.ttl_s = ttl_s
        self.max_bytes = max_bytes
        self._put = client.register_script(_PUT)

    def _bucket(self) -> int:
        return int(time.time() // self.ttl_s)

    def get(self, model: str, version: str, digests: Sequence[bytes]) -> list[bytes | None]:
        """The entry of each digest, or None (one round trip).

        Raises:
            redis.RedisError: if Redis cannot be reached.
        """
        if not digests:
            return []
        bucket = self._bucket()
        pipe = self.client.pipeline(transaction=False)
        for each in (bucket, bucket - 1):
            pipe.hmget(keys.cache_bucket(model, version, each), list(digests))
        now, before = pipe.execute()
        return [a if a is not None else b for a, b in zip(now, before, strict=True)]

    def put(self, model: str, version: str, entries: Sequence[tuple[bytes, bytes]]) -> int:
        """Store entries (digest, encoded outputs) within the bound; how many it wrote.

        Raises:
            redis.RedisError: if Redis cannot be reached.
        """
        bucket = self._bucket()
        call_keys = [keys.cache_bucket(model, version, bucket), keys.cache_bytes(bucket),
                     keys.cache_bytes(bucket - 1), keys.cache_index(model)]
        written = 0
        for start in range(0, len(entries), PUT_CHUNK):
            args: list[Any] = [self.max_bytes, self.ttl_s, ENTRY_OVERHEAD_BYTES]
            for digest, entry in entries[start:start + PUT_CHUNK]:
                args += [digest, entry]
            written += int(self._put(keys=call_keys, args=args))
        return written

    def forget_other_versions(self, model: str, version: str) -> None:
        """Delete a model's entries of every version but `version` (one just loaded).

        Raises:
            redis.RedisError: if Redis cannot be reached.
        """
        index = keys.cache_index(model)
        mine = keys.cache_buckets_of(model, version)
        members: Any = self.client.smembers(index)
        stale = [key for key in (k.decode() if isinstance(k, bytes) else str(k)
                                 for k in members) if not key.startswith(mine)]
        if stale:
            pipe = self.client.pipeline(transaction=False)
            pipe.delete(*stale)
            pipe.srem(index, *stale)
            pipe.execute()


@dataclass(frozen=True)
class Claim:
    """What one job computes of its rows and what it waits for (`InFlight.claim`)."""

    #: Set to the outcome (`BatchOutcome`) of the rows this job computes, in `compute`'s
    #: order, or to the exception that ended them; others' waits may hold it.
    future: Future[Any]
    #: The job's rows it computes itself: the first of each digest not in flight.
    compute: list[int]
    #: For every other row: the computation holding it, and its place there.
    waits: dict[int, tuple[Future[Any], int]]
    #: The digests this claim registered (released with it).
    digests: list[bytes]


@dataclass
class InFlight:
    """Samples this worker is computing now: a job holding the same sample (the same
    digest in the same scope, a model version) waits for that computation instead of
    running it again. Safe from any thread.

    A computation stays claimed for `GRACE_S` after it is released (its rows stored in
    the cache by then): a job that missed the cache just before the store, and claims
    just after, takes the rows from it rather than computing them again.
    """

    GRACE_S = 1.0

    _lock: threading.Lock = field(default_factory=threading.Lock)
    _computing: dict[tuple[Any, bytes], tuple[Future[Any], int]] = field(default_factory=dict)
    _released: deque[tuple[float, Any, Claim]] = field(default_factory=deque)

    def claim(self, scope: Any, digests: Sequence[bytes]) -> Claim:
        """Claim the rows (one digest each) that no computation holds; the rest wait."""
        future: Future[Any] = Future()
        compute: list[int] = []
        waits: dict[int, tuple[Future[Any], int]] = {}
        mine: dict[bytes, int] = {}
        with self._lock:
            self._forget_released(time.monotonic())
            for row, digest in enumerate(digests):
                held = self._computing.get((scope, digest))
                if held is not None:
                    waits[row] = held
                elif digest in mine:
                    waits[row] = (future, mine[digest])
                else:
                    mine[digest] = len(compute)
                    compute.append(row)
                    self._computing[(scope, digest)] = (future, mine[digest])
        return Claim(future, compute, waits, list(mine))

    def release(self, scope: Any, claim: Claim) -> None:
        """The claim's computation ended (its future is set, its rows stored): after
        `GRACE_S`, later jobs compute those samples anew (or find them in the cache)."""
        with self._lock:
            self._released.append((time.monotonic() + self.GRACE_S, scope, claim))

    def _forget_released(self, now: float) -> None:
        while self._released and self._released[0][0] <= now:
            _, scope, claim = self._released.popleft()
            for digest in claim.digests:
                held = self._computing.get((scope, digest))
                if held is not None and held[0] is claim.future:
                    del self._computing[(scope, digest)]
