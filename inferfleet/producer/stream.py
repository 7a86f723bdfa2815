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


class _Window:
    """The bookkeeping both streams share: the chunk being gathered, the jobs out (oldest
    first), how many samples they hold, and the ids to give next."""

    def __init__(self, max_in_flight: int, job_size: int | None, start: int) -> None:
        self.size = stream_job_size(max_in_flight, job_size)
        self.max_in_flight = max_in_flight
        self.in_flight: deque[Job] = deque()
        self.held = 0
        self.next_id = start
        self.chunk: list[Any] = []

    def gather(self, sample: Any) -> bool:
        """Add a sample; whether the chunk is a whole job now."""
        self.chunk.append(sample)
        return len(self.chunk) >= self.size

    def full(self) -> bool:
        """Whether the chunk must wait for the oldest job's results to be sent."""
        return bool(self.in_flight) and self.held + len(self.chunk) > self.max_in_flight

    def oldest(self) -> Job:
        job = self.in_flight.popleft()
        self.held -= job.n_samples
        return job

    def take_chunk(self) -> tuple[list[Any], list[str]]:
        """The chunk to send and its sample ids (positions in the stream)."""
        chunk, first = self.chunk, self.next_id
        self.chunk, self.next_id = [], first + len(chunk)
        return chunk, [str(i) for i in range(first, first + len(chunk))]

    def sent(self, job: Job) -> None:
        self.in_flight.append(job)
        self.held += job.n_samples


def stream(client: Client, model: str, samples: Iterable[Any], *, max_in_flight: int,
           job_size: int | None, start: int, timeout_s: float,
           options: dict[str, Any]) -> Iterator[SampleResult]:
    """`Client.stream` (see the module docstring)."""
    window = _Window(max_in_flight, job_size, start)
    position = start

    def send() -> None:
        chunk, ids = window.take_chunk()
        window.sent(client.submit(model, chunk, sample_ids=ids, **options))

    try:
        for sample in samples:
            if not window.gather(sample):
                continue
            while window.full():  # wait for room before sending more
                for result in window.oldest().result(timeout=timeout_s).samples:
                    yield result
                    position += 1
            send()
        if window.chunk:
            send()
        while window.in_flight:
            for result in window.oldest().result(timeout=timeout_s).samples:
                yield result
                position += 1
    except BrokerError as exc:
        raise StreamInterruptedError(position, exc) from exc


async def stream_async(client: AsyncClient, model: str,
                       samples: AsyncIterable[Any] | Iterable[Any], *, max_in_flight: int,
                       job_size: int | None, start: int, timeout_s: float,
                       options: dict[str, Any]) -> AsyncIterator[SampleResult]:
    """`AsyncClient.stream`: `stream` over an async (or plain) iterable."""
    window = _Window(max_in_flight, job_size, start)
    position = start

    async def send() -> None:
        chunk, ids = window.take_chunk()
        window.sent(await client.submit(model, chunk, sample_ids=ids, **options))

    try:
        async for sample in _aiter(samples):
            if not window.gather(sample):
                continue
            while window.full():
                for result in (await _result(client, window.oldest(), timeout_s)).samples:
                    yield result
                    position += 1
            await send()
        if window.chunk:
            await send()
        while window.in_flight:
            for result in (await _result(client, window.oldest(), timeout_s)).samples:
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
