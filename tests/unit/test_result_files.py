"""The results file of `inferfleet submit`: written batch by batch, resumable after a run
is cut off at any point, in each format (no Redis: the writer alone)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from inferfleet.errors import BadArgumentError
from inferfleet.resultfiles import ResultRows, ResultWriter, RunState


def rows(start: int, stop: int) -> ResultRows:
    ok = [i % 5 != 0 for i in range(start, stop)]
    return ResultRows(
        id=[str(i) for i in range(start, stop)],
        status=["success" if good else "failure" for good in ok],
        label=["low" if good else "" for good in ok],
        score=[0.5 + i / 1e4 if good else float("nan") for i, good in zip(
            range(start, stop), ok, strict=True)],
        error_code=["" if good else "non_finite" for good in ok],
        error_message=["" if good else "input 'x' contains NaN or Inf: é" for good in ok],
        probabilities=[[0.25] if good else [float("nan")] for good in ok])


def read_back(path: Path, fmt: str) -> dict[str, list[object]]:
    if fmt == ".csv":
        return pacsv.read_csv(path).to_pydict()
    if fmt == ".parquet":
        return pq.read_table(path).to_pydict()
    array = np.load(path)  # compared byte for byte (NaN != NaN in lists)
    return {"dtype": [str(array.dtype)], "rows": [array.tobytes()]}


def writer(tmp_path: Path, fmt: str, state: RunState) -> ResultWriter:
    return ResultWriter(tmp_path / f"out{fmt}", fmt, 30, state, id_name="user",
                        classes=["low"], labels=["high", "low"], numbered_ids=fmt == ".npy")


@pytest.mark.parametrize("fmt", [".csv", ".parquet", ".npy"])
def test_a_run_cut_off_after_any_batch_resumes_to_the_same_file(tmp_path: Path,
                                                                 fmt: str) -> None:
    source = tmp_path / f"in{fmt}"
    source.write_bytes(b"rows")
    whole = tmp_path / "whole"
    whole.mkdir()
    with writer(whole, fmt, RunState.new(source, "m", "s", "user")) as w:
        for start in range(0, 30, 10):
            w.write(rows(start, start + 10))
    expected = read_back(whole / f"out{fmt}", fmt)
    assert not RunState.path_for(whole / f"out{fmt}").exists()  # finished: no state left

    out = tmp_path / f"out{fmt}"
    with pytest.raises(KeyboardInterrupt), writer(tmp_path, fmt, RunState.new(
            source, "m", "s", "user")) as w:
        w.write(rows(0, 10))
        w.write(rows(10, 20))
        raise KeyboardInterrupt
    if fmt == ".csv":  # cut off mid-write: half a batch after the state was saved
        with out.open("ab") as handle:
            handle.write(b'"20","success","low",0.5,0.25,"",""\n"21","succ')
    state = RunState.load(out, source, "m")
    assert (state.rows_done, state.session_id, state.id_column) == (20, "s", "user")
    with writer(tmp_path, fmt, state) as w:
        w.write(rows(20, 30))
    assert read_back(out, fmt) == expected
    assert not RunState.path_for(out).exists()


def test_the_npy_layout_is_compact_and_keeps_utf8_text(tmp_path: Path) -> None:
    source = tmp_path / "in.npy"
    source.write_bytes(b"rows")
    with writer(tmp_path, ".npy", RunState.new(source, "m", None, None)) as w:
        w.write(rows(0, 30))
    array = np.load(tmp_path / "out.npy")
    assert array.dtype.itemsize <= 8 + 8 + 4 + 4 + 4 + 24 + 160
    assert array["error_message"][0].decode() == "input 'x' contains NaN or Inf: é"
    assert array["user"].tolist() == list(range(30))


def test_resume_refuses_without_a_run_or_for_a_changed_file(tmp_path: Path) -> None:
    source = tmp_path / "in.csv"
    source.write_text("a\n1\n")
    out = tmp_path / "out.csv"
    with pytest.raises(BadArgumentError, match="nothing to resume"):
        RunState.load(out, source, "m")
    RunState.new(source, "m", "s", None).save(out)
    with pytest.raises(BadArgumentError, match="through model 'm', not of this one"):
        RunState.load(out, source, "other")
    source.write_text("a\n1\n2\n")
    with pytest.raises(BadArgumentError, match="changed since the interrupted run"):
        RunState.load(out, source, "m")
