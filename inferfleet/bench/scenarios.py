"""The scenarios of `inferfleet bench`, each measured once per call.

raw        in-process ONNX Runtime, batch 1 and a sweep of batch sizes (the ceiling)
naive      a plain Celery task per sample (`naive.py`), one apply_async each
single     one fleet job per sample, `Client.submit` each
bulk       `Client.submit_many` with jobs of 256 samples
latency    one job in flight at a time, naive against fleet
priority   the same, `high` (and one `normal`), behind a bulk backfill queued first
load       single-sample jobs offered at a fixed rate: latency against offered load
drain      the same work enqueued first, then consumed: producer and worker apart
transport  the same message bytes pushed and popped by a bare redis-py loop: the ceiling
durable    single-sample submits alone, with Redis WAIT for one replica and without
"""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
import redis
from celery import Celery

from inferfleet import keys
from inferfleet.bench.measure import WINDOW, Measurement, collect
from inferfleet.bench.naive import TASK_NAME as NAIVE_TASK
from inferfleet.producer import Client

Rows = npt.NDArray[np.float32]
Submit = Callable[[Rows], str]
#: Waits for one task's result the way its system's users do.
Wait = Callable[[str], object]


def raw(model_path: str, rows: Rows, *, batch: int, threads: int,
        min_seconds: float = 0.5) -> Measurement:
    """Samples/s of `session.run` on batches of `batch` rows, looping over `rows`."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(model_path, sess_options=options,
                                   providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    batches = [rows[i:i + batch] for i in range(0, len(rows) - batch + 1, batch)] or [rows]
    session.run(["probabilities"], {name: batches[0]})
    done = 0
    started = time.perf_counter()
    while time.perf_counter() - started < min_seconds:
        for chunk in batches:
            session.run(["probabilities"], {name: chunk})
            done += len(chunk)
    return Measurement(done, time.perf_counter() - started)


def naive_wait(app: Celery) -> Wait:
    """`AsyncResult.get()`, as the Celery documentation shows."""
    return lambda task_id: app.AsyncResult(task_id).get(timeout=60)


def fleet_wait(client: Client) -> Wait:
    """`Client.result`."""
    return lambda task_id: client.result(task_id, timeout=60)


def naive_submitter(app: Celery, model_path: str) -> Submit:
    """One `apply_async` per sample, the sample as a JSON list (what users do today)."""
    task = app.signature(NAIVE_TASK)

    def submit(row: Rows) -> str:
        return str(task.apply_async(args=(model_path, row[0].tolist())).id)

    return submit


def fleet_submitter(client: Client, model: str) -> Submit:
    """One `Client.submit` per job."""

    def submit(rows: Rows) -> str:
        return client.submit(model, rows).id

    return submit


def naive_failures(meta: dict[str, Any]) -> int:
    return 0 if meta.get("status") == "SUCCESS" else 1


def fleet_failures(meta: dict[str, Any]) -> int:
    statuses = (meta.get("result") or {}).get("sample_status", [])
    return sum(status != "success" for status in statuses) if statuses else 1


def throughput(client: Client, submit: Submit, rows: Rows, *, per_job: int,
               failures: Callable[[dict[str, Any]], int]) -> Measurement:
    """Submit `rows` in jobs of `per_job` one call each, then wait for every result."""
    started = time.perf_counter()
    submitted: dict[str, tuple[float, int]] = {}
    for start in range(0, len(rows), per_job):
        chunk = rows[start:start + per_job]
        submitted[submit(chunk)] = (time.perf_counter(), len(chunk))
    seen, failed = collect(client.redis, list(submitted), timeout_s=600, decode=failures)
    return _measured(submitted, seen, failed, started)


def bulk(client: Client, model: str, rows: Rows, *, job_size: int,
         cache: bool | None = None) -> Measurement:
    """`submit_many` of every row, then wait for every result."""
    started = time.perf_counter()
    jobs = client.submit_many(model, rows, job_size=job_size, cache=cache)
    submitted = {job.id: (started, job.n_samples) for job in jobs}
    seen, failed = collect(client.redis, list(submitted), timeout_s=600, decode=fleet_failures)
    return _measured(submitted, seen, failed, started)


def with_repeats(rows: Rows, repeated: float, rng: np.random.Generator) -> Rows:
    """`rows` made new (noise no run has sent before), of which the share `repeated`
    are then repeats of earlier ones: the first `1 - repeated` of the output is new, the
    rest is drawn from it."""
    fresh = (rows + rng.random(rows.shape, dtype=np.float32) * 1e-3).astype(rows.dtype)
    new = max(1, int(len(rows) * (1 - repeated)))
    return np.concatenate([fresh[:new], fresh[rng.integers(0, new, len(rows) - new)]])


def transport_ceiling(client: redis.Redis, envelope: bytes, inputs_string: bytes | None, *,
                      rows_per_message: int, messages: int, per_round: int = 16
                      ) -> Measurement:
    """The physical limit of the broker for these bytes: the same message (and input
    string, for a job that keeps its arrays apart: `inferfleet.stored_inputs`) pushed and
    popped through the same Redis by a bare redis-py loop, `per_round` messages a round
    trip (LPUSH and an MSET, then RPOP of as many and GETDELs), with no inference, no
    decoding, no result."""
    queue = "bench:transport-ceiling"
    strings = [f"bench:transport-ceiling:{index}" for index in range(per_round)]
    started = time.perf_counter()
    done = 0
    while done < messages:
        count = min(per_round, messages - done)
        pipe = client.pipeline(transaction=False)
        pipe.lpush(queue, *[envelope] * count)
        if inputs_string is not None:
            pipe.mset(dict.fromkeys(strings[:count], inputs_string))
        pipe.rpop(queue, count)
        for key in strings[:count] if inputs_string is not None else []:
            pipe.getdel(key)
        pipe.execute()
        done += count
    return Measurement(done * rows_per_message, time.perf_counter() - started)


def submits(client: Client, rows: Rows, *, model: str) -> Measurement:
    """Single-sample `Client.submit`s alone (no worker takes them): the producer's and
    Redis's cost of accepting a job, each call's latency recorded."""
    latencies = []
    started = time.perf_counter()
    for index in range(len(rows)):
        sent = time.perf_counter()
        client.submit(model, rows[index:index + 1], validate=False)
        latencies.append((time.perf_counter() - sent) * 1000)
    return Measurement(len(rows), time.perf_counter() - started, latencies)


def latency(submit: Submit, wait: Wait, rows: Rows) -> Measurement:
    """One single-sample job at a time: submit, wait for its result as users do, next."""
    latencies = []
    started = time.perf_counter()
    for index in range(len(rows)):
        sent = time.perf_counter()
        wait(submit(rows[index:index + 1]))
        latencies.append((time.perf_counter() - sent) * 1000)
    return Measurement(len(rows), time.perf_counter() - started, latencies)


def behind_backfill(client: Client, model: str, backfill: Rows, probes: Rows, *,
                    job_size: int, priority: str) -> Measurement:
    """Single-sample jobs of `priority`, one at a time, while a backfill of `job_size`-
    sample jobs queued just before them drains: each one's latency, for as long as some
    of the backfill still waits in Redis (at least one)."""
    backfill_jobs = client.submit_many(model, backfill, job_size=job_size)
    waiting = keys.model_queue(model)
    latencies = []
    started = time.perf_counter()
    for index in range(len(probes)):
        sent = time.perf_counter()
        client.submit(model, probes[index:index + 1], priority=priority).result(timeout=600)
        latencies.append((time.perf_counter() - sent) * 1000)
        if not client.redis.llen(waiting):
            break
    seconds = time.perf_counter() - started
    client.results([job.id for job in backfill_jobs], timeout=600)
    return Measurement(len(latencies), seconds, latencies)


def offered_load(client: Client, submit: Submit, rows: Rows, *, rate: float,
                 failures: Callable[[dict[str, Any]], int]) -> Measurement:
    """Single-sample jobs sent at `rate` per second (open loop); each result is seen by a
    reader thread polling every millisecond while the sending goes on."""
    started = time.perf_counter()
    submitted: dict[str, tuple[float, int]] = {}
    seen: dict[str, float] = {}
    failed = 0
    sent: queue.SimpleQueue[str | None] = queue.SimpleQueue()

    def read() -> None:
        nonlocal failed
        pending: list[str] = []
        sending = True
        while sending or pending:
            while not sent.empty():
                task_id = sent.get()
                sending = sending and task_id is not None
                pending += [task_id] if task_id is not None else []
            window = pending[:WINDOW]
            values = client.redis.mget([keys.result(i) for i in window]) if window else []
            now = time.perf_counter()
            for task_id, value in zip(window, values, strict=True):
                if value is not None:
                    seen[task_id] = now
                    failed += failures(json.loads(value))
            pending = [task_id for task_id in pending if task_id not in seen]
            time.sleep(0.001)

    reader = threading.Thread(target=read, name="load-reader")
    reader.start()
    for index in range(len(rows)):
        due = started + index / rate
        while (now := time.perf_counter()) < due:
            time.sleep(min(0.001, due - now))
        task_id = submit(rows[index:index + 1])
        submitted[task_id] = (time.perf_counter(), 1)
        sent.put(task_id)
    sent.put(None)
    reader.join()
    return _measured(submitted, seen, failed, started)


def drain(client: Client, task_ids: list[str], samples: int,
          failures: Callable[[dict[str, Any]], int]) -> Measurement:
    """Samples/s of workers draining a full queue, between the first and the last result
    as the results' own `date_done` stamps tell (the same field for Celery and the fleet),
    so the time the workers took to start does not count."""
    _, failed = collect(client.redis, task_ids, timeout_s=600, decode=failures)
    done = sorted(done_times(client, task_ids))
    per_task = samples / len(task_ids)
    return Measurement(int(samples - per_task), max(done[-1] - done[0], 1e-9), [], failed)


def done_times(client: Client, task_ids: list[str]) -> list[float]:
    """Each stored result's `date_done` as a Unix time."""
    stamps = []
    for start in range(0, len(task_ids), 1000):
        for raw in client.redis.mget([keys.result(i) for i in task_ids[start:start + 1000]]):
            if raw is not None:  # every one is stored once `collect` returned
                stamps.append(datetime.fromisoformat(json.loads(raw)["date_done"]).timestamp())
    return stamps


def _measured(submitted: dict[str, tuple[float, int]], seen: dict[str, float], failed: int,
              started: float) -> Measurement:
    latencies = [(seen[task_id] - sent) * 1000 for task_id, (sent, n) in submitted.items()
                 for _ in range(n)]
    total = sum(n for _, n in submitted.values())
    return Measurement(total, max(seen.values()) - started, latencies, failed)
