"""The command line as a user runs it: real processes, embedded Redis, Ctrl-C."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import psutil
import pytest
import redis

from inferfleet.embedded import free_port


def run_cli(*args: str, cwd: Path, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "inferfleet", *args], cwd=cwd, text=True,
                          capture_output=True, timeout=timeout,
                          env={**os.environ, "INFERFLEET_FLOWER_PORT": str(free_port())})


def test_the_demo_accounts_for_every_sample_and_matches_onnx_runtime(tmp_path: Path) -> None:
    done = run_cli("demo", "--passes", "2", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "samples: 1080 of 1080 accounted for, by status {'success': 1080}" in done.stdout
    assert "equal to in-process ONNX Runtime on the same rows: yes" in done.stdout
    accuracy = float(re.search(r"accuracy vs labels: ([0-9.]+)", done.stdout).group(1))
    assert accuracy > 0.95


def test_models_lists_the_shipped_models_with_accuracy(tmp_path: Path) -> None:
    done = run_cli("models", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert re.search(r"^digits\tversion 1\tinputs pixels:float32\[64\]\toutputs "
                     r"label:int64\[\],probabilities:float32\[10\]\tbatch axis dynamic\t"
                     r"[0-9.]+ MB\taccuracy 0\.97\d+\tproviders CPUExecutionProvider\t",
                     done.stdout, re.MULTILINE)
    assert re.search(r"^digits_mlp\t", done.stdout, re.MULTILINE)


def test_up_runs_redis_workers_and_flower_and_ctrl_c_stops_them_all(tmp_path: Path) -> None:
    # SIGINT ignored on entry, as a shell starts background jobs: `up` must still stop.
    up = subprocess.Popen([sys.executable, "-m", "inferfleet", "up", "--workers", "2"],
                          cwd=tmp_path, text=True, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT,
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
                          env={**os.environ, "INFERFLEET_FLOWER_PORT": str(free_port())})
    try:
        assert up.stdout is not None
        banner = up.stdout.readline()
        assert "inferfleet up: redis redis://:***@127.0.0.1:" in banner, banner
        children = psutil.Process(up.pid).children()
        assert len(children) == 4, children  # redis, two workers, flower
        _the_fleet_is_locked_and_found_by_clients_with_no_export(tmp_path, up.pid)
        up.send_signal(signal.SIGINT)
        assert up.wait(60) == 0
        assert "inferfleet: stopped" in up.stdout.read()
        deadline = time.monotonic() + 10
        while any(c.is_running() and c.status() != psutil.STATUS_ZOMBIE for c in children):
            assert time.monotonic() < deadline, "a child outlived `inferfleet up`"
            time.sleep(0.1)
        assert (tmp_path / ".inferfleet" / "redis" / "appendonlydir").is_dir()
        assert not (tmp_path / ".inferfleet" / "fleet.json").exists()  # forgotten at stop
    finally:
        if up.poll() is None:
            up.kill()
            pytest.fail("inferfleet up did not stop on SIGINT")


def _the_fleet_is_locked_and_found_by_clients_with_no_export(folder: Path, up_pid: int) -> None:
    """What `up` leaves for the machine: a password nobody else can read, a Redis that
    refuses anyone without it, clients that find it, and no second `up` on its files."""
    record = folder / ".inferfleet" / "fleet.json"
    assert record.stat().st_mode & 0o777 == 0o600
    assert (folder / ".inferfleet" / "redis-password").stat().st_mode & 0o777 == 0o600
    fleet = json.loads(record.read_text())
    assert fleet["pid"] == up_pid
    port = urlsplit(fleet["redis_url"]).port
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=port).ping()
    env = {k: v for k, v in os.environ.items() if k != "INFERFLEET_REDIS_URL"}
    found = subprocess.run([sys.executable, "-c", "from inferfleet import Client; "
                            "print(sorted(Client().models()))"], cwd=folder, env=env,
                           capture_output=True, text=True, timeout=60)
    assert found.returncode == 0 and "'digits'" in found.stdout, found.stderr
    second = run_cli("up", "--workers", "1", cwd=folder, timeout=60)
    assert second.returncode != 0
    assert f"an inferfleet fleet (pid {up_pid}) already runs from data folder" in second.stderr
    assert ":***@127.0.0.1" in second.stderr and fleet["redis_url"] not in second.stderr
