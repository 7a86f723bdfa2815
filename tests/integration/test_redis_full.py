"""A Redis at maxmemory (noeviction): submits are refused with a clear error naming what
is full, workers ride it out, keeping their messages, and finish the queue once memory
is freed."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from conftest import StartWorker

from inferfleet import BrokerError, BrokerFullError, Client, Job
from inferfleet.settings import Settings


def test_a_full_redis_refuses_submits_clearly_and_workers_finish_once_it_has_room(
        private_settings: Settings, models_dir: Path, start_private_worker: StartWorker) -> None:
    worker = start_private_worker(models="digits")
    rows = np.zeros((200, 64), np.float32)
    with Client(settings=private_settings) as client:
        used = int(client.redis.info("memory")["used_memory"])
        client.redis.config_set("maxmemory", used + 4 * 2**20)
        accepted: list[Job] = []
        with pytest.raises(BrokerFullError) as full:
            for _ in range(10_000):
                accepted.append(client.submit("digits", rows))
        assert isinstance(full.value, BrokerError)
        assert "maxmemory" in str(full.value) and "nothing of this call" in str(full.value)
        assert accepted, "some jobs went in before Redis filled"
        time.sleep(3)  # the worker meets the full Redis: taking, storing, beating
        assert worker.poll() is None, "the worker exited on a full Redis"
        client.redis.config_set("maxmemory", 0)
        results = client.results([job.id for job in accepted], timeout=120)
        assert {result.status for result in results} == {"succeeded"}
        assert worker.poll() is None
        after = client.submit("digits", rows[:1])
        assert after.result(timeout=30).status == "succeeded"
        print(f"accepted {len(accepted)} jobs before Redis filled; all succeeded after")
