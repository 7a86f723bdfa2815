"""The benchmark keeps working: every scenario runs on a tiny sample (no timing asserted)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def test_the_benchmark_runs_every_scenario_and_writes_its_table_and_plot(tmp_path: Path) -> None:
    table, plot = tmp_path / "results.md", tmp_path / "benchmarks.png"
    done = subprocess.run(
        [sys.executable, "-m", "inferfleet", "bench", "--models", "digits,cnn", "--scale", "0.005",
         "--repeat", "1", "--markdown", str(table), "--plot", str(plot)],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, env=dict(os.environ))
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    text = table.read_text()
    for scenario in ("raw batch 1 ", "raw batch 1024", "| naive |", "fleet single-sample jobs",
                     "fleet bulk (256/job)", "naive latency, 1 in flight",
                     "fleet latency, 1 in flight", "fleet load 400/s", "drain naive",
                     "fleet high job behind", "fleet normal job behind",
                     "fleet bulk, 50% repeated, cache on", "fleet bulk, 0% repeated, cache off",
                     "drain fleet single-sample", "drain fleet bulk", "| submit alone |",
                     "submit alone, WAIT 1 replica", "transport ceiling (256/message)",
                     "fleet as the README starts it: single-sample jobs",
                     "fleet as the README starts it: bulk (256/job)", "| cnn | raw batch 8 |",
                     "| cnn | fleet bulk (64/job) |", "transport ceiling (64/message)",
                     "| cnn | raw best batch, in rounds beside the fleet |",
                     "CPU us/sample: Redis | workers | producer"):
        assert scenario in text, scenario
    assert "light-load p50 fleet / naive" in text
    for target in ("cnn: bulk / raw best batch", "digits: bulk / transport ceiling",
                   "digits: single-sample jobs / naive", "digits: light-load p99 of the fleet"):
        assert target in text, target
    # Each bulk run is set against raw runs made just before it, in the same minute.
    assert "median of 1 round(s), raw measured in each just before the fleet" in text
    assert "a submit with wait_replicas=1 (Redis WAIT, one replica) costs" in text
    assert "a `high` single-sample job behind a" in text
    assert "the result cache with half the samples repeated" in text
    assert plot.stat().st_size > 10_000


def test_an_overload_drill_refuses_at_once_and_every_accepted_job_ends_once(
        tmp_path: Path) -> None:
    from inferfleet.bench.drills import run_drill

    models = Path(__file__).resolve().parents[2] / "models"
    report = run_drill("overload", models_dir=models, seconds=3, log=lambda _: None)
    totals = {name: sum(getattr(w, name) for w in report.windows)
              for name in ("offered", "refused", "succeeded", "expired", "failed")}
    assert report.lost == []  # every accepted job has a terminal result
    assert totals["refused"] > 0 and totals["succeeded"] > 0  # 3x capacity, a small queue
    assert totals["offered"] == sum(totals[k] for k in ("refused", "succeeded", "expired",
                                                        "failed"))
    assert totals["failed"] == 0

    done = subprocess.run(
        [sys.executable, "-m", "inferfleet", "bench", "--load", "steady", "--seconds", "2",
         "--markdown", str(tmp_path / "steady.md"), "--plot", str(tmp_path / "steady.png")],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, env=dict(os.environ))
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "drill steady: capacity" in (tmp_path / "steady.md").read_text()
    assert (tmp_path / "steady.png").stat().st_size > 10_000
