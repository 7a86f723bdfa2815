import pytest

from inferfleet.ledger import bucket_upper_ms, latency_bucket
from inferfleet.sessions import summarise


def test_latency_buckets_are_quarter_octaves_that_contain_the_latency() -> None:
    for latency_ms in [0.05, 1.0, 3.7, 12.0, 250.0, 9_999.0]:
        bucket = latency_bucket(latency_ms)
        assert bucket_upper_ms(bucket - 1) <= latency_ms < bucket_upper_ms(bucket)
        assert bucket_upper_ms(bucket) / latency_ms < 2 ** 0.25 + 1e-9


def test_a_summary_is_read_from_counters() -> None:
    stats = {"jobs_submitted": "4", "jobs_done": "3", "jobs:succeeded": "2", "jobs:partial": "1",
             "samples_submitted": "100", "samples_done": "80", "samples:success": "78",
             "samples:failure": "2", "model:digits:submitted": "100",
             "model:digits:done": "80", f"latency:{latency_bucket(2.0)}": "70",
             f"latency:{latency_bucket(40.0)}": "10", "first_submitted_at": "100.0",
             "last_finished_at": "102.0"}
    summary = summarise("s", stats)
    assert (summary.samples_pending, summary.samples_failed) == (20, 2)
    assert summary.jobs_by_status == {"succeeded": 2, "partial": 1}
    assert summary.success_rate == pytest.approx(78 / 80)
    assert summary.latency_p50_ms == pytest.approx(bucket_upper_ms(latency_bucket(2.0)))
    assert summary.latency_p99_ms == pytest.approx(bucket_upper_ms(latency_bucket(40.0)))
    assert summary.samples_per_s == pytest.approx(40.0)
    assert summary.models["digits"].done == 80


def test_an_empty_session_summarises_to_zeros() -> None:
    summary = summarise("nothing", {})
    assert summary.jobs_submitted == 0 and summary.latency_p50_ms is None
    assert summary.success_rate is None and summary.samples_per_s is None
