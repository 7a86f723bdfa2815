"""Running marks: `Client.status` says `running` for a job a worker began."""

from __future__ import annotations

import logging
import threading

import redis

from inferfleet.ledger import Ledger
from inferfleet.worker.housekeeping import Housekeeping

logger = logging.getLogger(__name__)


class RunningMarks:
    """Marks jobs running in the ledger from the housekeeping loop, many per round trip,
    so that no job waits on it (the ledger's guard keeps terminal states terminal).

    A mark waits `GATHER_S` before it is sent, and a job that ended meanwhile is not
    marked at all: most jobs end within a few milliseconds, and their marks were one Lua
    call each, on the worker's and Redis's CPU, for a state no one could have read.
    """

    #: How long marks gather before they are sent (a job may read "queued" this much
    #: longer than it is).
    GATHER_S = 0.02
    DUTY = "running-marks"

    def __init__(self, ledger: Ledger, housekeeping: Housekeeping) -> None:
        self.ledger = ledger
        self.housekeeping = housekeeping
        self._lock = threading.Lock()
        self._pending: dict[str, None] = {}  # job ids, in the order they began
        housekeeping.when_asked(self.send, name=self.DUTY)

    def mark(self, job_id: str) -> None:
        """The job began here."""
        with self._lock:
            self._pending[job_id] = None
        self.housekeeping.ask(self.DUTY, delay_s=self.GATHER_S)

    def done(self, job_id: str) -> None:
        """The job ended (its result is stored): no mark is needed any more."""
        with self._lock:
            self._pending.pop(job_id, None)

    def send(self) -> None:
        """Mark the jobs that began and have not ended, in one round trip."""
        with self._lock:
            job_ids, self._pending = list(self._pending), {}
        if not job_ids:
            return
        try:
            self.ledger.mark_running(job_ids)
        except redis.RedisError:  # a state for `status`, never worth failing a job
            logger.warning("could not mark %d job(s) running", len(job_ids), exc_info=True)
