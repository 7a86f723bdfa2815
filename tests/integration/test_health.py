"""`inferfleet health` and a worker's `/healthz` and `/readyz`, against a real Redis and
real workers: each reason the fleet cannot serve, and its exit status."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request

import numpy as np
from conftest import StartWorker
from faultkit import wait_until

from inferfleet import Client, keys
from inferfleet.embedded import free_port
from inferfleet.fleet import stop_processes
from inferfleet.settings import Settings

QUICK = {"heartbeat_timeout_s": "2"}


def health(settings: Settings, *args: str, url: str | None = None
           ) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "INFERFLEET_REDIS_URL": url or settings.redis_url,
           "INFERFLEET_HEARTBEAT_TIMEOUT_S": "2", "INFERFLEET_SOCKET_TIMEOUT_S": "2"}
    return subprocess.run([sys.executable, "-m", "inferfleet", "health", *args], env=env,
                          capture_output=True, text=True, timeout=60)


def probe(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_health_says_why_the_fleet_cannot_serve_and_exits_non_zero(
        private_settings: Settings, start_private_worker: StartWorker) -> None:
    nobody = health(private_settings)
    assert nobody.returncode == 1
    assert "no worker has published a model on this Redis" in nobody.stdout

    port = free_port()
    worker = start_private_worker(models="digits", metrics_port=str(port), **QUICK)
    done = health(private_settings)
    assert done.returncode == 0, done.stdout
    assert "healthy: redis" in done.stdout and "digits: 1 live worker(s)" in done.stdout
    report = json.loads(health(private_settings, "--json", "--model", "digits").stdout)
    assert report["healthy"] and report["models"]["digits"]["workers"][0].startswith("test")
    assert probe(port, "/healthz") == (200, "ok\n")
    assert probe(port, "/readyz") == (200, "ready\n")

    with Client(settings=private_settings) as client:  # a queue nobody drains
        client.submit("ghost", np.zeros((1, 2), np.float32), validate=False)
    time.sleep(1.2)
    behind = health(private_settings, "--model", "ghost", "--max-queue-age", "1")
    assert behind.returncode == 1
    assert "model 'ghost': no live worker serves it" in behind.stdout
    assert re.search(r"its oldest queued job waits \d+ s, over 1 s \(1 queued\)",
                     behind.stdout)

    with Client(settings=private_settings) as client:  # garbage: dead-lettered
        client.redis.lpush(keys.model_queue("digits"), b"not a message")
        wait_until(lambda: client.redis.llen(keys.DEAD_LETTERS) == 1, what="a dead letter")
    dead = health(private_settings, "--model", "digits")
    assert dead.returncode == 1
    assert "1 message(s) dead-lettered in the last 300 s" in dead.stdout
    assert health(private_settings, "--model", "digits", "--dead-letter-window",
                  "0.001").returncode == 0

    stop_processes([worker])
    # The dead letter above makes it unhealthy already: wait for the reason itself.
    wait_until(lambda: "model 'digits': no live worker serves it" in health(
        private_settings, "--model", "digits").stdout,
        timeout_s=30, what="the stopped worker to lapse")

    gone = health(private_settings, url=f"redis://127.0.0.1:{free_port()}/0")
    assert gone.returncode == 1 and "cannot be reached within socket_timeout_s=2" in gone.stdout


def test_readyz_fails_while_the_worker_cannot_reach_redis(
        private_settings: Settings, start_private_worker: StartWorker) -> None:
    import signal

    port = free_port()
    start_private_worker(models="digits", metrics_port=str(port), socket_timeout_s="1")
    assert probe(port, "/readyz") == (200, "ready\n")
    with Client(settings=private_settings) as client:
        pid = int(client.redis.info("server")["process_id"])
    os.kill(pid, signal.SIGSTOP)
    try:
        status, body = probe(port, "/readyz")
    finally:
        os.kill(pid, signal.SIGCONT)
    assert status == 503 and "does not answer" in body
    assert probe(port, "/healthz") == (200, "ok\n")  # alive all the same
    wait_until(lambda: probe(port, "/readyz")[0] == 200, what="ready again")
