"""Whole files through the fleet with `inferfleet submit`, and `inferfleet watch`."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from inferfleet import Client
from inferfleet.filerun import run_file
from inferfleet.settings import Settings

pytestmark = pytest.mark.usefixtures("worker")


def holdout(models_dir: Path, n: int) -> np.ndarray:
    return np.load(models_dir / "digits" / "holdout.npz")["x"][:n]


def expected_labels(models_dir: Path, x: np.ndarray) -> list[str]:
    session = ort.InferenceSession(str(models_dir / "digits" / "model.onnx"))
    return [str(i) for i in session.run(["probabilities"], {"pixels": x})[0].argmax(axis=1)]


def cli(settings: Settings, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "INFERFLEET_REDIS_URL": settings.redis_url,
           "INFERFLEET_MODELS_DIR": str(settings.models_dir)}
    return subprocess.run([sys.executable, "-m", "inferfleet", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def test_a_csv_with_an_id_column_round_trips_with_bad_rows_failed_by_id(
        settings: Settings, models_dir: Path, tmp_path: Path) -> None:
    x = holdout(models_dir, 300)
    rows = [[f"row-{i:04d}", *map(str, x[i])] for i in range(300)]
    rows[7][5], rows[100][1], rows[200][64] = "abc", "", "nan"
    source = tmp_path / "digits.csv"
    with source.open("w", newline="") as handle:
        csv.writer(handle).writerows([["sample", *(f"p{j}" for j in range(64))], *rows])

    done = cli(settings, "submit", "digits.csv", "--model", "digits", "--id-column", "sample",
               "--session", "csv-file", "--job-size", "64", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "300 rows of digits.csv through model 'digits'" in done.stdout
    assert "by status: failure 3, success 297" in done.stdout

    with (tmp_path / "digits.results.csv").open() as handle:
        out = list(csv.DictReader(handle))
    assert [r["sample"] for r in out] == [f"row-{i:04d}" for i in range(300)]  # its name
    assert [c for c in out[0] if c.startswith("prob_")] == [f"prob_{d}" for d in range(10)]
    failed = {r["sample"]: r for r in out if r["status"] == "failure"}
    assert set(failed) == {"row-0007", "row-0100", "row-0200"}
    assert "column 'p4': 'abc' is not a number" in failed["row-0007"]["error_message"]
    assert failed["row-0200"]["error_code"] == "non_finite"
    good = [i for i in range(300) if f"row-{i:04d}" not in failed]
    assert [out[i]["label"] for i in good] == expected_labels(models_dir, x[good])
    assert failed["row-0007"]["prob_0"] == failed["row-0007"]["score"] == ""
    with Client(settings=settings) as client:
        summary = client.session_summary("csv-file")
    # Rows refused for their cells are counted too: the session agrees with the file.
    assert (summary.samples_succeeded, summary.samples_failed) == (297, 3)


def test_npy_and_parquet_files_come_back_in_their_own_format(
        settings: Settings, models_dir: Path, tmp_path: Path) -> None:
    x = holdout(models_dir, 50)
    np.save(tmp_path / "rows.npy", x)
    pq.write_table(pa.table({"key": [f"k{i}" for i in range(50)],
                             **{f"p{j}": x[:, j] for j in range(64)}}), tmp_path / "rows.parquet")
    with Client(settings=settings) as client:
        npy = run_file(client, tmp_path / "rows.npy", model="digits", batch_rows=16)
        parquet = run_file(client, tmp_path / "rows.parquet", model="digits", id_column="key",
                           batch_rows=16, window_batches=2)
    assert npy.by_status == parquet.by_status == {"success": 50}
    from_npy = np.load(npy.out)
    from_parquet = pq.read_table(parquet.out).to_pydict()
    labels = expected_labels(models_dir, x)
    # The .npy is compact: UTF-8 byte strings, and a .npy input's row numbers as ids.
    assert [label.decode() for label in from_npy["label"]] == from_parquet["label"] == labels
    assert list(from_npy["id"]) == list(range(50))
    assert from_npy.dtype.itemsize < 300
    assert from_parquet["key"] == [f"k{i}" for i in range(50)]


def test_a_file_narrower_than_the_model_is_refused_clearly(
        settings: Settings, tmp_path: Path) -> None:
    np.save(tmp_path / "narrow.npy", np.zeros((3, 10), np.float32))
    done = cli(settings, "submit", "narrow.npy", "--model", "digits", cwd=tmp_path)
    assert done.returncode == 2
    assert "the file has 10 feature columns; model 'digits' takes samples of shape [64]" \
        in done.stderr
    assert not (tmp_path / "narrow.results.npy").exists()  # nothing written for nothing


def test_a_text_column_not_named_as_the_id_column_gets_that_hint(
        settings: Settings, models_dir: Path, tmp_path: Path) -> None:
    x = holdout(models_dir, 5)
    source = tmp_path / "named.csv"
    with source.open("w", newline="") as handle:
        csv.writer(handle).writerows([["user", *(f"p{j}" for j in range(64))],
                                      *[[f"u{i}", *map(str, x[i])] for i in range(5)]])
    done = cli(settings, "submit", "named.csv", "--model", "digits", cwd=tmp_path)
    assert done.returncode == 2
    assert "the file has 65 feature columns" in done.stderr
    assert "column 'user' holds no numbers: if it holds ids, pass --id-column user" \
        in done.stderr
    assert not (tmp_path / "named.results.csv").exists()


def test_watch_shows_the_session_and_ends_with_it(settings: Settings, models_dir: Path,
                                                   tmp_path: Path) -> None:
    x = holdout(models_dir, 20).copy()
    x[3, 0] = np.inf
    with Client(settings=settings) as client:
        job = client.submit("digits", x, session_id="watched", validate=False)
        job.result(timeout=30)
    done = cli(settings, "watch", "watched", "--interval", "0.1", "--timeout", "30",
               cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "session watched: jobs 1/1 done {'partial': 1}" in done.stdout
    assert "19 succeeded, 1 failed" in done.stdout
    assert f"{job.id} sample 3: non_finite" in done.stdout


def test_watch_gives_progress_once_the_submitter_said_how_many_rows_come(
        settings: Settings, models_dir: Path, tmp_path: Path) -> None:
    np.save(tmp_path / "some.npy", holdout(models_dir, 40))
    done = cli(settings, "submit", "some.npy", "--model", "digits", "--session", "counted",
               "--job-size", "8", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    with Client(settings=settings) as client:
        assert client.session_summary("counted").samples_expected == 40
        client.expect("later", 100)  # said before any submit: watch waits for the rest
        client.submit("digits", holdout(models_dir, 10), session_id="later").result(timeout=30)
    watched = cli(settings, "watch", "counted", "--interval", "0.1", cwd=tmp_path)
    assert watched.returncode == 0, watched.stderr
    assert "progress 100.0% of 40 samples expected; ETA 0 s" in watched.stdout
    waiting = cli(settings, "watch", "later", "--interval", "0.1", "--timeout", "1",
                  cwd=tmp_path)
    assert waiting.returncode == 1  # 90 samples are still to come
    assert "progress 10.0% of 100 samples expected" in waiting.stdout


def test_watch_and_status_of_an_id_that_does_not_exist_say_so_and_fail(
        settings: Settings, tmp_path: Path) -> None:
    watched = cli(settings, "watch", "no-such-session", cwd=tmp_path)
    assert watched.returncode == 2
    assert "no session 'no-such-session': nothing was submitted to it" in watched.stderr
    status = cli(settings, "status", "no-such-job", cwd=tmp_path)
    assert status.returncode == 1 and status.stdout.strip() == "unknown"
    assert "no job 'no-such-job'" in status.stderr


def test_a_submit_interrupted_by_ctrl_c_resumes_without_redoing_written_rows(
        settings: Settings, models_dir: Path, tmp_path: Path) -> None:
    import json
    import signal
    import time

    x = np.tile(holdout(models_dir, 500), (120, 1))  # 60,000 rows: 8 batches of 8,192
    np.save(tmp_path / "big.npy", x)
    env = {**os.environ, "INFERFLEET_REDIS_URL": settings.redis_url,
           "INFERFLEET_MODELS_DIR": str(settings.models_dir)}
    run = subprocess.Popen([sys.executable, "-m", "inferfleet", "submit", "big.npy", "--model",
                            "digits", "--session", "resumed"], cwd=tmp_path, env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    state = tmp_path / "big.results.npy.progress"
    deadline = time.monotonic() + 60
    while not (state.exists() and json.loads(state.read_text())["rows_done"] >= 8192):
        assert run.poll() is None and time.monotonic() < deadline, run.communicate()
        time.sleep(0.01)
    run.send_signal(signal.SIGINT)
    _, stderr = run.communicate(timeout=60)
    assert run.returncode == 130, stderr
    assert "--resume` goes on from there" in stderr
    written = json.loads(state.read_text())["rows_done"]
    assert 0 < written < len(x)

    done = cli(settings, "submit", "big.npy", "--model", "digits", "--resume", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert f"resuming after the {written:,} rows written before; session resumed" in done.stdout
    assert f"{len(x) - written:,} rows of big.npy" in done.stdout
    out = np.load(tmp_path / "big.results.npy")
    assert out["id"].tolist() == list(range(len(x)))
    labels = expected_labels(models_dir, holdout(models_dir, 500))
    assert [label.decode() for label in out["label"]] == labels * 120
    assert not state.exists()
    with Client(settings=settings) as client:
        summary = client.session_summary("resumed")
    # Rows in flight at the interrupt run again; rows written never do.
    assert len(x) <= summary.samples_submitted <= len(x) + 4 * 8192
    assert summary.samples_pending == 0


def test_a_binary_classifiers_file_gets_its_positive_class_and_its_features_back(
        settings: Settings, models_dir: Path, tmp_path: Path) -> None:
    from model_factory import CREDIT_FEATURES, credit_table

    table = credit_table(300, seed=5).drop(columns=["risk"])
    order = ["years_employed", "user_id", "debt", "age", "income"]
    table[order].to_csv(tmp_path / "credit.csv", index=False)
    done = cli(settings, "submit", "credit.csv", "--model", "credit", "--id-column", "user_id",
               "--include-features", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "by status: success 300" in done.stdout
    assert "prob_low: min" in done.stdout  # the report shows the positive class
    with (tmp_path / "credit.results.csv").open() as handle:
        out = list(csv.DictReader(handle))
    assert list(out[0]) == ["user_id", "years_employed", "debt", "age", "income", "status",
                            "label", "score", "prob_low", "error_code", "error_message"]
    session = ort.InferenceSession(str(models_dir / "credit" / "model.onnx"))
    labels, maps = session.run(None, {c: table[[c]].to_numpy() for c in CREDIT_FEATURES})
    assert [r["label"] for r in out] == list(labels)
    np.testing.assert_allclose([float(r["prob_low"]) for r in out], [m["low"] for m in maps],
                               rtol=1e-5)
    np.testing.assert_allclose([float(r["debt"]) for r in out], table["debt"], rtol=1e-6)

    table.drop(columns=["debt"]).to_csv(tmp_path / "short.csv", index=False)
    short = cli(settings, "submit", "short.csv", "--model", "credit", cwd=tmp_path)
    assert short.returncode == 2
    assert "the table has missing columns ['debt']" in short.stderr
    assert "column 'user_id' holds no numbers: if it holds ids, pass --id-column user_id" \
        in short.stderr
