"""Reading a session: its summary from counters, and its results as they land.

Workers write both in the same atomic step that stores a job's result (see `ledger`): one
stream entry per finished job, and the session's counters. A subscriber reads the stream,
fetches each job's result and yields its samples; its `position` ("<entry id>/<sample
index>" of the last sample yielded) lets a new subscriber go on from there with neither
loss nor duplicates.
"""

from __future__ import annotations

import re
import time
from collections import deque
from collections.abc import Iterator
from typing import Any

import redis

from inferfleet import keys
from inferfleet.errors import BadArgumentError
from inferfleet.ledger import bucket_upper_ms, payload_of, redis_text
from inferfleet.schemas import (
    SESSION_ID_PATTERN,
    JobResult,
    ModelCounts,
    SampleResult,
    SessionSummary,
)

#: Entries read per XREAD, and how long one may block before the session is checked.
_READ_COUNT = 256
_BLOCK_MS = 500


def check_session_id(session_id: str) -> str:
    """`session_id`, if it matches `SESSION_ID_PATTERN`.

    Raises:
        BadArgumentError: naming the bad id.
    """
    if not isinstance(session_id, str) or not re.match(SESSION_ID_PATTERN, session_id):
        raise BadArgumentError(f"session id {session_id!r} must match {SESSION_ID_PATTERN}")
    return session_id


def summarise(session_id: str, stats: dict[str, str]) -> SessionSummary:
    """A `SessionSummary` from the session's counters (a decoded HGETALL)."""
    def count(field: str) -> int:
        return int(stats.get(field, 0))

    submitted, done = count("samples_submitted"), count("samples_done")
    succeeded = count("samples:success")
    latency = sorted((int(f.split(":", 1)[1]), int(n)) for f, n in stats.items()
                     if f.startswith("latency:"))
    first = float(stats["first_submitted_at"]) if "first_submitted_at" in stats else None
    last = float(stats["last_finished_at"]) if "last_finished_at" in stats else None
    return SessionSummary(
        session_id=session_id, jobs_submitted=count("jobs_submitted"),
        jobs_done=count("jobs_done"),
        jobs_by_status={f.split(":", 1)[1]: int(n) for f, n in stats.items()
                        if f.startswith("jobs:")},
        samples_submitted=submitted, samples_succeeded=succeeded,
        samples_failed=count("samples:failure"), samples_expired=count("samples:expired"),
        samples_pending=max(0, submitted - done),
        success_rate=succeeded / done if done else None,
        latency_p50_ms=_percentile(latency, 0.50), latency_p95_ms=_percentile(latency, 0.95),
        latency_p99_ms=_percentile(latency, 0.99),
        samples_per_s=done / (last - first) if first and last and last > first else None,
        first_submitted_at=first, last_finished_at=last, models=_models(stats),
        samples_expected=int(stats["samples_expected"]) if "samples_expected" in stats
        else None, samples_cache_hits=count("samples:cache_hit"),
        cache_hit_rate=count("samples:cache_hit") / done if done else None)


def _percentile(histogram: list[tuple[int, int]], q: float) -> float | None:
    total = sum(n for _, n in histogram)
    if not total:
        return None
    seen = 0
    for bucket, n in histogram:
        seen += n
        if seen >= q * total:
            return bucket_upper_ms(bucket)
    return bucket_upper_ms(histogram[-1][0])


def _models(stats: dict[str, str]) -> dict[str, ModelCounts]:
    models: dict[str, ModelCounts] = {}
    for field, value in stats.items():
        match = re.fullmatch(r"model:(.+):(submitted|done)", field)
        if match:
            counts = models.setdefault(match[1], ModelCounts())
            setattr(counts, match[2], int(value))
    return models


class Subscription(Iterator[SampleResult]):
    """A session's sample results in arrival order (see the module docstring).

    It ends once every job submitted to the session is done and read, or after
    `timeout_s` without that happening.
    """

    def __init__(self, client: redis.Redis, session_id: str, *, after: str | None,
                 from_start: bool, timeout_s: float, block_s: float = _BLOCK_MS / 1000) -> None:
        self.client = client
        self.session_id = check_session_id(session_id)
        self._stream = keys.session_stream(session_id)
        self._deadline = time.monotonic() + timeout_s
        self._buffer: deque[tuple[SampleResult, str]] = deque()
        #: Where the last sample yielded stands: pass it as `after` to go on from there.
        self.position: str | None = after
        self._entry, self._skip = self._start(after, from_start)
        self._finished = False
        self._block_ms = max(1, int(min(block_s, _BLOCK_MS / 1000) * 1000))

    def _start(self, after: str | None, from_start: bool) -> tuple[str, int]:
        if after is not None:
            entry, _, index = after.partition("/")
            if not re.fullmatch(r"\d+-\d+", entry) or not index.isdigit():
                raise BadArgumentError(f"subscription position {after!r} is not "
                                       "'<entry id>/<sample index>'")
            self._buffer_entries(list(self.client.xrange(self._stream, entry, entry) or []),
                                 int(index) + 1)
            return entry, 0
        if from_start:
            return "0-0", 0
        newest = self.client.xrevrange(self._stream, count=1)
        return (redis_text(newest[0][0]) if newest and newest[0][0] else "0-0"), 0

    def __next__(self) -> SampleResult:
        while not self._buffer:
            if self._finished or not self._read():
                raise StopIteration
        sample, self.position = self._buffer.popleft()
        return sample

    def _read(self) -> bool:
        """Buffer more samples; False once the session is done and read, or at timeout."""
        while time.monotonic() < self._deadline:
            # Counters first: every job they count as done is in the stream before they
            # are read, so an empty read after them means nothing is left to come.
            done = self._all_done()
            block = None if done else self._block_ms
            entries = _stream_entries(self.client.xread({self._stream: self._entry},
                                                         count=_READ_COUNT, block=block))
            if entries:
                self._buffer_entries(entries, 0)
                return True
            if done:
                self._finished = True
                return False
        return False

    def _all_done(self) -> bool:
        submitted, done = self.client.hmget(keys.session_stats(self.session_id),
                                            ["jobs_submitted", "jobs_done"])
        return int(done or 0) >= int(submitted or 0) > 0

    def _buffer_entries(self, entries: list[Any], skip: int) -> None:
        ids = [redis_text(fields[b"job"]) for _, fields in entries]
        metas = self.client.mget([keys.result(job_id) for job_id in ids]) if ids else []
        for (entry_id, _), meta in zip(entries, metas, strict=True):
            self._entry = redis_text(entry_id)
            if meta is None:  # the result expired before the stream entry did
                continue
            result = JobResult.from_wire(payload_of(meta))
            for index, sample in enumerate(result.samples):
                if index >= skip:
                    self._buffer.append((sample, f"{self._entry}/{index}"))
            skip = 0


def _stream_entries(reply: Any) -> list[Any]:
    """The entries of a one-stream XREAD reply, RESP2 (a list) or RESP3 (a map)."""
    if not reply:
        return []
    if isinstance(reply, dict):
        return list(next(iter(reply.values()))[0])
    return list(reply[0][1])
