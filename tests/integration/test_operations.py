"""Operating the fleet: a worker's Prometheus metrics, Flower's API on real workers, and
workers with separate model sets sharing one Redis (the many-machines layout)."""

from __future__ import annotations

import base64
import json
import os
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
from conftest import StartWorker, worker_starter
from faultkit import holdout_rows, wait_until
from prometheus_client.parser import text_string_to_metric_families

from inferfleet import Client
from inferfleet.embedded import free_port
from inferfleet.fleet import spawn, stop_processes
from inferfleet.settings import Settings


def http_get(url: str, *, auth: str | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url)
    if auth:
        request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a /metrics page, by name and labels."""
    status, body = http_get(f"http://127.0.0.1:{port}/metrics")
    assert status == 200
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(body.decode())
            for sample in family.samples}


def test_a_worker_exposes_prometheus_metrics_of_what_it_did_and_what_waits(
        private_settings: Settings, tmp_path: Path, models_dir: Path,
        start_private_worker: StartWorker) -> None:
    # Publishes digits_mlp, whose queue then has no consumer.
    stop_processes([start_private_worker(models="digits_mlp")])
    port = free_port()
    start_private_worker(models="digits", metrics_port=str(port))
    with Client(settings=private_settings) as client:
        rows = holdout_rows(models_dir, 20)
        bad = rows[:3].copy()
        bad[1, 5] = np.nan
        jobs = [client.submit("digits", rows), client.submit("digits", bad, validate=False)]
        assert [j.result(timeout=30).status for j in jobs] == ["succeeded", "partial"]
        client.submit("digits_mlp", rows[:2])
        client.submit("digits_mlp", rows[:2])
        time.sleep(0.3)
    metrics = scrape(port)
    digits = (("model", "digits"),)
    assert metrics[("inferfleet_samples_total", (*digits, ("status", "success")))] == 22
    assert metrics[("inferfleet_samples_total", (*digits, ("status", "failure")))] == 1
    assert metrics[("inferfleet_jobs_total", (*digits, ("state", "succeeded")))] == 1
    assert metrics[("inferfleet_jobs_total", (*digits, ("state", "partial")))] == 1
    # Warm-up runs one row outside the batcher; the jobs' 22 valid rows went in batches.
    assert metrics[("inferfleet_batch_rows_sum", digits)] == 22
    assert metrics[("inferfleet_inference_seconds_count", digits)] >= 1
    for name in ("queue_seconds", "batch_wait_seconds", "result_write_seconds"):
        assert metrics[(f"inferfleet_{name}_count", digits)] == 2, name
    mlp = (("model", "digits_mlp"),)
    assert metrics[("inferfleet_queue_depth", mlp)] == 2
    assert 0.3 <= metrics[("inferfleet_oldest_job_age_seconds", mlp)] < 30
    assert metrics[("inferfleet_queue_depth", digits)] == 0
    assert metrics[("inferfleet_oldest_job_age_seconds", digits)] == 0


def test_flower_shows_every_job_of_a_batch_with_its_state_and_runtime(
        private_settings: Settings, tmp_path: Path, models_dir: Path,
        start_private_worker: StartWorker) -> None:
    port = free_port()
    env = {**os.environ, "INFERFLEET_REDIS_URL": private_settings.redis_url,
           "INFERFLEET_FLOWER_BASIC_AUTH": "ops:s3cret"}
    flower = spawn(["flower", "--port", str(port)], env=env, log_path=tmp_path / "flower.log")
    try:
        _check_flower(f"http://127.0.0.1:{port}", private_settings, models_dir,
                      start_private_worker)
    finally:
        stop_processes([flower])


def _check_flower(base: str, settings: Settings, models_dir: Path,
                  start_private_worker: StartWorker) -> None:
    start_private_worker(models="digits")
    wait_until(lambda: http_get(f"{base}/healthcheck")[0] == 200, what="Flower")
    with Client(settings=settings) as client:
        jobs = client.submit_many("digits", holdout_rows(models_dir, 60), job_size=5)
        results = client.results([job.id for job in jobs], timeout=60)
    assert len({batch for r in results for batch in r.batch_ids}) < len(jobs)  # batched

    assert http_get(f"{base}/api/tasks")[0] == 401  # basic auth, even on loopback
    auth = "ops:s3cret"

    def tasks() -> dict[str, dict[str, object]]:
        return json.loads(http_get(f"{base}/api/tasks", auth=auth)[1])

    wait_until(lambda: all(tasks().get(job.id, {}).get("state") == "SUCCESS"
                           for job in jobs), what="Flower to see every job succeed")
    status, body = http_get(f"{base}/api/task/info/{jobs[0].id}", auth=auth)
    info = json.loads(body)
    assert status == 200 and info["name"] == "inferfleet.predict[digits]"  # the model shown
    assert "model: 'digits'" in info["kwargs"]
    assert info["state"] == "SUCCESS" and info["runtime"] > 0
    assert info["received"] and info["started"] and info["succeeded"]
    wait_until(lambda: any(name.startswith("test") for name in json.loads(
        http_get(f"{base}/api/workers?refresh=1", auth=auth)[1])), what="/api/workers")
    status, body = http_get(f"{base}/metrics", auth=auth)
    assert status == 200
    succeeded = [s for family in text_string_to_metric_families(body.decode())
                 for s in family.samples if s.name == "flower_events_total"
                 and s.labels.get("type") == "task-succeeded"]
    assert sum(s.value for s in succeeded) >= len(jobs)


def test_workers_with_separate_model_sets_share_one_redis_and_get_only_their_jobs(
        private_settings: Settings, models_dir: Path, start_private_worker: StartWorker
) -> None:
    # Two "machines": separate worker processes, each with its own models, one Redis.
    start_private_worker(models="digits")
    start_private_worker(models="digits_mlp")
    with Client(settings=private_settings) as client:
        rows = holdout_rows(models_dir, 40)
        small = client.submit_many("digits", rows, job_size=4)
        large = client.submit_many("digits_mlp", rows, job_size=4)
        by_model = {
            "digits": client.results([j.id for j in small], timeout=60),
            "digits_mlp": client.results([j.id for j in large], timeout=60)}
    for model, results in by_model.items():
        assert {r.status for r in results} == {"succeeded"}, model
        # Batch ids name the worker process that ran them: one process per model.
        processes = {b.rsplit("-", 1)[0] for r in results for b in r.batch_ids}
        assert len(processes) == 1, (model, processes)
    assert {b.rsplit("-", 1)[0] for r in by_model["digits"] for b in r.batch_ids}.isdisjoint(
        b.rsplit("-", 1)[0] for r in by_model["digits_mlp"] for b in r.batch_ids)


def test_a_version_added_while_workers_run_is_served_without_a_restart(
        private_settings: Settings, tmp_path: Path, models_dir: Path) -> None:
    import shutil
    import subprocess
    import sys

    import onnxruntime as ort

    models = tmp_path / "models"
    shutil.copytree(models_dir / "digits", models / "hot")
    settings = private_settings.model_copy(update={"models_dir": models})
    env = {**os.environ, "INFERFLEET_MODELS_DIR": str(models)}

    def models_cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "inferfleet", "models", *args], env=env,
                              capture_output=True, text=True, timeout=120)

    start, started = worker_starter(settings, tmp_path / "logs")
    try:
        start(models="hot")
        rows = holdout_rows(models_dir, 30)
        with Client(settings=settings) as client:
            assert client.submit("hot", rows).result(timeout=30).model_version == "1"
            bad = tmp_path / "broken.onnx"
            bad.write_bytes(b"not a model")
            refused = models_cli("add", str(bad), "--name", "hot")
            assert refused.returncode != 0 and "not an ONNX model" in refused.stderr
            added = models_cli("add", str(models_dir / "digits_mlp" / "model.onnx"),
                               "--name", "hot")
            assert added.returncode == 0, added.stderr
            assert "added hot version 2" in added.stdout

            def served_version() -> str | None:
                return client.submit("hot", rows).result(timeout=30).model_version
            wait_until(lambda: served_version() == "2", timeout_s=30, what="version 2")

            result = client.submit("hot", rows).result(timeout=30)
            mlp = ort.InferenceSession(str(models_dir / "digits_mlp" / "model.onnx"))
            expected = mlp.run(["probabilities"], {mlp.get_inputs()[0].name: rows})[0]
            np.testing.assert_allclose(result.column("probabilities"), expected, rtol=1e-5)
            pinned_old = client.submit("hot", rows[:1], model_version="1", validate=False)
            old = pinned_old.result(timeout=30)
            assert old.status == "failed" and old.error is not None
            assert "version '1' is not served" in old.error.message
            assert client.models()["hot"].version == "2"
    finally:
        stop_processes(started)


def test_json_logs_are_one_object_per_line_with_the_jobs_ids(
        private_settings: Settings, tmp_path: Path, models_dir: Path) -> None:
    from inferfleet.fleet import wait_for_workers

    env = {**os.environ, "INFERFLEET_REDIS_URL": private_settings.redis_url,
           "INFERFLEET_MODELS_DIR": str(models_dir), "INFERFLEET_LOG_FORMAT": "json"}
    log = tmp_path / "worker.log"
    worker = spawn(["worker", "--models", "digits", "--loglevel", "DEBUG",
                    "--hostname", "jsonlogs@%h"], env=env, log_path=log)
    try:
        wait_for_workers(private_settings, ["jsonlogs@"], timeout_s=60, processes=[worker])
        with Client(settings=private_settings) as client:
            job = client.submit("digits", holdout_rows(models_dir, 3), session_id="logged")
            result = job.result(timeout=30)
        wait_until(lambda: job.id in log.read_text(), what="the job's log line")
    finally:
        stop_processes([worker])
    # Every line is one JSON object, but Celery's own shutdown notice, which its signal
    # handler writes straight to the terminal (logging is not safe there).
    lines = [line for line in log.read_text().splitlines()
             if line.strip() and not line.startswith("worker: Warm shutdown")]
    records = [json.loads(line) for line in lines]
    mine = [r for r in records if r.get("job_id") == job.id]
    assert mine, records[-5:]
    assert mine[-1]["session_id"] == "logged" and mine[-1]["model"] == "digits"
    assert mine[-1]["batch_id"] == result.batch_ids[0]
    assert {"time", "level", "logger", "message"} <= set(records[0])
    # Once ready, the worker froze what it made at start out of garbage collection.
    assert any(r["message"].startswith("froze ") and r["logger"] == "inferfleet.worker"
               for r in records), [r["message"] for r in records][:40]
