"""How many messages a worker takes: enough rows for its next batches, no more."""

import threading

from inferfleet.worker.backlog import TakeAhead, TakenJobs, messages_to_take


def test_single_sample_jobs_are_limited_by_prefetch_not_by_rows() -> None:
    assert messages_to_take(2048, rows_per_job=1, queued_rows=40, jobs_ahead=60) == 1948


def test_big_jobs_are_taken_only_while_fewer_rows_than_the_budget_wait() -> None:
    assert messages_to_take(2048, rows_per_job=256, queued_rows=0, jobs_ahead=2) == 6
    assert messages_to_take(2048, rows_per_job=256, queued_rows=1024, jobs_ahead=4) == 0
    assert messages_to_take(2048, rows_per_job=256, queued_rows=2000, jobs_ahead=0) == 0


def test_an_idle_worker_always_takes_at_least_one_job_however_big() -> None:
    assert messages_to_take(2048, rows_per_job=100_000, queued_rows=0, jobs_ahead=0) == 1
    assert messages_to_take(2048, rows_per_job=256, queued_rows=0, jobs_ahead=0) == 8
    assert messages_to_take(2048, rows_per_job=0.0, queued_rows=0, jobs_ahead=0) == 2048


def test_a_worker_keeps_two_batches_ahead_until_it_has_measured_its_compute() -> None:
    ahead = TakeAhead(max_batch_rows=1024)
    assert ahead.rows == 2048
    ahead.batch_ran(rows=1024, seconds=0.01)  # a fast model: 100k rows/s
    assert ahead.rows == 2048  # two batches are less than 0.1 s of its compute


def test_a_heavy_models_worker_keeps_no_more_than_a_tenth_of_a_second_ahead() -> None:
    ahead = TakeAhead(max_batch_rows=1024)
    ahead.batch_ran(rows=64, seconds=0.166)  # ~385 rows/s: the bench's image model
    assert ahead.rows == 38
    assert messages_to_take(ahead.rows, rows_per_job=64, queued_rows=0, jobs_ahead=0) == 1
    assert messages_to_take(ahead.rows, rows_per_job=64, queued_rows=0, jobs_ahead=1) == 0
    for _ in range(50):  # a moving average: it follows the model the worker now runs
        ahead.batch_ran(rows=1024, seconds=0.02)
    assert ahead.rows == 2048
    ahead.batch_ran(rows=0, seconds=0.0)  # nothing measured: nothing changes
    assert ahead.rows == 2048


def test_jobs_taken_and_not_begun_are_counted_per_queue_from_any_thread() -> None:
    taken = TakenJobs()
    threads = [threading.Thread(target=lambda q=q: [taken.taken(q) for _ in range(1000)])
               for q in ("inferfleet.a", "inferfleet.b", "inferfleet.a")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert taken.not_begun(["inferfleet.a"]) == 2000
    assert taken.not_begun() == 3000
    for _ in range(1000):
        taken.began("inferfleet.b")
    taken.began("inferfleet.b")  # a begin without its take never counts below zero
    assert taken.not_begun(["inferfleet.b", "inferfleet"]) == 0
    assert taken.not_begun() == 2000
