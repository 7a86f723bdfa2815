"""Real servers for integration tests: a Redis-compatible server on a free loopback port
(the embedded binary, never the machine's own Redis) and real `inferfleet worker`
processes, each stopped by its pid at teardown. A missing binary fails, never skips."""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from inferfleet import Client
from inferfleet.embedded import EmbeddedRedis, server_binary
from inferfleet.fleet import Process, spawn, stop_processes, wait_for_workers
from inferfleet.settings import Settings, load_settings

StartWorker = Callable[..., Process]
_worker_numbers = itertools.count()


def start_redis(folder: Path) -> EmbeddedRedis:
    assert server_binary().is_file(), "the embedded redis server binary is missing"
    return EmbeddedRedis(folder, appendonly=False).start()


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    server = start_redis(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture
def private_settings(tmp_path: Path, models_dir: Path) -> Iterator[Settings]:
    """Settings on a Redis of this test's own (for tests that start and stop workers)."""
    server = start_redis(tmp_path / "redis")
    yield load_settings(redis_url=server.url, models_dir=models_dir)
    server.stop()


@pytest.fixture(scope="module")
def settings(redis_server: EmbeddedRedis, models_dir: Path) -> Settings:
    return load_settings(redis_url=redis_server.url, models_dir=models_dir)


def worker_starter(settings: Settings, log_dir: Path
                   ) -> tuple[StartWorker, list[Process]]:
    """A function that starts a worker and waits for it, and the list of those started."""
    started: list[Process] = []

    def start(*, models: str | None = None, wait: bool = True, **env: str) -> Process:
        name = f"test{next(_worker_numbers)}@"
        child_env = {**os.environ, "INFERFLEET_REDIS_URL": settings.redis_url,
                     "INFERFLEET_MODELS_DIR": str(settings.models_dir),
                     "INFERFLEET_ORT_THREADS": "1",
                     **{f"INFERFLEET_{k.upper()}": v for k, v in env.items()}}
        args = ["worker", f"--hostname={name}%h", *(["--models", models] if models else [])]
        process = spawn(args, env=child_env, log_path=log_dir / f"{name[:-1]}.log")
        started.append(process)
        if wait:
            wait_for_workers(settings, [name], timeout_s=60, processes=[process])
        return process

    return start, started


@pytest.fixture
def start_private_worker(private_settings: Settings, tmp_path: Path) -> Iterator[StartWorker]:
    """Starts workers on this test's own Redis; all are stopped when the test ends."""
    start, started = worker_starter(private_settings, tmp_path / "logs")
    yield start
    stop_processes(started)


@pytest.fixture(scope="module")
def start_worker(settings: Settings, tmp_path_factory: pytest.TempPathFactory
                 ) -> Iterator[StartWorker]:
    start, started = worker_starter(settings, tmp_path_factory.mktemp("logs"))
    yield start
    stop_processes(started)


@pytest.fixture(scope="module")
def worker(start_worker: StartWorker) -> Process:
    return start_worker()


@pytest.fixture
def client(settings: Settings) -> Iterator[Client]:
    with Client(settings=settings) as client:
        yield client
