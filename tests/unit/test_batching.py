import threading
import time
from collections.abc import Hashable, Mapping

import numpy as np
import pytest

from inferfleet.batching import MicroBatcher
from inferfleet.errors import BatchContractError


class RecordingModel:
    """Doubles its input; records every call's key and row count; raises on a poison row."""

    def __init__(self, poison: float | None = None) -> None:
        self.calls: list[tuple[Hashable, int]] = []
        self.poison = poison
        self.release = threading.Event()
        self.release.set()

    def __call__(self, key: Hashable, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.release.wait(5)
        x = inputs["x"]
        self.calls.append((key, len(x)))
        if self.poison is not None and (x == self.poison).any():
            raise ValueError("poison row")
        return {"y": x * 2, "labels": [f"r{v}" for v in x[:, 0].tolist()]}


def rows(*values: float) -> dict[str, np.ndarray]:
    return {"x": np.array(values, dtype=np.float32).reshape(-1, 1)}


def test_a_lone_request_runs_at_once_without_waiting() -> None:
    model = RecordingModel()
    batcher = MicroBatcher(model, max_batch_rows=64, max_wait_ms=10_000)
    started = time.monotonic()
    outcome = batcher.submit("m", rows(1, 2)).result(5)
    assert time.monotonic() - started < 1.0
    np.testing.assert_array_equal(outcome.outputs["y"], [[2], [4]])
    assert outcome.outputs["labels"] == ["r1.0", "r2.0"]
    batcher.close()


def test_requests_queued_behind_a_running_batch_are_coalesced_and_split_back() -> None:
    model = RecordingModel()
    batcher = MicroBatcher(model, max_batch_rows=64, max_wait_ms=0)
    model.release.clear()
    first = batcher.submit("m", rows(0))
    time.sleep(0.05)  # let the runner take the first request and block in the model
    waiting = [batcher.submit("m", rows(i, i + 0.5)) for i in range(1, 11)]
    model.release.set()
    first.result(5)
    outcomes = [f.result(5) for f in waiting]
    assert [n for _, n in model.calls] == [1, 20]
    for i, outcome in enumerate(outcomes, start=1):
        np.testing.assert_array_equal(outcome.outputs["y"].ravel(), [2 * i, 2 * i + 1])
        assert outcome.batch_rows == 20
    assert len({o.batch_id for o in outcomes}) == 1
    batcher.close()


def test_keys_never_share_a_batch() -> None:
    model = RecordingModel()
    batcher = MicroBatcher(model, max_batch_rows=64, max_wait_ms=0)
    model.release.clear()
    futures = [batcher.submit(key, rows(i)) for i, key in enumerate(["a", "b", "a", "b"])]
    model.release.set()
    for future in futures:
        future.result(5)
    by_key: dict[Hashable, int] = {}
    for key, n in model.calls:
        by_key[key] = by_key.get(key, 0) + n
    assert by_key == {"a": 2, "b": 2}
    assert np.asarray(futures[2].result().outputs["y"]).ravel().tolist() == [4]
    batcher.close()


def test_batches_never_exceed_max_batch_rows_and_large_requests_are_sliced() -> None:
    model = RecordingModel()
    batcher = MicroBatcher(model, max_batch_rows=4, max_wait_ms=0)
    outcome = batcher.submit("m", rows(*range(10))).result(5)
    assert [n for _, n in model.calls] == [4, 4, 2]
    np.testing.assert_array_equal(outcome.outputs["y"].ravel(), np.arange(10) * 2)
    batcher.close()


def test_the_batch_waits_for_announced_jobs_but_no_longer_than_max_wait() -> None:
    model = RecordingModel()
    batcher = MicroBatcher(model, max_batch_rows=64, max_wait_ms=2_000)
    with batcher.arriving():
        first = batcher.submit("m", rows(1))
        time.sleep(0.05)
        second = batcher.submit("m", rows(2))
    first.result(5)
    second.result(5)
    assert [n for _, n in model.calls] == [2]

    short = MicroBatcher(model, max_batch_rows=64, max_wait_ms=50)
    with short.arriving():
        started = time.monotonic()
        short.submit("m", rows(3)).result(5)
        assert time.monotonic() - started < 1.5
    batcher.close()
    short.close()


def test_a_failing_row_is_isolated_and_its_neighbours_succeed() -> None:
    model = RecordingModel(poison=13)
    batcher = MicroBatcher(model, max_batch_rows=64, max_wait_ms=0)
    model.release.clear()
    first = batcher.submit("m", rows(1))
    time.sleep(0.05)
    good = batcher.submit("m", rows(2, 3))
    bad = batcher.submit("m", rows(4, 13, 5))
    model.release.set()
    first.result(5)
    bad_outcome = bad.result(5)
    assert bad_outcome.failed_rows.keys() == {1}
    assert "poison row" in bad_outcome.failed_rows[1]
    np.testing.assert_array_equal(bad_outcome.outputs["y"].ravel(), [8, 0, 10])
    assert bad_outcome.outputs["labels"] == ["r4.0", None, "r5.0"]
    assert good.result(5).failed_rows == {}
    np.testing.assert_array_equal(good.result(5).outputs["y"].ravel(), [4, 6])
    batcher.close()


def test_a_batch_function_that_breaks_the_row_contract_fails_its_requests_clearly() -> None:
    def short_by_one(key: Hashable, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"y": inputs["x"][1:]}

    batcher = MicroBatcher(short_by_one, max_batch_rows=8, max_wait_ms=0)
    with pytest.raises(BatchContractError, match="returned 1 rows of output 'y' for 2"):
        batcher.submit("m", rows(1, 2)).result(5)
    batcher.close()


def test_bad_arguments_are_refused_with_their_values() -> None:
    with pytest.raises(ValueError, match="max_batch_rows must be >= 1, got 0"):
        MicroBatcher(RecordingModel(), max_batch_rows=0, max_wait_ms=0)
    batcher = MicroBatcher(RecordingModel(), max_batch_rows=8, max_wait_ms=0)
    with pytest.raises(ValueError, match="share their number of rows"):
        batcher.submit("m", {"a": np.zeros((2, 1)), "b": np.zeros((3, 1))})
    batcher.close()
    with pytest.raises(RuntimeError, match="closed"):
        batcher.submit("m", rows(1))
