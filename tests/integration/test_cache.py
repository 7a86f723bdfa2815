"""The fleet-wide result cache against a real Redis: through a real worker (hits, their
outputs, the counts, in-flight samples computed once), and its own parts in this process
(the memory bound, versions, failures never stored) with a real micro-batcher."""

from __future__ import annotations

import re
import threading
import urllib.request
from collections.abc import Hashable, Mapping
from pathlib import Path

import numpy as np
import pytest
import redis
from conftest import StartWorker
from faultkit import holdout_rows

from inferfleet import Client, keys
from inferfleet.batching import MicroBatcher
from inferfleet.cache import ResultCache, decode_entries, encode_rows, sample_digests
from inferfleet.embedded import free_port
from inferfleet.settings import Settings
from inferfleet.validation import ValidatedJob
from inferfleet.worker.cached import JobCache, Outputs

#: The toy models below give one output, kept whole.
KEEP_Y = Outputs(("y",), lambda columns: columns)


def batch_rows_computed(port: int) -> float:
    """`inferfleet_batch_rows_sum` of the digits model, read from a worker's /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    [value] = re.findall(r'^inferfleet_batch_rows_sum\{model="digits"\} (\S+)$', text, re.M)
    return float(value)


def digits_worker_with_metrics(start: StartWorker) -> int:
    """Start a digits worker serving metrics; their port."""
    port = free_port()
    start(models="digits", metrics_port=str(port))
    return port


def test_repeated_samples_are_answered_from_the_cache_with_the_outputs_computed_first(
        private_settings: Settings, start_private_worker: StartWorker,
        models_dir: Path) -> None:
    port = digits_worker_with_metrics(start_private_worker)
    x = holdout_rows(models_dir, 15)
    with Client(settings=private_settings) as client:
        first = client.submit("digits", x[:10], session_id="cached", cache=True).result(30)
        computed = batch_rows_computed(port)
        again = client.submit("digits", x[5:15], session_id="cached", cache=True).result(30)
        assert batch_rows_computed(port) - computed == 5  # only the five new samples ran
        assert again.cache_hits == [0, 1, 2, 3, 4] and again.cache_hit_rate == 0.5
        assert [s.cache_hit for s in again.samples] == [True] * 5 + [False] * 5
        assert first.cache_hits == [] and not any(s.cache_hit for s in first.samples)
        np.testing.assert_array_equal(again.column("probabilities")[:5],
                                      first.column("probabilities")[5:])
        assert [s.outputs["label"] for s in again.samples[:5]] == \
            [s.outputs["label"] for s in first.samples[5:]]
        assert again.batch_ids and again.timings.inference_ms is not None
        summary = client.session_summary("cached")
        assert (summary.samples_cache_hits, summary.cache_hit_rate) == (5, 0.25)

        all_hits = client.submit("digits", x[:10], cache=True).result(30)
        assert all_hits.cache_hits == list(range(10)) and all_hits.batch_ids == []
        assert all_hits.timings.inference_ms is None
        np.testing.assert_array_equal(all_hits.column("probabilities"),
                                      first.column("probabilities"))
        off = client.submit("digits", x[:10]).result(30)  # the model's config: no cache
        refused = client.submit("digits", x[:10], cache=False).result(30)
        assert off.cache_hits == [] and refused.cache_hits == []
        assert batch_rows_computed(port) - computed == 25


def test_identical_samples_in_flight_are_computed_once(
        private_settings: Settings, start_private_worker: StartWorker,
        models_dir: Path) -> None:
    port = digits_worker_with_metrics(start_private_worker)
    row = holdout_rows(models_dir, 1)
    with Client(settings=private_settings) as client:
        client.submit("digits", row, cache=False).result(30)  # warm, not cached
        computed = batch_rows_computed(port)
        jobs = client.submit_many("digits", np.repeat(row, 400, axis=0), job_size=40,
                                  cache=True)
        results = client.results([job.id for job in jobs], timeout=60)
    assert {r.status for r in results} == {"succeeded"}
    # Ten jobs of forty copies of one sample: one row ran, as few batches as it took
    # for the first computation to be stored; every copy got the same outputs.
    assert batch_rows_computed(port) - computed == 1
    probabilities = np.concatenate([r.column("probabilities") for r in results])
    np.testing.assert_array_equal(probabilities, np.repeat(probabilities[:1], 400, axis=0))


def _cache(settings: Settings, **options: int) -> ResultCache:
    client = redis.Redis.from_url(settings.redis_url)
    return ResultCache(client, ttl_s=options.get("ttl_s", 60),
                       max_bytes=options.get("max_bytes", 2**20))


def test_the_cache_stops_growing_at_its_bound_and_never_evicts(
        private_settings: Settings) -> None:
    cache = _cache(private_settings, max_bytes=20_000)
    client = cache.client
    client.lpush(keys.model_queue("m"), b"a queued job")
    outputs = {"probabilities": np.random.default_rng(0).random((1000, 10), np.float32)}
    entries = [(bytes([i % 256, i // 256]) * 10, entry)
               for i, entry in enumerate(encode_rows(outputs, range(1000)))]
    written = sum(cache.put("m", "1", entries[i:i + 100]) for i in range(0, 1000, 100))
    assert 0 < written < 1000
    bucket = int(client.get(keys.cache_bytes(cache._bucket())) or 0)
    assert bucket <= 20_000
    assert cache.put("m", "1", entries[-1:]) == 0  # full: writes are skipped
    assert client.llen(keys.model_queue("m")) == 1  # and nothing else is touched
    got = cache.get("m", "1", [digest for digest, _ in entries])
    assert sum(entry is not None for entry in got) == written
    np.testing.assert_array_equal(decode_entries([got[0] or b""])["probabilities"],
                                  outputs["probabilities"][:1])
    assert client.ttl(keys.cache_bucket("m", "1", cache._bucket())) <= 120
    client.close()


def test_a_new_version_never_answers_from_an_old_versions_entries(
        private_settings: Settings) -> None:
    cache = _cache(private_settings)
    outputs = {"y": np.ones((1, 3), np.float32), "label": ["one"]}
    cache.put("m", "1", [(b"d" * 20, encode_rows(outputs, [0])[0])])
    assert cache.get("m", "2", [b"d" * 20]) == [None]
    assert decode_entries([cache.get("m", "1", [b"d" * 20])[0] or b""])["label"] == ["one"]
    cache.forget_other_versions("m", "2")  # what a worker does when it loads version 2
    assert cache.get("m", "1", [b"d" * 20]) == [None]
    assert not cache.client.keys("inferfleet:cache:m:1:*")
    cache.client.close()


def test_failures_are_never_cached_and_waiters_fail_with_the_computation(
        private_settings: Settings) -> None:
    calls: list[int] = []

    def model(_key: Hashable, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = inputs["x"]
        calls.append(len(x))
        if (x == 13).any():
            raise ValueError("poison row")
        return {"y": x * 2}

    batcher = MicroBatcher(model, max_batch_rows=64, max_wait_ms=0)
    job_cache = JobCache(_cache(private_settings))
    x = np.array([[1], [13], [2], [13]], np.float32)
    job = ValidatedJob(n_samples=4, valid_index=np.arange(4), inputs={"x": x})

    def run() -> tuple[dict[int, str], list[int]]:
        cached = job_cache.begin("m", "1", job, lambda inputs: batcher.submit("m", inputs), KEEP_Y)
        outcome = job_cache.finish(cached, timeout_s=5)
        return outcome.failed_rows, cached.hit_samples

    failed, hits = run()
    assert sorted(failed) == [1, 3] and "poison row" in failed[3] and hits == []
    assert calls[0] == 3  # the repeated poison row ran once
    failed, hits = run()
    assert hits == [0, 2]  # the good rows came back from the cache, the bad ones ran again
    assert sorted(failed) == [1, 3]
    digests = sample_digests({"x": x})
    assert job_cache.cache.get("m", "1", [digests[1]]) == [None]
    batcher.close()
    job_cache.cache.client.close()


def test_a_cache_flag_that_is_not_a_bool_is_refused() -> None:
    from inferfleet.errors import BadArgumentError
    from inferfleet.settings import load_settings

    client = Client(settings=load_settings(redis_url="redis://127.0.0.1:9/0"))
    with pytest.raises(BadArgumentError, match="cache must be True, False or None, got 'yes'"):
        client.submit("digits", [[0.0] * 64], cache="yes", validate=False)  # type: ignore[arg-type]
    client.close()


def test_many_threads_using_one_sample_compute_it_once(private_settings: Settings) -> None:
    calls: list[int] = []
    release = threading.Event()

    def model(_key: Hashable, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        release.wait(5)
        calls.append(len(inputs["x"]))
        return {"y": inputs["x"] * 2}

    batcher = MicroBatcher(model, max_batch_rows=64, max_wait_ms=0)
    job_cache = JobCache(_cache(private_settings))
    job = ValidatedJob(n_samples=1, valid_index=np.arange(1),
                       inputs={"x": np.array([[7]], np.float32)})
    outcomes: list[float] = []

    def one() -> None:
        cached = job_cache.begin("m", "9", job, lambda inputs: batcher.submit("m", inputs), KEEP_Y)
        outcomes.append(float(job_cache.finish(cached, timeout_s=10).outputs["y"][0, 0]))

    threads = [threading.Thread(target=one) for _ in range(8)]
    for thread in threads:
        thread.start()
    release.set()
    for thread in threads:
        thread.join(10)
    assert outcomes == [14.0] * 8 and sum(calls) == 1
    batcher.close()
    job_cache.cache.client.close()
