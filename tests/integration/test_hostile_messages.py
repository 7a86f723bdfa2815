"""A live worker survives any message pushed onto its queue, and every job a message
names ends terminal: the admission rules drilled with generated messages."""

from __future__ import annotations

import json

import numpy as np
from hostile_messages import hostile_message
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from inferfleet import Client, keys
from inferfleet.admission import job_id_of
from inferfleet.fleet import Process


def readable_job_ids(messages: list[bytes]) -> set[str]:
    ids = set()
    for raw in messages:
        try:
            headers = json.loads(raw).get("headers")
        except (ValueError, AttributeError):
            continue
        if isinstance(headers, dict) and (job_id := job_id_of(headers)) is not None:
            ids.add(job_id)
    return ids


# No shrinking: each example is a round of a live worker (seconds); a failure prints the
# messages that made it.
@settings(max_examples=8, phases=[Phase.explicit, Phase.reuse, Phase.generate],
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(st.lists(hostile_message, min_size=20, max_size=30))
def test_a_live_worker_survives_every_generated_message_and_each_named_job_ends(
        worker: Process, client: Client, messages: list[bytes]) -> None:
    queue = keys.model_queue("digits")
    client.redis.lpush(queue, *messages)
    after = client.submit("digits", np.zeros((1, 64), np.float32))  # queued behind them
    assert after.result(timeout=60).status == "succeeded"
    assert worker.poll() is None, "the worker exited"
    for job_id in readable_job_ids(messages):
        assert client.result(job_id, timeout=30).status  # terminal, whatever it is
    assert client.redis.llen(queue) == 0
