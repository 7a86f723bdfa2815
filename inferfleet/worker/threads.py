"""Celery's threads pool, whose warm stop also waits for the jobs handed to the finisher.

A pool thread hands a job whose batch has not run to the service's finisher and is free
(`inferfleet.worker.finisher`): Celery's pool no longer sees that job. A warm shutdown
stops the pool while the broker connection is still open, so that running jobs store
their results and ack; this pool waits for the handed-over jobs there too.
(`on_stop` is listed in `inferfleet.upstream`.)
"""

from __future__ import annotations

import logging

from celery.concurrency.thread import TaskPool as CeleryThreadsPool

from inferfleet import keys

logger = logging.getLogger(__name__)

#: What `worker_pool` names to use this pool.
POOL_PATH = "inferfleet.worker.threads:TaskPool"


class TaskPool(CeleryThreadsPool):
    """`--pool=threads`, waiting at its warm stop for the finisher's jobs."""

    #: The longest a warm stop waits for handed-over jobs (they have had their batch
    #: queued already; `job_time_limit_s` bounds each of them anyway).
    DRAIN_S = 60.0

    def on_stop(self) -> None:
        super().on_stop()  # the jobs running in pool threads hand theirs over first
        task = self.app.tasks.get(keys.TASK_NAME) if self.app is not None else None
        service = getattr(task, "service", None)
        if service is not None and not service.finisher.drain(self.DRAIN_S):
            logger.warning("warm stop: %d job(s) had not ended after %.0f s; their "
                           "messages go back to their queues", service.finisher.pending(),
                           self.DRAIN_S)
