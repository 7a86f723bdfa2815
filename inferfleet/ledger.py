"""The job ledger in Redis: what producers record, workers update, and callers read.

A job's terminal result is stored once, where Celery's Redis result backend stores task
results and in its JSON format, so that any Celery client's `AsyncResult(id).get()` reads
it. A Lua compare-and-set makes the write atomic and write-once: a redelivered job can
never overwrite a terminal result.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import redis

from inferfleet import keys
from inferfleet.schemas import JobState, JobStatus, WireResult

_TERMINAL = {status.value for status in JobStatus}

# KEYS: result, doorbell, job.  ARGV: meta JSON, ttl, status, finished_at.
_STORE_ONCE = """
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2]) then return 0 end
redis.call('PUBLISH', KEYS[1], ARGV[1])
redis.call('RPUSH', KEYS[2], '1')
redis.call('EXPIRE', KEYS[2], ARGV[2])
redis.call('HSET', KEYS[3], 'state', ARGV[3], 'finished_at', ARGV[4])
redis.call('EXPIRE', KEYS[3], ARGV[2])
return 1
"""

# KEYS: job.  ARGV: ttl, started_at.  A terminal state is never turned back to running.
_MARK_RUNNING = """
local state = redis.call('HGET', KEYS[1], 'state')
if state and state ~= 'queued' and state ~= 'running' then return 0 end
redis.call('HSET', KEYS[1], 'state', 'running', 'started_at', ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[1])
return 1
"""


def celery_meta(result: WireResult) -> str:
    """The result as Celery's result backend stores a finished task's meta."""
    return json.dumps({
        "status": "SUCCESS", "result": result.model_dump(mode="json"), "traceback": None,
        "children": [], "date_done": datetime.now(UTC).isoformat(),
        "task_id": result.job_id,
    })


class Ledger:
    """Reads and writes job records; one per process, safe to share between threads."""

    def __init__(self, client: redis.Redis, *, ttl_s: int) -> None:
        self.client = client
        self.ttl_s = ttl_s
        self._store_once = client.register_script(_STORE_ONCE)
        self._mark_running = client.register_script(_MARK_RUNNING)

    def record_queued(self, pipe: Any, job_id: str, *, model: str, session_id: str | None,
                      n_samples: int, submitted_at: float) -> None:
        """Add a queued job's record to `pipe` (a Redis pipeline the caller executes)."""
        key = keys.job(job_id)
        pipe.hset(key, mapping={"state": JobState.QUEUED.value, "model": model,
                                "session_id": session_id or "", "samples": n_samples,
                                "submitted_at": submitted_at})
        pipe.expire(key, self.ttl_s)

    def mark_running(self, job_id: str) -> bool:
        """Record that a worker started the job; False if it is already terminal."""
        return bool(self._mark_running(keys=[keys.job(job_id)],
                                       args=[self.ttl_s, time.time()]))

    def store_result(self, result: WireResult) -> bool:
        """Store the terminal result once; False if one was already stored."""
        stored = self._store_once(
            keys=[keys.result(result.job_id), keys.doorbell(result.job_id),
                  keys.job(result.job_id)],
            args=[celery_meta(result), self.ttl_s, result.status.value, time.time()])
        return bool(stored)

    def read_results(self, job_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        """Terminal result payloads of those jobs that have one, by job id."""
        ids = list(job_ids)
        if not ids:
            return {}
        raw = self.client.mget([keys.result(job_id) for job_id in ids])
        return {job_id: _payload(value) for job_id, value in zip(ids, raw, strict=True)
                if value is not None}

    def state(self, job_id: str) -> str:
        """queued, running, a terminal status, or unknown (never pending forever)."""
        pipe = self.client.pipeline(transaction=False)
        pipe.hget(keys.job(job_id), "state")
        pipe.get(keys.result(job_id))
        state, raw = pipe.execute()
        if raw is not None:
            return str(_payload(raw).get("status", JobState.UNKNOWN.value))
        if state is None:
            return JobState.UNKNOWN.value
        state = state.decode() if isinstance(state, bytes) else str(state)
        return state if state not in _TERMINAL else JobState.UNKNOWN.value


def _payload(raw: bytes | str) -> dict[str, Any]:
    meta = json.loads(raw)
    result = meta.get("result") if isinstance(meta, dict) else None
    return result if isinstance(result, dict) else {}
