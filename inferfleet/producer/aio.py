"""`AsyncClient`: `Client` with async methods, for asyncio programs.

Reads use redis.asyncio; publishing runs `Client`'s pipelined kombu path in a thread,
because kombu's producer is synchronous.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterable
from typing import Any

import redis.asyncio as aioredis

from inferfleet import keys
from inferfleet.connections import client_options, plain_url
from inferfleet.errors import ResultTimeoutError
from inferfleet.ledger import payload_of, redis_text, state_of
from inferfleet.models.config import ModelSignature
from inferfleet.producer.client import Client, Job
from inferfleet.schemas import JobResult, SampleResult, SessionSummary
from inferfleet.sessions import check_session_id, summarise
from inferfleet.settings import Settings


class AsyncClient:
    """The async twin of `Client`: the same methods, awaited."""

    def __init__(self, redis_url: str | None = None, *, settings: Settings | None = None) -> None:
        self._sync = Client(redis_url, settings=settings)
        self.settings = self._sync.settings
        self.redis = aioredis.Redis.from_url(plain_url(self.settings.redis_url),
                                             **client_options(self.settings))

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Release the Redis connections."""
        await self.redis.aclose()
        self._sync.close()

    async def models(self) -> dict[str, ModelSignature]:
        """Signatures of every model some worker has published, by name."""
        raw = await self.redis.hgetall(keys.MODELS_HASH)
        return {redis_text(name): ModelSignature.model_validate_json(value)
                for name, value in raw.items()}

    async def submit(self, model: str, samples: Any, **options: Any) -> Job:
        """`Client.submit`, without blocking the event loop."""
        return await asyncio.to_thread(self._sync.submit, model, samples, **options)

    async def submit_many(self, model: str, samples: Any, **options: Any) -> list[Job]:
        """`Client.submit_many`, without blocking the event loop."""
        return await asyncio.to_thread(self._sync.submit_many, model, samples, **options)

    async def result(self, job_id: str, *, timeout: float = 30.0) -> JobResult:
        """The terminal result of a job; raises `ResultTimeoutError` if none within `timeout`."""
        deadline = time.monotonic() + timeout
        raw = await self.redis.get(keys.result(job_id))
        while raw is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ResultTimeoutError(job_id, timeout)
            # The read rides with the wait (`Ledger.wait_for_result`): no round trip after
            # the doorbell rings.
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.blpop([keys.doorbell(job_id)], timeout=min(remaining, 1.0))
                pipe.get(keys.result(job_id))
                _, raw = await pipe.execute()
        return JobResult.from_wire(payload_of(raw))

    async def results(self, job_ids: Iterable[str], *, timeout: float = 300.0
                      ) -> list[JobResult]:
        """`Client.results` (one notify list, not one wait per job), in a thread."""
        return await asyncio.to_thread(self._sync.results, list(job_ids), timeout=timeout)

    async def subscribe(self, session_id: str, *, from_start: bool = True,
                        after: str | None = None, timeout: float = 60.0
                        ) -> AsyncIterator[SampleResult]:
        """`Client.subscribe` as an async iterator (each read runs in a thread)."""
        subscription = self._sync.subscribe(session_id, from_start=from_start, after=after,
                                            timeout=timeout)
        while (sample := await asyncio.to_thread(next, subscription, None)) is not None:
            yield sample

    async def session_summary(self, session_id: str) -> SessionSummary:
        """`Client.session_summary`, awaited."""
        raw = await self.redis.hgetall(keys.session_stats(check_session_id(session_id)))
        return summarise(session_id, {redis_text(k): redis_text(v) for k, v in raw.items()})

    async def status(self, job_id: str) -> str:
        """queued, running, a terminal status, or unknown."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hget(keys.job(job_id), "state")
            pipe.get(keys.result(job_id))
            return state_of(*await pipe.execute())
