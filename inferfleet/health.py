"""Can the fleet serve? The answer of `inferfleet health` and of a worker's `/readyz`.

Every worker announces itself each heartbeat interval: its node name and the models it
serves in `keys.WORKERS`, scored by Redis's clock in `keys.WORKERS_SEEN` (so worker
clocks need not agree). The fleet can serve a model when:

- Redis answers within the socket timeout;
- a worker that serves the model announced itself within `heartbeat_timeout_s`;
- the oldest job waiting in the model's queue is younger than `max_queue_age_s`;
- no message was dead-lettered within `dead_letter_window_s` (the list is growing).

Each failed condition is a problem with its reason; the report is healthy with none.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import orjson
import redis

from inferfleet import keys
from inferfleet.ledger import redis_text
from inferfleet.queues import read_queues
from inferfleet.settings import Settings, mask_url

#: Announcements older than this are removed by the next announcement.
_FORGET_AFTER_S = 3600

# KEYS: workers hash, seen zset.  ARGV: node, record (JSON), forget-after seconds.
_ANNOUNCE = """
local now = tonumber(redis.call('TIME')[1])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], now, ARGV[1])
local gone = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now - tonumber(ARGV[3]))
for _, node in ipairs(gone) do
  redis.call('HDEL', KEYS[1], node)
  redis.call('ZREM', KEYS[2], node)
end
return now
"""

# KEYS: seen zset.  ARGV: within seconds.  The nodes seen within that long, by Redis's clock.
_SEEN_WITHIN = """
local now = tonumber(redis.call('TIME')[1])
return redis.call('ZRANGEBYSCORE', KEYS[1], now - tonumber(ARGV[1]), '+inf')
"""


def announce(client: redis.Redis, node: str, models: Sequence[str]) -> None:
    """Say that worker `node` is alive and serves `models` (a housekeeping duty)."""
    record = orjson.dumps({"models": sorted(models)})
    client.eval(_ANNOUNCE, 2, keys.WORKERS, keys.WORKERS_SEEN, node, record,
                _FORGET_AFTER_S)


@dataclass
class ModelHealth:
    """One model as the fleet serves it."""

    workers: list[str] = field(default_factory=list)  # live workers that serve it
    queued: int = 0
    oldest_job_age_s: float = 0.0


@dataclass
class HealthReport:
    """The fleet's state and every reason it cannot serve (none: healthy)."""

    redis: str
    models: dict[str, ModelHealth] = field(default_factory=dict)
    dead_letters: int = 0
    recent_dead_letters: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        return not self.problems

    def to_json(self) -> bytes:
        return orjson.dumps({"healthy": self.healthy, **asdict(self)},
                            option=orjson.OPT_INDENT_2)


def check(client: redis.Redis, settings: Settings, *, models: Sequence[str] = (),
          max_queue_age_s: float = 300.0, dead_letter_window_s: float = 300.0
          ) -> HealthReport:
    """The fleet's health for `models` (default: every model some worker published or
    serves).

    Raises:
        redis.RedisError: if Redis cannot be reached (the caller names it a problem).
    """
    report = HealthReport(redis=mask_url(settings.redis_url))
    live = [redis_text(n) for n in client.eval(
        _SEEN_WITHIN, 1, keys.WORKERS_SEEN, settings.heartbeat_timeout_s)]
    records = client.hmget(keys.WORKERS, live) if live else []
    serving: dict[str, list[str]] = {}
    for node, raw in zip(live, records, strict=True):
        for model in orjson.loads(raw)["models"] if raw else []:
            serving.setdefault(model, []).append(node)
    published = {redis_text(name) for name in client.hkeys(keys.MODELS_HASH)}
    names = list(models) or sorted(published | set(serving))
    if not names:
        report.problems.append("no worker has published a model on this Redis: is a worker "
                               "running (`inferfleet worker` or `inferfleet up`)?")
    _queues(client, report, names, serving, max_queue_age_s)
    _dead_letters(client, report, dead_letter_window_s)
    return report


def _queues(client: redis.Redis, report: HealthReport, names: Sequence[str],
            serving: dict[str, list[str]], max_queue_age_s: float) -> None:
    for name, queue in read_queues(client, names).items():
        model = ModelHealth(sorted(serving.get(name, [])), queue.depth, queue.oldest_age_s)
        report.models[name] = model
        if not model.workers:
            report.problems.append(f"model {name!r}: no live worker serves it (none "
                                   "announced itself within heartbeat_timeout_s)")
        if model.oldest_job_age_s > max_queue_age_s:
            report.problems.append(
                f"model {name!r}: its oldest queued job waits {model.oldest_job_age_s:.0f} s,"
                f" over {max_queue_age_s:.0f} s ({model.queued} queued): the fleet falls "
                "behind")


def _dead_letters(client: redis.Redis, report: HealthReport, window_s: float) -> None:
    from inferfleet.deadletters import DeadLetters

    letters = DeadLetters(client)
    report.dead_letters = letters.count()
    report.recent_dead_letters = len(letters.since(time.time() - window_s))
    if report.recent_dead_letters:
        report.problems.append(
            f"{report.recent_dead_letters} message(s) dead-lettered in the last "
            f"{window_s:.0f} s (`inferfleet dead list` says why)")


def render(report: HealthReport) -> str:
    """The lines `inferfleet health` prints."""
    lines = [f"{'healthy' if report.healthy else 'UNHEALTHY'}: redis {report.redis}"]
    for name, model in report.models.items():
        lines.append(f"  {name}: {len(model.workers)} live worker(s), {model.queued} queued, "
                     f"oldest {model.oldest_job_age_s:.0f} s")
    lines.append(f"  dead letters: {report.dead_letters} ({report.recent_dead_letters} "
                 "recent)")
    lines += [f"problem: {problem}" for problem in report.problems]
    return "\n".join(lines)


def unreachable(settings: Settings, exc: BaseException) -> HealthReport:
    """The report when Redis cannot be reached at all."""
    return HealthReport(redis=mask_url(settings.redis_url), problems=[
        f"redis {mask_url(settings.redis_url)} cannot be reached within socket_timeout_s="
        f"{settings.socket_timeout_s:g}: {exc}"])
