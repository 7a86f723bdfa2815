"""`AsyncClient`: `Client` with async methods, for asyncio programs.

Reads run `producer.core`'s steps over redis.asyncio, the very steps `Client` runs over
redis-py; publishing, `results` and `subscribe` run `Client`'s own in a thread.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from typing import Any, TypeVar

from inferfleet.connections import async_redis_client
from inferfleet.models.config import ModelSignature
from inferfleet.producer import core
from inferfleet.producer.client import Client, Job
from inferfleet.producer.stream import stream_async
from inferfleet.schemas import JobResult, SampleResult, SessionSummary
from inferfleet.settings import Settings

T = TypeVar("T")


class AsyncClient:
    """The async twin of `Client`: the same methods, awaited, over the same core
    (`producer.core`), so that the two cannot drift; Redis failures are `BrokerError`s
    in both."""

    def __init__(self, redis_url: str | None = None, *, settings: Settings | None = None) -> None:
        self._sync = Client(redis_url, settings=settings)
        self.settings = self._sync.settings
        self.redis = async_redis_client(self.settings)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Release the Redis connections."""
        await self.redis.aclose()
        self._sync.close()

    async def _run(self, steps: core.Steps[T]) -> T:
        return await core.run_async(steps, self.redis, self.settings)

    async def models(self) -> dict[str, ModelSignature]:
        """Signatures of every model some worker has published, by name."""
        return await self._run(core.models())

    async def submit(self, model: str, samples: Any, **options: Any) -> Job:
        """`Client.submit`, without blocking the event loop."""
        return await asyncio.to_thread(self._sync.submit, model, samples, **options)

    async def submit_many(self, model: str, samples: Any, **options: Any) -> list[Job]:
        """`Client.submit_many`, without blocking the event loop."""
        return await asyncio.to_thread(self._sync.submit_many, model, samples, **options)

    def stream(self, model: str, samples: AsyncIterable[Any] | Iterable[Any], *,
               max_in_flight: int = 1024, job_size: int | None = None,
               session_id: str | None = None, start: int = 0, timeout: float = 300.0,
               **options: Any) -> AsyncIterator[SampleResult]:
        """`Client.stream` over an async (or plain) iterable: `async for` its results."""
        return stream_async(self, model, samples, max_in_flight=max_in_flight,
                            job_size=job_size, start=start, timeout_s=timeout,
                            options={"session_id": session_id, **options})

    async def result(self, job_id: str, *, timeout: float = 30.0,
                     deadline_at: float | None = None) -> JobResult:
        """`Client.result`, awaited: the job's terminal result.

        Raises:
            ResultTimeoutError: if none is stored within `timeout` seconds.
            BrokerError: if Redis cannot be reached in time.
        """
        return await self._run(core.result(job_id, timeout_s=timeout, deadline_at=deadline_at,
                                           settings=self.settings))

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
        return await self._run(core.session_summary(session_id))

    async def status(self, job_id: str) -> str:
        """queued, running, a terminal status, or unknown."""
        return await self._run(core.status(job_id))
