"""The Grafana dashboard's every query, evaluated by a real Prometheus server scraping a
real worker while jobs run: each returns series, and the counts agree with the jobs sent.

Prometheus is Debian's package (`make` installs it); a machine without it fails here
rather than skipping, since the dashboard would then be unchecked."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from conftest import StartWorker
from faultkit import holdout_rows, wait_until

from inferfleet import Client, keys
from inferfleet.embedded import free_port
from inferfleet.settings import Settings

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "dashboards" / \
    "inferfleet.json"


def panel_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) of every target of the dashboard."""
    dashboard = json.loads(DASHBOARD.read_text())
    return [(panel["title"], target["expr"]) for panel in dashboard["panels"]
            for target in panel["targets"]]


def start_prometheus(tmp_path: Path, metrics_port: int) -> tuple[subprocess.Popen[bytes], str]:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("prometheus is not installed: `make` installs it (Debian's package "
                    "prometheus); the dashboard's queries cannot be checked without it")
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        "  - job_name: inferfleet-workers\n"
        f"    static_configs: [{{targets: ['127.0.0.1:{metrics_port}']}}]\n")
    port = free_port()
    process = subprocess.Popen(
        [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=(tmp_path / "prometheus.log").open("wb"))
    return process, f"http://127.0.0.1:{port}"


def query(base: str, promql: str) -> list[dict[str, object]]:
    url = f"{base}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"
    with urllib.request.urlopen(url, timeout=10) as response:
        body = json.loads(response.read())
    assert body["status"] == "success", (promql, body)
    return body["data"]["result"]  # type: ignore[no-any-return]


def value(base: str, promql: str) -> float:
    [series] = query(base, promql)
    return float(series["value"][1])  # type: ignore[index]


def test_every_dashboard_query_returns_series_that_agree_with_the_jobs_sent(
        private_settings: Settings, start_private_worker: StartWorker, models_dir: Path,
        tmp_path: Path) -> None:
    metrics_port = free_port()
    start_private_worker(models="digits", metrics_port=str(metrics_port))
    prometheus, base = start_prometheus(tmp_path, metrics_port)
    try:
        def scraped() -> bool:
            try:
                return value(base, 'sum(up{job="inferfleet-workers"})') == 1
            except (OSError, ValueError, AssertionError):
                return False
        wait_until(scraped, timeout_s=60, what="Prometheus scraping the worker")
        rows = holdout_rows(models_dir, 200)
        rows[::20, 0] = np.nan  # 10 bad samples, failing alone
        with Client(settings=private_settings) as client:
            jobs = client.submit_many("digits", rows, job_size=5)
            results = client.results([job.id for job in jobs], timeout=60)
            for _ in range(2):  # 47 good samples through the cache: missed, then hit
                cached = client.submit_many("digits", rows[:50], job_size=5, cache=True)
                results += client.results([job.id for job in cached], timeout=60)
            client.redis.lpush(keys.model_queue("digits"), b"not a message")  # dead letter
            wait_until(lambda: client.redis.llen(keys.DEAD_LETTERS) == 1, what="dead letter")
        assert sum(r.status == "partial" for r in results) == 16

        def counted() -> bool:
            found = query(base, "sum by (status) (inferfleet_samples_total)")
            return {s["metric"]["status"]: float(s["value"][1]) for s in found} == \
                {"success": 284.0, "failure": 16.0, "expired": 0.0}  # type: ignore[index]
        wait_until(counted, timeout_s=30, what="Prometheus to see every sample")
        time.sleep(3)  # a few scrapes after the jobs: every rate over [1m] has moved

        for title, promql in panel_queries():
            series = query(base, promql)
            assert series, f"panel {title!r}: {promql} returned no series"
        assert value(base, 'sum(inferfleet_jobs_total{model="digits"})') == 60
        assert value(base, 'max(inferfleet_queue_depth{model="digits"})') == 0  # drained
        assert value(base, 'max(inferfleet_oldest_job_age_seconds{model="digits"})') == 0
        assert value(base, "max(inferfleet_dead_letters)") == 1
        assert value(base, 'sum(up{job="inferfleet-workers"})') == 1
        assert value(base, "sum(rate(inferfleet_result_writes_refused_total[1m]))") == 0
        assert value(base, "sum(inferfleet_latency_seconds_count)") == 60
        assert value(base, 'sum(inferfleet_cache_lookups_total{outcome="hit"})') == 47
        assert value(base, 'sum(inferfleet_cache_lookups_total{outcome="miss"})') == 47
        assert value(base, 'sum(rate(inferfleet_cache_lookups_total{outcome="hit"}[1m])) / '
                           'sum(rate(inferfleet_cache_lookups_total[1m]))') == pytest.approx(
                               0.5, abs=0.2)
        p99 = value(base, 'histogram_quantile(0.99, sum by (le) '
                          '(rate(inferfleet_latency_seconds_bucket[1m])))')
        assert 0 < p99 < 60
    finally:
        prometheus.terminate()
        try:
            prometheus.wait(20)
        except subprocess.TimeoutExpired:
            prometheus.kill()
            prometheus.wait(10)


