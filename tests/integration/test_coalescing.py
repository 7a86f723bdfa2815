"""Many concurrent jobs share ONNX Runtime calls (drain mode: queued first, then a worker)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import redis
from conftest import worker_starter

from inferfleet import Client, keys
from inferfleet.fleet import stop_processes
from inferfleet.settings import Settings
from inferfleet.worker.backlog import QueueBacklog
from inferfleet.worker.housekeeping import Housekeeping


def test_200_concurrent_jobs_are_coalesced_into_far_fewer_onnx_calls(
        private_settings: Settings, tmp_path: Path, models_dir: Path) -> None:
    start, started = worker_starter(private_settings, tmp_path / "logs")
    try:
        start(models="digits_mlp")  # publishes the signature, then is stopped
        stop_processes(started)
        x = np.load(models_dir / "digits" / "holdout.npz")["x"][:200]
        with Client(settings=private_settings) as client:
            jobs = client.submit_many("digits_mlp", x, job_size=1)
            # A wide window makes the count depend on coalescing, not on this machine's
            # speed; the benchmark reports what the default window does.
            start(models="digits_mlp", max_wait_ms="50")
            results = client.results([job.id for job in jobs], timeout=120)
        assert all(r.status == "succeeded" for r in results)
        batches = {batch for r in results for batch in r.batch_ids}
        jobs_per_call = len(results) / len(batches)
        assert len(batches) <= 40, (
            f"200 jobs took {len(batches)} ONNX calls ({jobs_per_call:.1f} jobs per call)")
    finally:
        stop_processes(started)


def test_the_backlog_hint_does_not_count_a_job_this_worker_took_after_reading_it(
        private_settings: Settings) -> None:
    """A read of the queue made between a lone job's submit and its take counted the job
    itself: its batch then waited the whole max_wait_ms for nobody."""
    client = redis.Redis.from_url(private_settings.redis_url)
    backlog = QueueBacklog(client, Housekeeping(), taken_not_begun=lambda _queues: 0)
    queue = keys.model_queue("digits")
    client.lpush(queue, b"a job")
    backlog(("digits",))  # asks for a read
    backlog.refresh()
    assert backlog(("digits",)) == 1
    backlog.taken(queue)  # this worker takes it; the next read has not happened yet
    assert backlog(("digits",)) == 0
    client.lpush(keys.priority_list(queue, "high"), b"another")
    backlog.refresh()  # a read counts every level
    assert backlog(("digits",)) == 2  # the read still sees the first: nothing took it
    client.close()


def test_queues_found_empty_are_read_again_only_after_a_while(
        private_settings: Settings) -> None:
    """Every lone job's batch asks for a read; while the last one found the queues
    empty, the next comes `EMPTY_REFRESH_S` later, not a round trip per job."""
    delays: list[float] = []

    class RecordingHousekeeping(Housekeeping):
        def ask(self, name: str, *, delay_s: float = 0.0) -> None:
            delays.append(delay_s)
            super().ask(name, delay_s=delay_s)

    client = redis.Redis.from_url(private_settings.redis_url)
    queue = keys.model_queue("digits")
    client.delete(*keys.queue_lists(queue))
    backlog = QueueBacklog(client, RecordingHousekeeping(), taken_not_begun=lambda _q: 0)
    assert backlog(("digits",)) == 0  # never read: the first read may wait too
    backlog.refresh()
    assert backlog(("digits",)) == 0  # read, empty
    client.lpush(queue, b"a job")
    backlog.refresh()
    assert backlog(("digits",)) == 1  # read, one waiting: read again as soon as allowed
    assert delays == [QueueBacklog.EMPTY_REFRESH_S, QueueBacklog.EMPTY_REFRESH_S, 0.0]
    client.delete(queue)
    client.close()
