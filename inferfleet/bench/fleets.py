"""The worker processes the bench measures, started and stopped by pid: the baseline's
Celery worker, the bench's fleet (told how many worker processes share the machine), and
the fleet as the README starts it (`inferfleet worker`, twice, every setting default)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from inferfleet.fleet import Process, spawn, stop_processes, wait_for_workers
from inferfleet.settings import Settings


@contextmanager
def naive_worker(settings: Settings, log_dir: Path) -> Iterator[list[Process]]:
    """The baseline: `python -m inferfleet.bench.naive URL` with Celery's defaults."""
    process = spawn([settings.redis_url], env=os.environ, module="inferfleet.bench.naive",
                    log_path=log_dir / "naive.log")
    yield from _serve(settings, [process], ["naive@"])


@contextmanager
def fleet_workers(settings: Settings, model: str, *, workers: int, log_dir: Path,
                  as_readme: bool = False) -> Iterator[list[Process]]:
    """`workers` fleet worker processes serving `model`. The bench's own fleet tells each
    how many share the machine (`INFERFLEET_WORKER_PROCESSES`); `as_readme` starts them
    with nothing but the Redis URL and the models folder, as a user following the README
    does."""
    env = {**os.environ, "INFERFLEET_REDIS_URL": settings.redis_url,
           "INFERFLEET_MODELS_DIR": str(settings.models_dir)}
    env = {k: v for k, v in env.items() if not k.startswith("INFERFLEET_")
           or k in ("INFERFLEET_REDIS_URL", "INFERFLEET_MODELS_DIR")}
    if not as_readme:
        env["INFERFLEET_WORKER_PROCESSES"] = str(workers)
    kind = "readme" if as_readme else "bench"
    names = [f"{kind}{i}@" for i in range(workers)]
    processes = [spawn(["worker", "--models", model, f"--hostname={name}%h",
                        "--loglevel=WARNING"], env=env, log_path=log_dir / f"{name[:-1]}.log")
                 for name in names]
    yield from _serve(settings, processes, names)


def _serve(settings: Settings, processes: list[Process], names: list[str]
           ) -> Iterator[list[Process]]:
    try:
        wait_for_workers(settings, names, timeout_s=90, processes=processes)
        yield processes
    finally:
        stop_processes(processes)
