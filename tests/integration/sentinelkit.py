"""A Sentinel group on loopback for the failover drills: a primary, a replica and three
Sentinels (the embedded binary run with --sentinel), each on a free port and stopped by
its pid, also when starting fails half-way."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import redis
from redis.sentinel import Sentinel

from inferfleet.embedded import EmbeddedRedis, free_port, server_binary

MASTER = "inferfleet"


class SentinelGroup:
    """Start with `start()`, stop with `stop()`; `url` is the fleet's redis_url."""

    def __init__(self, folder: Path, *, down_after_ms: int = 1000) -> None:
        self.folder = folder
        self.down_after_ms = down_after_ms
        self.primary = EmbeddedRedis(folder / "primary")
        self.replica = EmbeddedRedis(folder / "replica", extra_args=[
            "--replicaof", "127.0.0.1", str(self.primary.port)])
        self.sentinel_ports = [free_port() for _ in range(3)]
        self.sentinels: list[subprocess.Popen[bytes]] = []

    @property
    def url(self) -> str:
        return ";".join(f"sentinel://127.0.0.1:{port}" for port in self.sentinel_ports) + "/0"

    def start(self) -> SentinelGroup:
        try:
            self.primary.start()
            self.replica.start()
            for port in self.sentinel_ports:
                self.sentinels.append(self._start_sentinel(port))
            self._wait_until_watched()
        except BaseException:
            self.stop()
            raise
        return self

    def _start_sentinel(self, port: int) -> subprocess.Popen[bytes]:
        folder = self.folder / f"sentinel-{port}"
        folder.mkdir(parents=True, exist_ok=True)
        config = folder / "sentinel.conf"  # a Sentinel rewrites its own config file
        config.write_text(
            f"port {port}\nbind 127.0.0.1\ndir {folder}\nlogfile {folder / 'sentinel.log'}\n"
            f"sentinel monitor {MASTER} 127.0.0.1 {self.primary.port} 2\n"
            f"sentinel down-after-milliseconds {MASTER} {self.down_after_ms}\n"
            f"sentinel failover-timeout {MASTER} 10000\n")
        return subprocess.Popen([str(server_binary()), str(config), "--sentinel"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)

    def _wait_until_watched(self, timeout_s: float = 30.0) -> None:
        """Until the replica is in sync and every Sentinel knows the primary and it."""
        deadline = time.monotonic() + timeout_s
        sentinel = Sentinel([("127.0.0.1", port) for port in self.sentinel_ports],
                            socket_timeout=0.5)
        while time.monotonic() < deadline:
            try:
                link = redis.Redis(port=self.replica.port).info("replication")
                known = all(len(redis.Redis(port=port).sentinel_slaves(MASTER)) == 1
                            for port in self.sentinel_ports)
                if link.get("master_link_status") == "up" and known and \
                        sentinel.discover_master(MASTER)[1] == self.primary.port:
                    return
            except redis.RedisError:
                pass
            time.sleep(0.1)
        raise AssertionError("the Sentinel group did not come up in time")

    def primary_port(self) -> int:
        """The port of whichever server the Sentinels call primary now."""
        sentinel = Sentinel([("127.0.0.1", port) for port in self.sentinel_ports],
                            socket_timeout=0.5)
        return int(sentinel.discover_master(MASTER)[1])

    def kill_primary(self) -> None:
        """SIGKILL the primary, as a lost machine."""
        assert self.primary.process is not None
        self.primary.process.kill()
        self.primary.process.wait(10)

    def stop(self) -> None:
        for process in self.sentinels:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.sentinels:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.replica.stop()
        self.primary.stop()
