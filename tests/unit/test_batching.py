import threading
import time
from collections.abc import Hashable, Mapping
from concurrent.futures import Future

import numpy as np
import pytest

from inferfleet.batching import BatchOutcome, BatchRecord, MicroBatcher
from inferfleet.errors import BatchContractError


class RecordingModel:
    """Doubles its input; records every call's key and row count; raises on a poison row.

    While `release` is clear, a call for a key in `held` blocks (after setting `entered`),
    so that tests can hold a key busy and queue requests behind it.
    """

    def __init__(self, poison: float | None = None) -> None:
        self.calls: list[tuple[Hashable, int, str]] = []
        self.poison = poison
        self.release = threading.Event()
        self.release.set()
        self.entered = threading.Event()
        self.held: set[Hashable] = set()

    def __call__(self, key: Hashable, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if key in self.held:
            self.entered.set()
            self.release.wait(5)
        x = inputs["x"]
        self.calls.append((key, len(x), threading.current_thread().name))
        if self.poison is not None and (x == self.poison).any():
            raise ValueError("poison row")
        return {"y": x * 2, "labels": [f"r{v}" for v in x[:, 0].tolist()]}

    def sizes(self) -> list[int]:
        return [n for _, n, _ in self.calls]


def rows(*values: float) -> dict[str, np.ndarray]:
    return {"x": np.array(values, dtype=np.float32).reshape(-1, 1)}


def occupy(batcher: MicroBatcher, model: RecordingModel, key: Hashable = "m"
           ) -> Future[BatchOutcome]:
    """Start a batch under `key` that holds the model until `model.release` is set."""
    model.held = {key}
    model.release.clear()
    model.entered.clear()
    done: Future[Future[BatchOutcome]] = Future()
    threading.Thread(target=lambda: done.set_result(batcher.submit(key, rows(0)))).start()
    assert model.entered.wait(5)
    return done  # type: ignore[return-value]


def test_a_lone_request_runs_at_once_in_the_callers_thread() -> None:
    model = RecordingModel()
    batcher = MicroBatcher(model, max_batch_rows=64, max_wait_ms=10_000)
    started = time.monotonic()
    future = batcher.submit("m", rows(1, 2))
    assert future.done() and time.monotonic() - started < 1.0
    assert model.calls[0][2] == threading.current_thread().name
    np.testing.assert_array_equal(future.result().outputs["y"], [[2], [4]])
    assert future.result().outputs["labels"] == ["r1.0", "r2.0"]
    batcher.close()


def test_requests_queued_behind_a_running_batch_are_coalesced_and_split_back() -> None:
    model = RecordingModel()
    batcher = MicroBatcher(model, max_batch_rows=64, max_wait_ms=0)
    first = occupy(batcher, model)
    waiting = [batcher.submit("m", rows(i, i + 0.5)) for i in range(1, 11)]
    assert batcher.queued_rows == 20  # what a worker counts before it takes more
    model.release.set()
    first.result(5).result(5)
    outcomes = [f.result(5) for f in waiting]
    assert model.sizes() == [1, 20]
    assert batcher.queued_rows == 0
    for i, outcome in enumerate(outcomes, start=1):
        np.testing.assert_array_equal(outcome.outputs["y"].ravel(), [2 * i, 2 * i + 1])
        assert outcome.batch_rows == 20
    assert len({o.batch_id for o in outcomes}) == 1
    batcher.close()


def test_requests_whose_callers_gave_up_are_left_out_of_the_batch() -> None:
    model = RecordingModel()
    batcher = MicroBatcher(model, max_batch_rows=64, max_wait_ms=0)
    first = occupy(batcher, model)
    abandoned = batcher.submit("m", rows(1, 2, 3))
    kept = batcher.submit("m", rows(4))
    assert abandoned.cancel()  # its job timed out waiting
    model.release.set()
    first.result(5).result(5)
    np.testing.assert_array_equal(kept.result(5).outputs["y"], [[8]])
    assert model.sizes() == [1, 1] and abandoned.cancelled()
    only_abandoned = occupy(batcher, model)
    assert batcher.submit("m", rows(5)).cancel()
    model.release.set()
    only_abandoned.result(5).result(5)
    assert batcher.submit("m", rows(6)).result(5).batch_rows == 1  # the lane is free again
    assert batcher.queued_rows == 0  # abandoned rows are no longer counted
    batcher.close()


def test_idle_lanes_are_dropped_so_keys_holding_old_models_can_be_freed() -> None:
    model = RecordingModel()
    batcher = MicroBatcher(model, max_batch_rows=64, max_wait_ms=0)
    batcher.LANE_IDLE_S = 0.2
    batcher.submit("inline", rows(1)).result(5)  # ran in this thread: no lane is kept
    first = occupy(batcher, model, "queued")
    behind = batcher.submit("queued", rows(2))  # starts the lane's runner thread
    runner = batcher._lanes["queued"].thread
    model.release.set()
    first.result(5).result(5)
    behind.result(5)
    assert runner is not None
    runner.join(5)  # it ends once idle for LANE_IDLE_S
    assert not runner.is_alive() and batcher._lanes == {}
    assert batcher.submit("queued", rows(3)).result(5).outputs["y"].tolist() == [[6]]
    batcher.close()


def test_keys_never_share_a_batch() -> None:
    model = RecordingModel()
    batcher = MicroBatcher(model, max_batch_rows=64, max_wait_ms=0)
    first = occupy(batcher, model, key="a")
    futures = [batcher.submit(key, rows(i)) for i, key in enumerate(["a", "b", "a", "b"], 1)]
    model.release.set()
    first.result(5).result(5)
    for future in futures:
        future.result(5)
    by_key: dict[Hashable, int] = {}
    for key, n, _ in model.calls:
        by_key[key] = by_key.get(key, 0) + n
    assert by_key == {"a": 3, "b": 2}
    assert np.asarray(futures[2].result().outputs["y"]).ravel().tolist() == [6]
    batcher.close()


def test_batches_never_exceed_max_batch_rows_and_large_requests_are_sliced() -> None:
    model = RecordingModel()
    batcher = MicroBatcher(model, max_batch_rows=4, max_wait_ms=0)
    outcome = batcher.submit("m", rows(*range(10))).result(5)
    assert model.sizes() == [4, 4, 2]
    np.testing.assert_array_equal(outcome.outputs["y"].ravel(), np.arange(10) * 2)
    batcher.close()


def test_the_batch_waits_for_announced_jobs_but_no_longer_than_max_wait() -> None:
    model = RecordingModel()
    batcher = MicroBatcher(model, max_batch_rows=64, max_wait_ms=2_000)
    with batcher.arriving():  # another job is on its way
        first = batcher.submit("m", rows(1))
        assert not first.done()
        time.sleep(0.05)
        second = batcher.submit("m", rows(2))
    first.result(5)
    second.result(5)
    assert model.sizes() == [2]

    short = MicroBatcher(model, max_batch_rows=64, max_wait_ms=50)
    with short.arriving():
        started = time.monotonic()
        short.submit("m", rows(3)).result(5)
        assert time.monotonic() - started < 1.5
    batcher.close()
    short.close()


def test_a_job_does_not_wait_for_its_own_announcement() -> None:
    model = RecordingModel()
    batcher = MicroBatcher(model, max_batch_rows=64, max_wait_ms=10_000)
    with batcher.arriving() as arrival:
        assert batcher.submit("m", rows(1), arrival=arrival).done()
    batcher.close()


def test_a_backlog_hint_holds_the_batch_open_for_what_is_queued() -> None:
    model = RecordingModel()
    queued = [1]
    batcher = MicroBatcher(model, max_batch_rows=64, max_wait_ms=300,
                           backlog=lambda key: queued[0])
    first = batcher.submit("m", rows(1))
    assert not first.done()
    time.sleep(0.05)
    queued[0] = 0
    second = batcher.submit("m", rows(2))
    first.result(5)
    second.result(5)
    assert model.sizes() == [2]
    batcher.close()


def test_a_backlog_hint_that_raises_counts_as_none_and_stops_no_batch() -> None:
    def broken_hint(key: Hashable) -> int:
        raise RuntimeError("Set changed size during iteration")

    model = RecordingModel()
    batcher = MicroBatcher(model, max_batch_rows=64, max_wait_ms=10_000, backlog=broken_hint)
    assert batcher.submit("m", rows(1)).result(5).batch_rows == 1  # inline, not held open
    first = occupy(batcher, model)
    queued = [batcher.submit("m", rows(i)) for i in (2, 3)]
    model.release.set()
    first.result(5).result(5)
    assert [f.result(5).batch_rows for f in queued] == [2, 2]  # the lane's thread lives on
    assert batcher.submit("m", rows(4)).result(5).batch_rows == 1
    batcher.close()


def test_a_failing_row_is_isolated_and_its_neighbours_succeed() -> None:
    model = RecordingModel(poison=13)
    batcher = MicroBatcher(model, max_batch_rows=64, max_wait_ms=0)
    first = occupy(batcher, model)
    good = batcher.submit("m", rows(2, 3))
    bad = batcher.submit("m", rows(4, 13, 5))
    model.release.set()
    first.result(5).result(5)
    bad_outcome = bad.result(5)
    assert bad_outcome.failed_rows.keys() == {1}
    assert "poison row" in bad_outcome.failed_rows[1]
    np.testing.assert_array_equal(bad_outcome.outputs["y"].ravel(), [8, 0, 10])
    assert bad_outcome.outputs["labels"] == ["r4.0", None, "r5.0"]
    assert good.result(5).failed_rows == {}
    np.testing.assert_array_equal(good.result(5).outputs["y"].ravel(), [4, 6])
    batcher.close()


def test_the_observer_hears_of_each_batch_with_the_tags_of_its_requests() -> None:
    model = RecordingModel(poison=13)
    heard: list[BatchRecord] = []
    batcher = MicroBatcher(model, max_batch_rows=64, max_wait_ms=0, on_batch=heard.append)
    first = occupy(batcher, model)
    before = time.time()
    waiting = [batcher.submit("m", rows(1, 13), tag="a"), batcher.submit("m", rows(2)),
               batcher.submit("m", rows(3), tag="c")]
    model.release.set()
    first.result(5).result(5)
    outcomes = [f.result(5) for f in waiting]
    [_, batch] = heard
    assert (batch.key, batch.tags, batch.rows, batch.failed_rows) == ("m", ["a", None, "c"], 4, 1)
    assert batch.batch_id == outcomes[0].batch_id
    assert before <= batch.started_at == outcomes[0].started_at <= time.time()
    assert batch.run_s * 1000 == pytest.approx(outcomes[0].run_ms)
    batcher.close()


def test_an_impatient_request_never_waits_for_announced_jobs_or_a_backlog() -> None:
    model = RecordingModel()
    batcher = MicroBatcher(model, max_batch_rows=64, max_wait_ms=60_000,
                           backlog=lambda _key: 1000)
    with batcher.arriving():
        future = batcher.submit("m", rows(1), patient=False)
        assert future.done()  # ran inline, though jobs were announced and queued
        model.held, model.release, model.entered = {"m"}, threading.Event(), threading.Event()
        running: Future[Future[BatchOutcome]] = Future()
        threading.Thread(target=lambda: running.set_result(
            batcher.submit("m", rows(0), patient=False))).start()
        assert model.entered.wait(5)
        queued = batcher.submit("m", rows(2), patient=False)  # behind the running batch
        model.release.set()
        running.result(5).result(5)
        np.testing.assert_array_equal(queued.result(5).outputs["y"], [[4]])  # no 60 s wait
    batcher.close()


def test_an_observer_that_raises_fails_no_batch() -> None:
    def broken(_record: BatchRecord) -> None:
        raise RuntimeError("observer bug")

    batcher = MicroBatcher(RecordingModel(), max_batch_rows=8, max_wait_ms=0, on_batch=broken)
    np.testing.assert_array_equal(batcher.submit("m", rows(1)).result(5).outputs["y"], [[2]])
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
