"""`rediss://`: producers and workers over TLS with the server's certificate checked."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import start_redis, worker_starter
from tlsproxy import TlsProxy

from inferfleet import Client
from inferfleet.errors import BrokerError
from inferfleet.fleet import stop_processes
from inferfleet.settings import load_settings


@pytest.fixture
def tls_proxy(tmp_path: Path) -> Iterator[TlsProxy]:
    server = start_redis(tmp_path / "redis")
    proxy = TlsProxy(server.port, tmp_path / "tls").start()
    yield proxy
    proxy.stop()
    server.stop()


def test_workers_and_clients_speak_tls_and_check_the_servers_certificate(
        tls_proxy: TlsProxy, tmp_path: Path, models_dir: Path) -> None:
    url = f"rediss://127.0.0.1:{tls_proxy.port}/0?ssl_ca_certs={tls_proxy.ca_file}"
    settings = load_settings(redis_url=url, models_dir=models_dir)
    start, started = worker_starter(settings, tmp_path / "logs")
    try:
        start(models="digits")
        with Client(settings=settings) as client:
            result = client.submit("digits", np.zeros((3, 64), np.float32)).result(timeout=30)
            assert result.status == "succeeded"
            assert client.redis.connection_pool.connection_kwargs["ssl_cert_reqs"] == 2

        # The system's CAs do not know the test CA: refused, with the reason.
        untrusted = load_settings(redis_url=f"rediss://127.0.0.1:{tls_proxy.port}/0",
                                  models_dir=models_dir, socket_timeout_s=2)
        with Client(settings=untrusted) as client, pytest.raises(
                BrokerError, match="certificate verify failed"):
            client.status("any-job")
    finally:
        stop_processes(started)
