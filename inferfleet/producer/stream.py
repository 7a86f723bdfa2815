"""`Client.stream`: any iterable of samples through the fleet, each result yielded in input
order as it lands, with at most `max_in_flight` samples held by the client.

Samples are gathered into jobs of `job_size` and submitted as the iterable yields them;
once `max_in_flight` samples are out, the oldest job's results are waited for and yielded
before more are taken from the iterable. So memory stays flat however long the iterable
is, and a generator is read only as fast as the fleet answers. Sample ids are the
samples' positions in the stream (from `start`).

A bad sample is a failed `SampleResult` in the stream, with its code, never an exception
that ends it. If Redis fails or stalls, the stream raises `StreamInterruptedError` (a
`BrokerError`) within the socket timeout, with `position`: the number of results
yielded, counting from `start`. `stream(model, islice(samples, position - start, None),
start=position)` goes on from there (results of jobs in flight at the failure are
computed again).
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from inferfleet.errors import BadArgumentError, BrokerError, StreamInterruptedError
from inferfleet.schemas import JobResult, SampleResult

if TYPE_CHECKING:
    from inferfleet.producer.aio import AsyncClient
    from inferfleet.producer.client import Client, Job


def stream_job_size(max_in_flight: int, job_size: int | None) -> int:
    """The samples per job: `job_size`, else a quarter of `max_in_flight` (at most 256),
    so that several jobs are in flight at once.

    Raises:
        BadArgumentError: for a bound below one, or jobs bigger than it.
    """
    if not isinstance(max_in_flight, int) or max_in_flight < 1:
        raise BadArgumentError(f"max_in_flight must be >= 1, got {max_in_flight!r}")
    size = job_size if job_size is not None else max(1, min(256, max_in_flight // 4))
    if not isinstance(size, int) or not 1 <= size <= max_in_flight:
        raise BadArgumentError(f"job_size must be in [1, max_in_flight={max_in_flight}], "
                               f"got {job_size!r}")
    return size


def stream(client: Client, model: str, samples: Iterable[Any], *, max_in_flight: int,
           job_size: int | None, start: int, timeout_s: float,
           options: dict[str, Any]) -> Iterator[SampleResult]:
    """`Client.stream` (see the module docstring)."""
    size = stream_job_size(max_in_flight, job_size)
    in_flight: deque[Job] = deque()
    held = 0
    position = next_id = start
    chunk: list[Any] = []
    try:
        for sample in samples:
            chunk.append(sample)
            if len(chunk) < size:
                continue
            while held + len(chunk) > max_in_flight:  # wait for room before sending more
                job = in_flight.popleft()
                held -= job.n_samples
                for result in job.result(timeout=timeout_s).samples:
                    yield result
                    position += 1
            in_flight.append(_submit(client, model, chunk, next_id, options))
            held += len(chunk)
            next_id += len(chunk)
            chunk = []
        if chunk:
            in_flight.append(_submit(client, model, chunk, next_id, options))
        while in_flight:
            for result in in_flight.popleft().result(timeout=timeout_s).samples:
                yield result
                position += 1
    except BrokerError as exc:
        raise StreamInterruptedError(position, exc) from exc


def _submit(client: Client, model: str, chunk: list[Any], first_id: int,
            options: dict[str, Any]) -> Job:
    ids = [str(i) for i in range(first_id, first_id + len(chunk))]
    return client.submit(model, chunk, sample_ids=ids, **options)


async def stream_async(client: AsyncClient, model: str,
                       samples: AsyncIterable[Any] | Iterable[Any], *, max_in_flight: int,
                       job_size: int | None, start: int, timeout_s: float,
                       options: dict[str, Any]) -> AsyncIterator[SampleResult]:
    """`AsyncClient.stream`: `stream` over an async (or plain) iterable."""
    size = stream_job_size(max_in_flight, job_size)
    in_flight: deque[Job] = deque()
    held = 0
    position = next_id = start
    chunk: list[Any] = []

    async def submit(first_id: int, batch: list[Any]) -> Job:
        ids = [str(i) for i in range(first_id, first_id + len(batch))]
        return await client.submit(model, batch, sample_ids=ids, **options)

    try:
        async for sample in _aiter(samples):
            chunk.append(sample)
            if len(chunk) < size:
                continue
            while held + len(chunk) > max_in_flight:
                job = in_flight.popleft()
                held -= job.n_samples
                for result in (await _result(client, job, timeout_s)).samples:
                    yield result
                    position += 1
            in_flight.append(await submit(next_id, chunk))
            held += len(chunk)
            next_id += len(chunk)
            chunk = []
        if chunk:
            in_flight.append(await submit(next_id, chunk))
        while in_flight:
            job = in_flight.popleft()
            for result in (await _result(client, job, timeout_s)).samples:
                yield result
                position += 1
    except BrokerError as exc:
        raise StreamInterruptedError(position, exc) from exc


async def _result(client: AsyncClient, job: Job, timeout_s: float) -> JobResult:
    return await client.result(job.id, timeout=timeout_s, deadline_at=job.deadline_at)


async def _aiter(samples: AsyncIterable[Any] | Iterable[Any]) -> AsyncIterator[Any]:
    if isinstance(samples, AsyncIterable):
        async for sample in samples:
            yield sample
    else:
        for sample in samples:
            yield sample
