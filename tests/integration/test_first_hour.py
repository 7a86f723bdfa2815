"""A data scientist's first hour, as the README tells it: every code block of the README
runs as written against the fleet `inferfleet up` leaves.

Its "Your own model and table" section trains a scikit-learn pipeline on a DataFrame,
exports it with skl2onnx's defaults, starts `up`, adds the model to the running fleet,
streams a CSV with shuffled columns, bad rows and an id column through `submit`, and
scores the same table as a DataFrame through `Client`; the results are then checked row by
row against ONNX Runtime in-process. The other Python blocks (the API tour, a plain Celery
client) run against the same fleet.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest

from inferfleet.embedded import free_port

REPO = Path(__file__).resolve().parents[2]
README = (REPO / "README.md").read_text()
FIRST_HOUR = "## Your own model and table"
FEATURES = ["age", "income", "debt", "years_employed"]


def code_blocks(text: str) -> list[tuple[str, str]]:
    """(language, code) of every fenced block, in order."""
    return re.findall(r"^```(\w+)\n(.*?)^```$", text, re.MULTILINE | re.DOTALL)


def first_hour_blocks() -> list[tuple[str, str]]:
    start = README.index(FIRST_HOUR)
    end = README.index("\n## ", start + len(FIRST_HOUR))
    return code_blocks(README[start:end])


def test_the_readme_leads_with_the_first_hour_after_the_setup_commands() -> None:
    first_section = README.index("\n## ", README.index("make test")) + 1
    assert README.index(FIRST_HOUR) == first_section
    assert [lang for lang, _ in first_hour_blocks()] == ["python", "sh", "sh", "python"]


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A working folder with the shipped models, as a fresh clone has them."""
    shutil.copytree(REPO / "models", tmp_path / "models")
    return tmp_path


def user_env(folder: Path) -> dict[str, str]:
    """A user's shell: the venv's commands on PATH, nothing exported for inferfleet."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("INFERFLEET_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["INFERFLEET_MODELS_DIR"] = str(folder / "models")  # the clone's own models/
    env["INFERFLEET_FLOWER_PORT"] = str(free_port())
    return env


def run_block(lang: str, code: str, folder: Path) -> str:
    command = [sys.executable, "-c", code] if lang == "python" else ["bash", "-e", "-c", code]
    done = subprocess.run(command, cwd=folder, env=user_env(folder), capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, f"README block failed:\n{code}\n{done.stdout}\n{done.stderr}"
    return done.stdout


def test_every_readme_block_runs_as_written_against_the_fleet_up_leaves(folder: Path) -> None:
    [train, up_block, submit_block, frame_block] = first_hour_blocks()
    run_block(*train, folder)
    assert up_block[1].strip() == "inferfleet up"
    up = subprocess.Popen(["bash", "-c", "exec inferfleet up --workers 1"], cwd=folder,
                          env=user_env(folder), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
    try:
        assert up.stdout is not None
        banner = up.stdout.readline()
        assert "inferfleet up: redis" in banner, banner + up.stdout.read()
        submitted = run_block(*submit_block, folder)
        assert "added credit version 1" in submitted and "classes ['high', 'low']" in submitted
        assert "2,000 rows of credit.csv through model 'credit'" in submitted
        assert "by status: failure 2, success 1,998" in submitted
        scored = run_block(*frame_block, folder)
        assert "{'success': 1998, 'failure': 2}" in scored
        _results_match_onnx_runtime_row_by_row(folder)
        for lang, code in code_blocks(README[README.index("## Python API"):]):
            if lang == "python":
                run_block(lang, code, folder)
    finally:
        up.send_signal(signal.SIGINT)
        try:
            up.wait(60)
        except subprocess.TimeoutExpired:
            up.kill()
            up.wait(10)


def _results_match_onnx_runtime_row_by_row(folder: Path) -> None:
    table = pd.read_csv(folder / "credit.csv")
    with (folder / "credit.results.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["user_id", "status", "label", "score", "prob_low", "error_code",
                             "error_message"]
    assert [r["user_id"] for r in rows] == list(table.user_id)
    failed = {i: r for i, r in enumerate(rows) if r["status"] == "failure"}
    assert set(failed) == {3, 7}
    assert "column 'age': 'unknown' is not a number" in failed[7]["error_message"]
    assert failed[3]["error_message"] == "column 'income': is empty"
    good = [i for i in range(len(rows)) if i not in failed]
    features = table.loc[good, FEATURES].astype("float32")
    session = ort.InferenceSession(str(folder / "credit.onnx"))
    labels, maps = session.run(None, {c: features[[c]].to_numpy() for c in FEATURES})
    assert [rows[i]["label"] for i in good] == list(labels)
    np.testing.assert_allclose([float(rows[i]["prob_low"]) for i in good],
                               [m["low"] for m in maps], rtol=1e-5)
    # The DataFrame path gives the same rows (the fleet from the folder's fleet.json).
    from inferfleet import Client

    url = json.loads((folder / ".inferfleet" / "fleet.json").read_text())["redis_url"]
    with Client(url) as client:
        frame = client.predict_frame("credit", table.set_index("user_id"))
    assert list(frame.index) == list(table.user_id) and frame.index.name == "user_id"
    assert list(frame.label.iloc[good]) == list(labels)
    np.testing.assert_allclose(frame.prob_low.iloc[good], [m["low"] for m in maps], rtol=1e-5)
    np.testing.assert_allclose(frame.prob_high.iloc[good], [m["high"] for m in maps], rtol=1e-5)
    assert frame.error_code.iloc[3] == frame.error_code.iloc[7] == "non_finite"
