"""The fleet-wide duties every worker shares, run by its housekeeping loop: beating for
its channels, giving back the messages of channels whose beat lapsed (`liveness`), and
reaping jobs that nobody can finish any more (`Ledger.reap`)."""

from __future__ import annotations

import logging
import time

import redis

from inferfleet.ledger import Ledger
from inferfleet.liveness import Heartbeats, claim_lapsed, give_back_owed
from inferfleet.settings import Settings
from inferfleet.worker.housekeeping import Housekeeping

logger = logging.getLogger(__name__)


#: How many beat intervals a worker must have been beating without a break before it
#: takes other holders for dead: after Redis itself was gone or paused for longer than the
#: heartbeat timeout, every holder's beat has lapsed, and the live ones need a turn to beat
#: again before anyone gives their messages away.
CONNECTED_INTERVALS_BEFORE_CLAIMS = 2


def schedule_upkeep(housekeeping: Housekeeping, *, client: redis.Redis, ledger: Ledger,
                    heartbeats: Heartbeats, settings: Settings) -> None:
    """Register the shared duties with `housekeeping`."""
    interval_s = settings.heartbeat_interval_s
    beating_since: list[float | None] = [None]  # since when beats have all succeeded

    def beat() -> None:
        try:
            heartbeats.beat(client)
        except redis.RedisError:
            beating_since[0] = None
            raise
        if beating_since[0] is None:
            beating_since[0] = time.monotonic()

    def give_back_lapsed() -> None:
        since = beating_since[0]
        if since is None or time.monotonic() - since < \
                CONNECTED_INTERVALS_BEFORE_CLAIMS * interval_s:
            return
        claimed = claim_lapsed(client, timeout_s=settings.heartbeat_timeout_s)
        if claimed:
            logger.warning("holders %s lapsed (no heartbeat for %g s); giving their "
                           "messages back", claimed, settings.heartbeat_timeout_s)
        give_back_owed(client)

    def reap() -> None:
        reaped = ledger.reap(grace_s=settings.job_time_limit_s,
                             backstop_s=settings.visibility_timeout_s)
        if reaped:
            logger.warning("reaped %d job(s) past their deadline: %s", len(reaped),
                           reaped[:10])

    housekeeping.every(interval_s, beat, name="heartbeat")
    housekeeping.every(interval_s, give_back_lapsed, name="give-back")
    housekeeping.every(settings.reaper_interval_s, reap, name="reaper")
