"""The housekeeping loop: duties run on time, one that raises runs again, and the loop
stops when told (waits are on events, never bare sleeps)."""

from __future__ import annotations

import itertools
import threading
import time

import pytest

from inferfleet.worker.housekeeping import Housekeeping


def test_periodic_duties_run_until_the_loop_is_stopped_and_joined() -> None:
    runs: list[float] = []
    third = threading.Event()

    def duty() -> None:
        runs.append(time.monotonic())
        if len(runs) == 3:
            third.set()

    loop = Housekeeping()
    loop.every(0.01, duty, name="tick")
    loop.start()
    assert third.wait(5)
    loop.stop()
    loop.join(5)
    assert not loop.running
    assert all(b - a >= 0.009 for a, b in itertools.pairwise(runs))


def test_a_duty_that_raises_is_run_again_and_the_others_go_on() -> None:
    failures, healthy = [], threading.Event()

    def broken() -> None:
        failures.append(1)
        raise RuntimeError("redis is down")

    loop = Housekeeping()
    loop.every(0.005, broken, name="broken")
    loop.every(0.005, lambda: len(failures) >= 3 and healthy.set(), name="healthy")
    loop.start()
    try:
        assert healthy.wait(5)
    finally:
        loop.stop()
        loop.join(5)


def test_an_asked_duty_runs_once_per_ask_after_its_delay_and_no_more_often_than_allowed(
        ) -> None:
    ran = threading.Event()
    times: list[float] = []

    def duty() -> None:
        times.append(time.monotonic())
        ran.set()

    loop = Housekeeping()
    loop.when_asked(duty, name="asked", min_interval_s=0.05)
    loop.start()
    try:
        asked_at = time.monotonic()
        loop.ask("asked", delay_s=0.02)
        loop.ask("asked", delay_s=0.5)  # a later ask never postpones an earlier one
        assert ran.wait(5)
        assert 0.02 <= times[0] - asked_at < 0.5
        ran.clear()
        loop.ask("asked")  # at once, but no sooner than 0.05 s after the last run
        assert ran.wait(5)
        assert times[1] - times[0] >= 0.05
        assert len(times) == 2  # each ask ran once
    finally:
        loop.stop()
        loop.join(5)


def test_two_duties_cannot_share_a_name() -> None:
    loop = Housekeeping()
    loop.every(1, lambda: None, name="x")
    with pytest.raises(ValueError, match="'x' is registered already"):
        loop.when_asked(lambda: None, name="x")
