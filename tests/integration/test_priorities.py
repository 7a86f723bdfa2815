"""Priorities against a real worker: a `high` job overtakes a bulk backfill queued before
it, from `Client` and from a plain Celery client; lower levels still get their share of
takes under a flood of higher work. Each is shown by what is still queued when a job
ends, never by a time limit."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from celery import Celery
from conftest import StartWorker
from faultkit import holdout_rows

from inferfleet import Client, keys
from inferfleet.codec import encode_array
from inferfleet.errors import BadArgumentError
from inferfleet.settings import Settings, load_settings


def queued(client: Client, model: str, priority: str) -> int:
    """Jobs still waiting in one priority's list of the model's queue."""
    return int(client.redis.llen(keys.priority_list(keys.model_queue(model), priority)))


def test_a_high_job_overtakes_the_bulk_backfill_queued_before_it(
        private_settings: Settings, start_private_worker: StartWorker,
        models_dir: Path) -> None:
    start_private_worker(models="digits_mlp")
    rows = holdout_rows(models_dir, 50_000)
    celery = Celery(broker=private_settings.redis_url)
    celery.conf.update(task_serializer="json", accept_content=["json"])
    with Client(settings=private_settings) as client:
        client.submit("digits_mlp", rows[:1]).result(timeout=30)  # warm
        backfill = client.submit_many("digits_mlp", rows, job_size=256)
        interactive = client.submit("digits_mlp", rows[:1], priority="high")
        foreign_id = str(uuid.uuid4())
        celery.send_task(keys.TASK_NAME, task_id=foreign_id,
                         kwargs={"v": 1, "model": "digits_mlp", "inputs": [encode_array(rows[0])]},
                         queue=keys.priority_list(keys.model_queue("digits_mlp"), "high"))
        assert interactive.result(timeout=60).status == "succeeded"
        left_behind = queued(client, "digits_mlp", "normal")
        assert client.result(foreign_id, timeout=60).status == "succeeded"
        left_behind_foreign = queued(client, "digits_mlp", "normal")
        assert [r.status for r in client.results([j.id for j in backfill], timeout=300)] == \
            ["succeeded"] * len(backfill)
    celery.close()
    # Both ended while most of the 196 jobs queued before them still waited.
    assert left_behind >= len(backfill) // 2, left_behind
    assert left_behind_foreign >= len(backfill) // 2, left_behind_foreign


def test_normal_and_low_jobs_get_their_share_of_takes_under_a_flood_of_high_ones(
        private_settings: Settings, start_private_worker: StartWorker,
        models_dir: Path) -> None:
    start_private_worker(models="digits")
    rows = holdout_rows(models_dir, 5000)
    with Client(settings=private_settings) as client:
        client.submit("digits", rows[:1]).result(timeout=30)  # warm
        flood = client.submit_many("digits", rows, job_size=1, priority="high")
        later = {level: client.submit_many("digits", rows[:30], job_size=1, priority=level)
                 for level in ("low", "normal")}
        still_high = {}
        for level, jobs in later.items():
            results = client.results([job.id for job in jobs], timeout=120)
            assert {r.status for r in results} == {"succeeded"}
            still_high[level] = queued(client, "digits", "high")
        client.results([job.id for job in flood], timeout=300)
    # The 30 low and 30 normal jobs, queued behind 5,000 high ones, ended long before the
    # high list emptied: one take in ten begins with each lower level.
    assert min(still_high.values()) > 1000, still_high


def test_a_priority_that_is_not_a_level_is_refused_with_the_levels() -> None:
    client = Client(settings=load_settings(redis_url="redis://127.0.0.1:9/0"))
    with pytest.raises(BadArgumentError, match="priority 'urgent' must be one of 'high', "
                                               "'normal', 'low'"):
        client.submit("digits", [[0.0] * 64], priority="urgent", validate=False)
    client.close()
