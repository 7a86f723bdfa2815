"""`inferfleet demo`: a fleet on this machine, the digits held-out set through it, a summary.

The held-out split (30% of scikit-learn's digits, never seen in training) is pushed through
`passes` times, so that tens of thousands of real samples flow producer -> Redis -> workers
-> results. Its predictions are checked against the labels and against ONNX Runtime run
in-process on the same rows.
"""

from __future__ import annotations

import time
from collections import Counter
from contextlib import nullcontext
from typing import Any

import numpy as np
import numpy.typing as npt

from inferfleet.fleet import Fleet
from inferfleet.models.registry import Registry
from inferfleet.models.runtime import OnnxModel
from inferfleet.producer import Client
from inferfleet.schemas import JobResult
from inferfleet.settings import Settings

HOLDOUT = "digits/holdout.npz"


def run_demo(settings: Settings, *, model: str, passes: int, job_size: int,
             workers: int, own_fleet: bool = True) -> int:
    """Run the demo and print its summary; 0 if every sample is accounted for and the
    fleet's predictions equal in-process ONNX Runtime's. With `own_fleet` False the
    samples go through the fleet already running at `settings.redis_url`."""
    holdout = np.load(settings.models_dir / HOLDOUT)
    x = np.tile(holdout["x"], (passes, 1))
    labels = np.tile(holdout["y"], passes)
    where = f"{workers} new worker process(es)" if own_fleet else "the running fleet"
    print(f"demo: {len(x)} samples ({passes} passes over {len(holdout['x'])} held-out digits) "
          f"through model {model!r}, jobs of {job_size}, {where}", flush=True)
    fleet = Fleet(settings, workers=workers, flower=False) if own_fleet else None
    with fleet or nullcontext(), Client(settings=settings.model_copy(
            update={"redis_url": fleet.redis_url if fleet else settings.redis_url})) as client:
        started = time.perf_counter()
        jobs = client.submit_many(model, x, job_size=job_size, session_id="demo")
        results = client.results([job.id for job in jobs], timeout=600)
        wall_s = time.perf_counter() - started
    in_process = _in_process_labels(settings, model, holdout["x"], passes)
    return _report(results, labels, in_process, wall_s)


def _in_process_labels(settings: Settings, model: str, rows: npt.NDArray[Any],
                       passes: int) -> npt.NDArray[Any]:
    onnx_model = OnnxModel(Registry(settings.models_dir).entry(model), intra_op_threads=1)
    scores = onnx_model.run({onnx_model.signature.inputs[0].name: rows})["probabilities"]
    return np.tile(np.asarray(scores).argmax(axis=1), passes)


def _report(results: list[JobResult], labels: npt.NDArray[Any],
            in_process: npt.NDArray[Any], wall_s: float) -> int:
    statuses = Counter(sample.status.value for r in results for sample in r.samples)
    predicted = np.concatenate([np.asarray(r.column("label"), dtype=np.int64) for r in results])
    latencies = np.concatenate([np.full(len(r.samples), r.latency_ms or np.nan)
                                for r in results])
    batches = {batch for r in results for batch in r.batch_ids}
    total = len(labels)
    accounted = sum(statuses.values())
    accuracy = float((predicted == labels).mean())
    agree = bool((predicted == in_process).all())
    p50, p95, p99 = np.nanpercentile(latencies, [50, 95, 99])
    print(f"jobs: {len(results)} ({Counter(r.status.value for r in results)})")
    print(f"samples: {accounted} of {total} accounted for, by status {dict(statuses)}")
    print(f"accuracy vs labels: {accuracy:.4f}; equal to in-process ONNX Runtime on the "
          f"same rows: {'yes' if agree else 'NO'}")
    print(f"throughput: {total / wall_s:,.0f} samples/s end to end ({wall_s:.2f} s), "
          f"{len(batches)} coalesced batches")
    print(f"latency per sample (submit -> result stored): p50 {p50:.1f} ms, p95 {p95:.1f} ms, "
          f"p99 {p99:.1f} ms")
    return 0 if accounted == total and statuses.get("success") == total and agree else 1
