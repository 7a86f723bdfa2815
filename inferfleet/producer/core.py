"""The one core under `Client` and `AsyncClient`.

Each read is written once, as steps: a generator that yields the Redis commands of each
round trip and is sent their replies. `run` drives steps over redis-py, `run_async` over
redis.asyncio, and both map Redis's errors to inferfleet's at this one boundary
(`broker_error`), as httpx's `BaseClient` sits under its `Client` and `AsyncClient`.
Before, `AsyncClient` had its own copies of these reads; they drifted: no forgotten-job
expiry, raw redis errors, a fixed one-second block.
"""

from __future__ import annotations

import time
from collections.abc import Generator, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import redis
import redis.asyncio as aioredis

from inferfleet import keys
from inferfleet.errors import BrokerError, BrokerFullError, ResultTimeoutError
from inferfleet.ledger import expired_result, payload_of, redis_text, state_of, store_once_command
from inferfleet.models.config import ModelSignature
from inferfleet.schemas import JobResult, SessionSummary
from inferfleet.sessions import check_session_id, summarise
from inferfleet.settings import Settings, mask_url

T = TypeVar("T")
Command = tuple[Any, ...]
#: The steps of one read: each yield is a round trip (a pipeline of commands), answered
#: with its replies; the return value is the read's result.
Steps = Generator[list[Command], list[Any], T]


def broker_error(exc: redis.RedisError, settings: Settings) -> BrokerError | None:
    """The inferfleet error a Redis error stands for: unreachable or too slow, or full;
    None for the others (they stay as they are)."""
    where = f"Redis at {mask_url(settings.redis_url)}"
    if isinstance(exc, redis.ConnectionError | redis.TimeoutError):
        return BrokerError(f"{where} did not answer within socket_timeout_s="
                           f"{settings.socket_timeout_s:g}: {exc}")
    if isinstance(exc, redis.exceptions.OutOfMemoryError):
        return broker_full(settings, [])
    return None


def broker_full(settings: Settings, submitted: list[Any]) -> BrokerFullError:
    """The error for a Redis that refused a write at its maxmemory."""
    went = f"{len(submitted)} job(s) of this call were enqueued before it filled" if \
        submitted else "nothing of this call was enqueued"
    return BrokerFullError(
        f"Redis at {mask_url(settings.redis_url)} is full: it is at its maxmemory and, with "
        "maxmemory-policy noeviction (which keeps queued jobs from being evicted), refuses "
        f"writes; {went}. Wait for workers to drain the queues, lower result_ttl_s, or "
        "raise maxmemory", submitted)


def block_s(settings: Settings) -> float:
    """How long one blocking read may wait: it must end before the socket timeout would
    call it a failure."""
    return min(1.0, settings.socket_timeout_s / 2)


@contextmanager
def mapped_errors(settings: Settings) -> Iterator[None]:
    """Raise Redis errors as the inferfleet errors they stand for (`broker_error`)."""
    try:
        yield
    except redis.RedisError as exc:
        mapped = broker_error(exc, settings)
        if mapped is None:
            raise
        raise mapped from exc


def run(steps: Steps[T], client: redis.Redis, settings: Settings) -> T:
    """Drive `steps` over a redis-py client.

    Raises:
        BrokerError: if Redis cannot be reached in time, or is full.
    """
    with mapped_errors(settings):
        try:
            round_trip = next(steps)
            while True:
                pipe = client.pipeline(transaction=False)
                for command in round_trip:
                    pipe.execute_command(*command)  # type: ignore[no-untyped-call]
                round_trip = steps.send(pipe.execute())
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]


async def run_async(steps: Steps[T], client: aioredis.Redis, settings: Settings) -> T:
    """Drive `steps` over a redis.asyncio client.

    Raises:
        BrokerError: if Redis cannot be reached in time, or is full.
    """
    with mapped_errors(settings):
        try:
            round_trip = next(steps)
            while True:
                async with client.pipeline(transaction=False) as pipe:
                    for command in round_trip:
                        pipe.execute_command(*command)
                    replies = await pipe.execute()
                round_trip = steps.send(replies)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]


def status(job_id: str) -> Steps[str]:
    """queued, running, a terminal status, or unknown (never pending forever)."""
    recorded, result = yield [("HGET", keys.job(job_id), "state"), ("GET", keys.result(job_id))]
    return state_of(recorded, result)


def models() -> Steps[dict[str, ModelSignature]]:
    """Signatures of every model some worker has published, by name."""
    [raw] = yield [("HGETALL", keys.MODELS_HASH)]
    return {redis_text(name): ModelSignature.model_validate_json(value)
            for name, value in raw.items()}


def session_summary(session_id: str) -> Steps[SessionSummary]:
    """A session's counts and timings, from its counters.

    Raises:
        BadArgumentError: for a malformed session id.
    """
    [raw] = yield [("HGETALL", keys.session_stats(check_session_id(session_id)))]
    return summarise(session_id, {redis_text(k): redis_text(v) for k, v in raw.items()})


def result(job_id: str, *, timeout_s: float, deadline_at: float | None,
           settings: Settings) -> Steps[JobResult]:
    """A job's terminal result, waiting on its doorbell (the read rides with the wait).

    A job that Redis holds no record of (a restart without persistence lost its message,
    record and deadline) is ended here as `expired` once `deadline_at` is
    `job_time_limit_s` past, as the workers' reaper would have: stored once, so nothing
    reads pending forever and no late worker overwrites it.

    Raises:
        ResultTimeoutError: if none is stored within `timeout_s`.
    """
    give_up_at = time.monotonic() + timeout_s
    [raw] = yield [("GET", keys.result(job_id))]
    while raw is None:
        if deadline_at is not None and time.time() > deadline_at + settings.job_time_limit_s:
            [recorded] = yield [("EXISTS", keys.job(job_id))]
            if not recorded:
                forgotten = expired_result(job_id, {}, why=(
                    "Redis holds no record of it (its data was lost: a restart without "
                    "persistence?)"))
                _, raw = yield [store_once_command(forgotten, ttl_s=settings.result_ttl_s),
                                ("GET", keys.result(job_id))]
                continue
        remaining = give_up_at - time.monotonic()
        if remaining <= 0:
            raise ResultTimeoutError(job_id, timeout_s)
        _, raw = yield [("BLPOP", keys.doorbell(job_id), min(remaining, block_s(settings))),
                        ("GET", keys.result(job_id))]
    return JobResult.from_wire(payload_of(raw))


def not_served_reason(published: Iterable[bytes | str]) -> str:
    """Why `submit` refuses a model no worker has published, and what to do about it."""
    served = sorted(redis_text(name) for name in published)
    listed = ", ".join(served) if served else "none (is a worker running on this Redis?)"
    return (f"no worker serves it. Models served now: {listed}. Check the name; a model "
            "added with `inferfleet models add` is served within seconds by workers "
            "started without --models, else start `inferfleet worker --models NAME`")
