"""`Client.stream` and `AsyncClient.stream`: generators of samples through a real worker,
results in input order, bounded memory, failures in place, a stalled Redis resumed."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import psutil
import pytest
from conftest import StartWorker
from faultkit import holdout_rows

from inferfleet import AsyncClient, Client, StreamInterruptedError
from inferfleet.schemas import SampleResult
from inferfleet.settings import Settings


def rows(models_dir: Path) -> np.ndarray:
    return holdout_rows(models_dir, 540)


def expected_labels(models_dir: Path, x: np.ndarray) -> list[str]:
    session = ort.InferenceSession(str(models_dir / "digits" / "model.onnx"))
    return [str(i) for i in session.run(["probabilities"], {"pixels": x})[0].argmax(axis=1)]


@pytest.mark.usefixtures("worker")
def test_a_generator_streams_in_input_order_and_a_bad_sample_fails_in_place(
        client: Client, models_dir: Path) -> None:
    x = rows(models_dir)
    bad = {5, 1234}

    def samples() -> Iterator[np.ndarray]:
        for i in range(3000):
            row = x[i % len(x)].copy()
            if i in bad:
                row[0] = np.nan
            yield row

    results = list(client.stream("digits", samples(), max_in_flight=256))
    assert [r.sample_id for r in results] == [str(i) for i in range(3000)]
    assert {i for i, r in enumerate(results) if r.status == "failure"} == bad
    assert all(results[i].error is not None and results[i].error.code == "non_finite"
               for i in bad)
    labels = expected_labels(models_dir, x)
    assert all(r.outputs["label"] == labels[i % len(x)]
               for i, r in enumerate(results) if i not in bad)


@pytest.mark.usefixtures("worker")
def test_the_client_holds_at_most_max_in_flight_samples_and_its_memory_stays_flat(
        client: Client, models_dir: Path) -> None:
    x = rows(models_dir)
    produced = 0

    def samples() -> Iterator[np.ndarray]:
        nonlocal produced
        for i in range(100_000):
            produced += 1
            yield x[i % len(x)]

    process = psutil.Process()
    ahead, last = 0, ""
    for index, result in enumerate(client.stream("digits", samples(), max_in_flight=1024)):
        ahead, last = max(ahead, produced - index), result.sample_id
        if index == 20_000:
            early = process.memory_info().rss
    assert last == "99999"
    assert ahead <= 1024 + 256  # the samples out, and the job being gathered
    assert process.memory_info().rss - early < 20 * 2**20


def test_a_stalled_redis_interrupts_the_stream_with_its_position_and_it_resumes(
        private_settings: Settings, start_private_worker: StartWorker,
        models_dir: Path) -> None:
    start_private_worker(models="digits")
    x = rows(models_dir)
    samples = [x[i % len(x)] for i in range(2000)]
    settings = private_settings.model_copy(update={"socket_timeout_s": 1.0})
    got: list[SampleResult] = []
    with Client(settings=settings) as client:
        pid = int(client.redis.info("server")["process_id"])
        stream = client.stream("digits", iter(samples), max_in_flight=200)
        got += itertools.islice(stream, 500)
        os.kill(pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            with pytest.raises(StreamInterruptedError) as stopped:
                got += stream
            assert time.monotonic() - started < 10
        finally:
            os.kill(pid, signal.SIGCONT)
        position = stopped.value.position
        assert position == len(got) >= 500
        got += client.stream("digits", itertools.islice(samples, position, None),
                             max_in_flight=200, start=position)
    assert [r.sample_id for r in got] == [str(i) for i in range(2000)]
    assert {r.status for r in got} == {"success"}


@pytest.mark.usefixtures("worker")
def test_the_async_client_streams_an_async_generator(settings: Settings,
                                                     models_dir: Path) -> None:
    x = rows(models_dir)

    async def samples() -> AsyncIterator[np.ndarray]:
        for i in range(700):
            yield x[i % len(x)]
            if i % 100 == 0:
                await asyncio.sleep(0)

    async def run() -> list[SampleResult]:
        async with AsyncClient(settings=settings) as client:
            return [r async for r in client.stream("digits", samples(), max_in_flight=64)]

    results = asyncio.run(run())
    assert [r.sample_id for r in results] == [str(i) for i in range(700)]
    labels = expected_labels(models_dir, x)
    assert [r.outputs["label"] for r in results] == [labels[i % len(x)] for i in range(700)]
