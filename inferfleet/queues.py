"""What waits in the models' queues: how many jobs (every priority's list) and how old the
oldest is. Read by the metrics at each scrape and by `inferfleet health`."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis

from inferfleet import keys


@dataclass(frozen=True)
class QueueState:
    """One model's queue: jobs waiting at every priority, and the age of the oldest one
    (0 with none, or none of ours that says when it was submitted)."""

    depth: int
    oldest_age_s: float


def read_queues(client: redis.Redis, models: Sequence[str]) -> dict[str, QueueState]:
    """Each model's queue, in one round trip.

    Raises:
        redis.RedisError: if Redis cannot be reached.
    """
    pipe = client.pipeline(transaction=False)
    for model in models:
        for key in keys.queue_lists(keys.model_queue(model)):
            pipe.llen(key)
            pipe.lindex(key, -1)  # consumers pop from the right: the oldest
    replies = pipe.execute()
    per_model = 2 * len(keys.PRIORITIES)
    now = time.time()
    states = {}
    for index, model in enumerate(models):
        mine = replies[index * per_model:(index + 1) * per_model]
        oldest = [t for t in map(submitted_at, mine[1::2]) if t is not None]
        states[model] = QueueState(sum(int(n) for n in mine[::2]),
                                   max(0.0, now - min(oldest)) if oldest else 0.0)
    return states


def submitted_at(raw: bytes | None) -> float | None:
    """The `submitted_at` of a queued message, if it is one of ours and says."""
    if raw is None:
        return None
    try:
        kwargs: Any = json.loads(json.loads(raw)["body"])[1]
        value = kwargs.get("submitted_at")
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        return None
    return float(value) if isinstance(value, int | float) else None
