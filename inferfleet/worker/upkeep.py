"""The fleet-wide duties every worker shares, run by its housekeeping loop: beating for
its channels, giving back the messages of channels whose beat lapsed (`liveness`), and
reaping jobs that nobody can finish any more (`Ledger.reap`)."""

from __future__ import annotations

import logging

import redis

from inferfleet.ledger import Ledger
from inferfleet.liveness import Heartbeats, claim_lapsed, give_back_owed
from inferfleet.settings import Settings
from inferfleet.worker.housekeeping import Housekeeping

logger = logging.getLogger(__name__)


def schedule_upkeep(housekeeping: Housekeeping, *, client: redis.Redis, ledger: Ledger,
                    heartbeats: Heartbeats, settings: Settings) -> None:
    """Register the shared duties with `housekeeping`."""
    interval_s = settings.heartbeat_interval_s

    def beat() -> None:
        heartbeats.beat(client)

    def give_back_lapsed() -> None:
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
