"""Sessions: subscribers that come early, late, or die halfway; summaries that add up."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections import Counter

import numpy as np
import pytest

from inferfleet import Client, SampleResult
from inferfleet.errors import BadArgumentError
from inferfleet.settings import Settings

pytestmark = pytest.mark.usefixtures("worker")


def key(sample: SampleResult) -> tuple[str, str, str, object]:
    return sample.job_id, sample.sample_id, sample.status.value, sample.outputs.get("label")


def digits(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 64), dtype=np.float32)


def test_subscribers_before_and_after_the_session_see_the_same_results(client: Client) -> None:
    early: list[SampleResult] = []
    subscription = client.subscribe("early-late", timeout=60)
    reader = threading.Thread(target=lambda: early.extend(subscription))
    reader.start()
    jobs = client.submit_many("digits", digits(300), job_size=7, session_id="early-late")
    reader.join(60)
    assert not reader.is_alive(), "the subscriber did not end with the session"
    late = list(client.subscribe("early-late", timeout=30))
    assert len(early) == 300
    assert [key(s) for s in early] == [key(s) for s in late]
    assert {s.job_id for s in early} == {job.id for job in jobs}


def test_a_subscriber_killed_halfway_resumes_without_loss_or_duplicates(
        settings: Settings, client: Client) -> None:
    jobs = client.submit_many("digits", digits(200, seed=1), job_size=9, session_id="resume")
    client.results([job.id for job in jobs], timeout=60)
    code = ("import sys; from inferfleet import Client\n"
            "for s in (sub := Client(sys.argv[1]).subscribe('resume', timeout=30)):\n"
            "    print(sub.position, s.job_id, s.sample_id, flush=True)\n"
            "    input()\n")  # one sample per line the parent sends: it decides when to die
    child = subprocess.Popen([sys.executable, "-c", code, settings.redis_url], text=True,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert child.stdin is not None and child.stdout is not None
    seen = []
    for _ in range(83):
        seen.append(child.stdout.readline().split())
        child.stdin.write("\n")
        child.stdin.flush()
    os.kill(child.pid, signal.SIGKILL)
    child.wait(10)
    position = seen[-1][0]
    rest = list(client.subscribe("resume", after=position, timeout=30))
    got = [(job, sample) for _, job, sample in seen] + [(s.job_id, s.sample_id) for s in rest]
    assert len(got) == 200 and len(set(got)) == 200


def test_the_summary_counts_equal_the_results_counts(client: Client) -> None:
    good = digits(40, seed=2)
    bad = good[:10].copy()
    bad[::2, 3] = np.nan
    jobs = client.submit_many("digits", good, job_size=16, session_id="counts")
    jobs += [client.submit("digits", bad, session_id="counts", validate=False)]
    results = client.results([job.id for job in jobs], timeout=60)
    statuses = Counter(s.status.value for r in results for s in r.samples)
    summary = client.session_summary("counts")
    assert summary.jobs_submitted == summary.jobs_done == len(jobs)
    assert summary.jobs_by_status == dict(Counter(r.status.value for r in results))
    assert summary.samples_submitted == 50 and summary.samples_pending == 0
    assert (summary.samples_succeeded, summary.samples_failed) == \
        (statuses["success"], statuses["failure"]) == (45, 5)
    assert summary.success_rate == pytest.approx(0.9)
    assert summary.models["digits"].submitted == summary.models["digits"].done == 50
    assert summary.latency_p50_ms is not None and summary.latency_p50_ms > 0
    assert summary.latency_p50_ms <= summary.latency_p95_ms <= summary.latency_p99_ms
    assert summary.samples_per_s is not None and summary.samples_per_s > 0


def test_session_ids_that_could_alias_keys_are_refused(client: Client) -> None:
    with pytest.raises(BadArgumentError, match="session id 'a:stats'"):
        client.submit("digits", digits(1), session_id="a:stats")
    with pytest.raises(BadArgumentError, match="position"):
        client.subscribe("fine", after="not-a-position")
