"""A whole fleet on one machine: embedded Redis, worker processes and Flower.

Every child is started by this process, in its own process group, and stopped by its pid:
SIGTERM first (Celery's warm shutdown finishes the jobs in hand), SIGKILL if it lingers.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

import redis

from inferfleet.celery_app import make_app
from inferfleet.embedded import EmbeddedRedis
from inferfleet.errors import ServerError
from inferfleet.fleetfile import fleet_password, forget_fleet, live_fleet, record_fleet
from inferfleet.settings import Settings, mask_url

logger = logging.getLogger(__name__)

Process = subprocess.Popen[bytes]


def spawn(args: Sequence[str], *, env: Mapping[str, str], log_path: Path,
          module: str = "inferfleet") -> Process:
    """Start `python -m MODULE ARGS` in its own process group, output to `log_path`."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        return subprocess.Popen([sys.executable, "-m", module, *args], env=dict(env),
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def stop_processes(processes: Sequence[Process], *, timeout_s: float = 20.0) -> None:
    """SIGTERM each process by pid, then SIGKILL those still alive after `timeout_s`."""
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    for process in processes:
        try:
            process.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_for_workers(settings: Settings, names: Sequence[str], *, timeout_s: float,
                     processes: Sequence[Process] = ()) -> None:
    """Block until a Celery worker (of any app) on `settings.redis_url` whose node name
    starts with each of `names` answers a ping.

    Raises:
        ServerError: if one of `processes` exits, or the workers are not ready in time.
    """
    app = make_app(settings)
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            for process in processes:
                if process.poll() is not None:
                    raise ServerError(f"{process.args!r} exited with {process.returncode}")
            try:
                replies = app.control.ping(timeout=0.5) or []
            except (redis.ConnectionError, OSError):
                # kombu pools connections per URL for the whole process: after a Redis
                # restart the first use of a pooled one fails, and the next reconnects.
                continue
            answered = {node for reply in replies for node in reply}
            if all(any(node.startswith(name) for node in answered) for name in names):
                return
    finally:
        app.close()
    raise ServerError(f"workers {list(names)} did not answer within {timeout_s:g} s")


class Fleet:
    """Starts and stops the processes of a one-machine fleet (a context manager)."""

    def __init__(self, settings: Settings, *, workers: int = 1, flower: bool = True,
                 embedded_redis: bool = True) -> None:
        self.settings = settings
        self.workers = workers
        self.flower = flower
        self.redis = EmbeddedRedis(settings.data_dir / "redis",
                                   password=fleet_password(settings.data_dir)) \
            if embedded_redis else None
        self.log_dir = (settings.data_dir / "logs").resolve()
        self.children: list[Process] = []

    @property
    def redis_url(self) -> str:
        return self.redis.url if self.redis else self.settings.redis_url

    def child_env(self) -> dict[str, str]:
        """The environment of every child: this one, pointed at the fleet's Redis."""
        return {**os.environ, "INFERFLEET_REDIS_URL": self.redis_url,
                "INFERFLEET_MODELS_DIR": str(self.settings.models_dir),
                "INFERFLEET_WORKER_PROCESSES": str(self.workers)}

    def start(self, *, ready_timeout_s: float = 60.0) -> Fleet:
        """Start Redis, the workers and Flower; return once every worker answers a ping.

        Raises:
            ServerError: if an `up` already serves this data folder, or a process exits
                early, or the workers are not ready in time.
        """
        if self.redis:
            live = live_fleet(self.settings.data_dir)
            if live is not None:
                raise ServerError(
                    f"an inferfleet fleet (pid {live.pid}) already runs from data folder "
                    f"{self.settings.data_dir.resolve()}, at {mask_url(live.redis_url)}: stop "
                    "it first (Ctrl-C where it runs, or kill it by pid), or give this one "
                    "another INFERFLEET_DATA_DIR")
            self.redis.start()
            record_fleet(self.settings.data_dir, self.redis.url)
        names = [f"worker{index}@" for index in range(self.workers)]
        for index, name in enumerate(names):
            port = self.settings.metrics_port and self.settings.metrics_port + index
            self._spawn(f"worker-{index}", ["worker", f"--hostname={name}%h",
                                            f"--metrics-port={port}"])
        if self.flower:
            self._spawn("flower", ["flower", "--port", str(self.settings.flower_port)])
        try:
            wait_for_workers(self.settings.model_copy(update={"redis_url": self.redis_url}),
                             names, timeout_s=ready_timeout_s, processes=self.children)
        except ServerError as exc:
            self.stop()
            raise ServerError(f"{exc}; see the logs in {self.log_dir}") from exc
        return self

    def _spawn(self, name: str, args: list[str]) -> None:
        self.children.append(spawn(args, env=self.child_env(),
                                   log_path=self.log_dir / f"{name}.log"))

    def stop(self, *, timeout_s: float = 20.0) -> None:
        """Stop the children by pid (SIGTERM, then SIGKILL), then Redis."""
        stop_processes(self.children, timeout_s=timeout_s)
        self.children.clear()
        if self.redis:
            self.redis.stop()
            forget_fleet(self.settings.data_dir)

    def __enter__(self) -> Fleet:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
