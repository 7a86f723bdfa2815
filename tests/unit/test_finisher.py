"""The finisher ends each handed-over job once, many per call, in its own thread."""

from __future__ import annotations

import gc
import threading
import weakref
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from contextlib import contextmanager

import pytest

from inferfleet.worker.finisher import Finisher

Ended = list[tuple[str, object]]


class Recorder:
    """An `end_jobs` that records each call and signals every job it ended."""

    def __init__(self) -> None:
        self.calls: list[list[tuple[str, object]]] = []
        self.lock = threading.Lock()
        self.ended: dict[str, threading.Event] = {}

    def expect(self, *jobs: str) -> None:
        for job in jobs:
            self.ended[job] = threading.Event()

    def __call__(self, jobs: Sequence[tuple[str, object]]) -> None:
        with self.lock:
            self.calls.append(list(jobs))
        for job, _ in jobs:
            self.ended[job].set()

    def wait(self, *jobs: str) -> None:
        for job in jobs:
            assert self.ended[job].wait(5), f"{job} never ended"

    def outcomes(self) -> dict[str, object]:
        with self.lock:
            return {job: outcome for call in self.calls for job, outcome in call}


@contextmanager
def started(end_jobs: Callable[[Sequence[tuple[str, object]]], None], *,
            time_limit_s: float = 30.0) -> Iterator[Finisher[str, str]]:
    """A running finisher, stopped and joined at the end."""
    finisher: Finisher[str, str] = Finisher(end_jobs, time_limit_s=time_limit_s)
    finisher.start()
    try:
        yield finisher
    finally:
        finisher.stop()
        finisher.join(5)


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def finisher(recorder: Recorder) -> Iterator[Finisher[str, str]]:
    with started(recorder) as finisher:
        yield finisher


def test_each_job_ends_once_with_its_outcome_or_its_exception(
        finisher: Finisher[str, str], recorder: Recorder) -> None:
    recorder.expect("a", "b")
    ok, broken = Future[str](), Future[str]()
    finisher.hand_over("a", ok)
    finisher.hand_over("b", broken)
    ok.set_result("rows")
    broken.set_exception(ValueError("batch failed"))
    recorder.wait("a", "b")
    outcomes = recorder.outcomes()
    assert outcomes["a"] == "rows"
    assert isinstance(outcomes["b"], ValueError)
    assert sum(len(call) for call in recorder.calls) == 2
    assert finisher.drain(5) and finisher.pending() == 0


@pytest.fixture
def impatient(recorder: Recorder) -> Iterator[Finisher[str, str]]:
    """A finisher whose jobs time out after 50 ms."""
    with started(recorder, time_limit_s=0.05) as finisher:
        yield finisher


def test_jobs_finished_while_it_is_busy_end_together(recorder: Recorder) -> None:
    release = threading.Event()
    first_call = threading.Event()

    def slow_end(jobs: Sequence[tuple[str, object]]) -> None:
        first_call.set()
        release.wait(5)
        recorder(jobs)

    with started(slow_end) as finisher:
        recorder.expect("first", *(f"job{i}" for i in range(50)))
        head = Future[str]()
        finisher.hand_over("first", head)
        head.set_result("x")
        assert first_call.wait(5)
        futures = [Future[str]() for _ in range(50)]
        for i, future in enumerate(futures):
            finisher.hand_over(f"job{i}", future)
            future.set_result(str(i))
        release.set()
        recorder.wait(*(f"job{i}" for i in range(50)))
        assert [len(call) for call in recorder.calls] == [1, 50]


def test_a_job_whose_batch_never_ran_ends_with_a_timeout_and_is_cancelled(
        impatient: Finisher[str, str], recorder: Recorder) -> None:
    recorder.expect("stuck")
    stuck = Future[str]()
    impatient.hand_over("stuck", stuck)
    recorder.wait("stuck")
    assert isinstance(recorder.outcomes()["stuck"], TimeoutError)
    assert stuck.cancelled()


def test_a_batch_that_ends_after_the_time_limit_does_not_end_the_job_twice(
        impatient: Finisher[str, str], recorder: Recorder) -> None:
    recorder.expect("late", "next")
    late = Future[str]()
    assert late.set_running_or_notify_cancel()  # a batch has begun it: no cancel
    impatient.hand_over("late", late)
    recorder.wait("late")
    late.set_result("too late")
    following = Future[str]()
    impatient.hand_over("next", following)
    following.set_result("on time")
    recorder.wait("next")
    assert impatient.drain(5)
    ended = [job for call in recorder.calls for job, _ in call]
    assert ended == ["late", "next"]
    assert isinstance(recorder.outcomes()["late"], TimeoutError)


def test_an_end_that_raises_does_not_stop_the_jobs_after_it(recorder: Recorder) -> None:
    def end_jobs(jobs: Sequence[tuple[str, object]]) -> None:
        if any(job == "bad" for job, _ in jobs):
            raise RuntimeError("a bug")
        recorder(jobs)

    with started(end_jobs) as finisher:
        recorder.expect("good")
        bad, good = Future[str](), Future[str]()
        finisher.hand_over("bad", bad)
        bad.set_result("x")
        assert finisher.drain(5)
        finisher.hand_over("good", good)
        good.set_result("y")
        recorder.wait("good")


def test_drain_waits_for_the_jobs_handed_over_and_stop_ends_the_thread(
        finisher: Finisher[str, str], recorder: Recorder) -> None:
    recorder.expect("a")
    future = Future[str]()
    finisher.hand_over("a", future)
    assert not finisher.drain(0.01)
    assert finisher.pending() == 1
    threading.Timer(0.05, future.set_result, args=("done",)).start()
    assert finisher.drain(5)
    finisher.stop()
    finisher.join(5)
    with pytest.raises(RuntimeError, match="not running"):
        finisher.hand_over("b", Future())


def test_a_finisher_not_started_refuses_jobs(recorder: Recorder) -> None:
    finisher: Finisher[str, str] = Finisher(recorder, time_limit_s=30)
    with pytest.raises(RuntimeError, match="not running"):
        finisher.hand_over("a", Future())


def test_an_ended_job_is_freed_at_once_not_left_to_the_cyclic_collector() -> None:
    class Job:
        """Holds its own future, as a worker's job does."""

        def __init__(self) -> None:
            self.future = Future[str]()

    class Ends:
        def __init__(self) -> None:
            self.ended = threading.Event()

        def __call__(self, jobs: Sequence[tuple[object, object]]) -> None:
            self.ended.set()

    ends = Ends()
    gc.disable()
    try:
        with started(ends) as own:  # type: ignore[arg-type]
            job = Job()
            gone = weakref.ref(job)
            own.hand_over(job, job.future)
            job.future.set_result("rows")
            assert ends.ended.wait(5) and own.drain(5)
            del job
            assert gone() is None, "the job is still referenced (a reference cycle)"
    finally:
        gc.enable()
