"""How many messages a worker takes: enough rows for its next batches, no more."""

from inferfleet.worker.backlog import messages_to_take


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
