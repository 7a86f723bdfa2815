"""Many concurrent jobs share ONNX Runtime calls (drain mode: queued first, then a worker)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from conftest import worker_starter

from inferfleet import Client
from inferfleet.fleet import stop_processes
from inferfleet.settings import Settings


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
