"""Jobs through a real Redis and a real worker process, compared with ONNX Runtime."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from faultkit import plain_celery

from inferfleet import (
    AsyncClient,
    BadArgumentError,
    Client,
    ErrorCode,
    InvalidInputError,
    UnknownModelError,
    keys,
)
from inferfleet.codec import encode_array
from inferfleet.ledger import Ledger
from inferfleet.schemas import JobResult, JobStatus, SampleStatus, WireResult
from inferfleet.settings import Settings

pytestmark = pytest.mark.usefixtures("worker")


def holdout(models_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    data = np.load(models_dir / "digits" / "holdout.npz")
    return data["x"], data["y"]


def in_process(models_dir: Path, model: str, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(models_dir / model / "model.onnx"))
    return session.run(["probabilities"], {"pixels": x})[0]


def wire_kwargs(model: str, inputs: object, **extra: object) -> dict[str, object]:
    return {"v": 1, "model": model, "inputs": inputs, **extra}


def test_a_job_of_one_sample_comes_back_with_its_prediction(client: Client,
                                                            models_dir: Path) -> None:
    x, _ = holdout(models_dir)
    result = client.submit("digits", x[:1], session_id="s1").result(timeout=30)
    assert result.status == "succeeded"
    [sample] = result.samples
    expected = in_process(models_dir, "digits", x[:1])
    assert sample.status == "success"
    assert sample.sample_id == "0"
    assert sample.outputs["label"] == str(expected.argmax())
    np.testing.assert_allclose(sample.outputs["probabilities"], expected[0], rtol=1e-6)
    assert result.session_id == "s1"
    assert result.latency_ms is not None and result.latency_ms > 0


def test_a_job_of_1000_samples_equals_in_process_onnx_runtime(client: Client,
                                                              models_dir: Path) -> None:
    x, _ = holdout(models_dir)
    rows = np.tile(x, (2, 1))[:1000]
    ids = [f"row-{i}" for i in range(1000)]
    result = client.submit("digits_mlp", rows, sample_ids=ids).result(timeout=60)
    expected = in_process(models_dir, "digits_mlp", rows)
    assert result.status == "succeeded"
    assert [s.sample_id for s in result.samples] == ids
    np.testing.assert_allclose(result.column("probabilities"), expected, rtol=1e-5, atol=1e-6)
    assert result.column("label") == [str(i) for i in expected.argmax(axis=1)]


def test_submit_many_splits_into_jobs_that_all_come_back_in_order(client: Client,
                                                                  models_dir: Path) -> None:
    x, y = holdout(models_dir)
    jobs = client.submit_many("digits", x, job_size=100, session_id="many")
    assert [job.n_samples for job in jobs] == [100] * 5 + [40]
    results = client.results([job.id for job in jobs], timeout=60)
    labels = np.concatenate([np.asarray(r.column("label"), dtype=int) for r in results])
    np.testing.assert_array_equal(labels, in_process(models_dir, "digits", x).argmax(axis=1))
    assert (labels == y).mean() > 0.9


def test_a_job_mixing_good_and_bad_samples_ends_partial_with_the_good_ones_computed(
        settings: Settings, client: Client, models_dir: Path) -> None:
    x, _ = holdout(models_dir)
    nan = x[2].copy()
    nan[5] = np.nan
    samples = [
        encode_array(x[0]),                                   # good
        encode_array(x[1][:60]),                              # wrong shape
        encode_array(nan),                                    # NaN
        {"dtype": "complex64", "shape": [64], "data": ""},    # wrong dtype
        encode_array(x[4].astype(np.float64)),                # castable: good
    ]
    task = plain_celery(settings).send_task(keys.TASK_NAME, queue=keys.DEFAULT_QUEUE,
                                            kwargs=wire_kwargs("digits", samples))
    result = client.result(task.id, timeout=30)
    assert result.status == "partial"
    assert [s.status for s in result.samples] == ["success", "failure", "failure", "failure",
                                                   "success"]
    codes = [s.error.code if s.error else None for s in result.samples]
    assert codes == [None, ErrorCode.BAD_SHAPE, ErrorCode.NON_FINITE, ErrorCode.BAD_DTYPE, None]
    assert "sample shape [60]; the model takes [64]" in result.samples[1].error.message
    expected = in_process(models_dir, "digits", x[[0, 4]]).argmax(axis=1)
    assert [result.samples[0].outputs["label"], result.samples[4].outputs["label"]] == \
        [str(i) for i in expected]


def test_a_sample_that_onnx_runtime_rejects_fails_alone(client: Client) -> None:
    jobs = [client.submit("lookup", np.array([[1], [42], [3]])),
            client.submit("lookup", np.array([[7], [8]]))]
    bad, good = (job.result(timeout=30) for job in jobs)
    assert bad.status == "partial"
    assert [s.status for s in bad.samples] == ["success", "failure", "success"]
    assert bad.samples[1].error.code == ErrorCode.INFERENCE_ERROR
    assert "out of data bounds" in bad.samples[1].error.message
    np.testing.assert_array_equal(bad.samples[2].outputs["rows"], [[6, 7]])
    assert good.status == "succeeded"
    np.testing.assert_array_equal(good.column("rows"), [[[14, 15]], [[16, 17]]])


def test_an_unknown_model_ends_failed_with_a_clear_code(settings: Settings,
                                                        client: Client) -> None:
    encoded = encode_array(np.zeros((2, 64), np.float32))
    task = plain_celery(settings).send_task(keys.TASK_NAME, queue=keys.DEFAULT_QUEUE,
                                            kwargs=wire_kwargs("no_such_model", encoded))
    result = client.result(task.id, timeout=30)
    assert result.status == "failed"
    assert result.error is not None and result.error.code == ErrorCode.UNKNOWN_MODEL
    assert "no_such_model" in result.error.message
    assert [s.status for s in result.samples] == ["failure", "failure"]
    with pytest.raises(UnknownModelError, match=r"no worker serves it\. Models served now: "):
        client.submit("no_such_model", np.zeros((1, 64), np.float32))


def test_a_request_off_the_wire_schema_ends_failed_not_lost(settings: Settings,
                                                            client: Client) -> None:
    celery = plain_celery(settings)
    positional = celery.send_task(keys.TASK_NAME, args=["digits"], queue=keys.DEFAULT_QUEUE)
    garbage = celery.send_task(keys.TASK_NAME, kwargs={"model": "digits", "inputs": "zzz"},
                               queue=keys.DEFAULT_QUEUE)
    first = client.result(positional.id, timeout=30)
    assert first.status == "failed" and "keyword arguments only" in first.error.message
    second = client.result(garbage.id, timeout=30)
    assert second.status == "failed" and second.error.code == ErrorCode.BAD_REQUEST


def test_a_job_revoked_before_it_runs_ends_failed_revoked_and_is_not_computed(
        settings: Settings, client: Client) -> None:
    celery = plain_celery(settings)
    job_id = str(uuid.uuid4())
    replies = celery.control.revoke(job_id, reply=True, timeout=5)
    assert replies, "no worker answered the revoke"
    encoded = encode_array(np.zeros((3, 64), np.float32))
    celery.send_task(keys.TASK_NAME, task_id=job_id, queue=keys.model_queue("digits"),
                     kwargs=wire_kwargs("digits", encoded))
    result = client.result(job_id, timeout=30)
    assert result.status == "failed"
    assert result.error is not None and result.error.code == ErrorCode.REVOKED
    assert [s.status for s in result.samples] == ["failure"] * 3
    assert result.batch_ids == []  # never joined a batch


def test_a_plain_celery_client_gets_the_same_result_as_client(settings: Settings,
                                                              client: Client,
                                                              models_dir: Path) -> None:
    x, _ = holdout(models_dir)
    kwargs = wire_kwargs("digits", {"pixels": encode_array(x[:3])}, sample_ids=["a", "b", "c"],
                         session_id="plain")
    task = plain_celery(settings).send_task(keys.TASK_NAME, kwargs=kwargs,
                                            queue=keys.model_queue("digits"))
    payload = task.get(timeout=30)
    assert payload["status"] == "succeeded"
    assert payload["sample_ids"] == ["a", "b", "c"]
    from_celery = JobResult.from_wire(payload)
    from_client = client.result(task.id, timeout=5)
    assert from_celery.model_dump(exclude={"samples"}) == \
        from_client.model_dump(exclude={"samples"})
    assert from_celery.column("label") == from_client.column("label") == \
        [str(i) for i in in_process(models_dir, "digits", x[:3]).argmax(axis=1)]


def test_states_read_queued_then_terminal_and_unknown_ids_read_unknown(client: Client) -> None:
    assert client.status(str(uuid.uuid4())) == "unknown"
    unserved = client.submit("nobody_serves_this", np.zeros((1, 2)), validate=False)
    assert unserved.status() == "queued"
    done = client.submit("digits", np.zeros((1, 64), np.float32))
    done.result(timeout=30)
    assert done.status() == "succeeded"


def test_a_bad_sample_fails_alone_and_strict_mode_refuses_it_before_enqueueing(
        client: Client, models_dir: Path) -> None:
    samples = holdout(models_dir)[0][:3].astype(np.float64)  # cast to the model's float32
    samples[1, 0] = np.inf
    result = client.submit("digits", samples).result(timeout=30)
    assert result.status == "partial"
    assert [s.status.value for s in result.samples] == ["success", "failure", "success"]
    assert result.samples[1].error is not None and result.samples[1].error.code == "non_finite"
    expected = in_process(models_dir, "digits", samples[[0, 2]].astype(np.float32))
    np.testing.assert_allclose(result.column("probabilities")[[0, 2]], expected, rtol=1e-6)

    wrong = client.submit("digits", np.ones((1, 65), np.float32)).result(timeout=30)
    assert wrong.status == "failed" and wrong.samples[0].error is not None
    assert wrong.samples[0].error.code == "bad_shape"

    before = client.redis.llen(keys.model_queue("digits"))
    with pytest.raises(InvalidInputError, match="sample 1: non_finite"):
        client.submit("digits", samples, strict=True)
    with pytest.raises(InvalidInputError, match="sample 0: bad_shape"):
        client.submit("digits", np.ones((1, 65), np.float32), strict=True)
    assert client.redis.llen(keys.model_queue("digits")) == before


def test_a_model_with_several_inputs_takes_a_dict_per_job_or_per_sample(client: Client) -> None:
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    b = np.ones((2, 3), dtype=np.float32)
    stacked = client.submit("pair_sum", {"a": a, "b": b}).result(timeout=30)
    np.testing.assert_array_equal(stacked.column("sum"), a + b)
    per_sample = client.submit("pair_sum", [{"a": a[0], "b": b[0]}, {"a": a[1], "b": b[1]}])
    np.testing.assert_array_equal(per_sample.result(timeout=30).column("sum"), a + b)


def test_zipmap_fixed_batch_and_bare_models_are_served(client: Client,
                                                       models_dir: Path) -> None:
    zipmap = client.submit("iris_zipmap", np.array([[5.1, 3.5, 1.4, 0.2]], np.float32))
    [sample] = zipmap.result(timeout=30).samples
    assert sample.outputs["output_label"] == 0 and sample.outputs["label"] == "0"
    assert np.asarray(sample.outputs["output_probability"]).shape == (3,)
    assert sample.outputs["score"] == pytest.approx(max(sample.outputs["output_probability"]))
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    fixed = client.submit("fixed_batch", x).result(timeout=30)
    np.testing.assert_array_equal(fixed.column("doubled"), x * 2)
    pixels, _ = holdout(models_dir)
    bare = client.submit("bare_digits", pixels[:5]).result(timeout=30)
    assert bare.samples[0].outputs.keys() == {"label", "probabilities"}
    np.testing.assert_array_equal(
        bare.column("label"), in_process(models_dir, "digits", pixels[:5]).argmax(axis=1))


def test_a_submit_with_a_job_id_is_idempotent_and_refuses_other_inputs(
        client: Client, models_dir: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from inferfleet.errors import JobIdConflictError

    x = holdout(models_dir)[0][:3]
    job_id = f"order-{uuid.uuid4().hex[:8]}"
    session = f"idem-{uuid.uuid4().hex[:8]}"
    with ThreadPoolExecutor(4) as pool:  # retries racing each other: one job
        jobs = list(pool.map(lambda _: client.submit("digits", x, session_id=session,
                                                     job_id=job_id), range(8)))
    assert {job.id for job in jobs} == {job_id}
    first = jobs[0].result(timeout=30)
    assert first.job_id == job_id and first.status == "succeeded"
    def stored(result: JobResult) -> tuple[object, ...]:  # the one stored result, unchanged
        return (result.batch_ids, result.latency_ms, result.column("label"))

    again = client.submit("digits", x, session_id=session, job_id=job_id)  # after it ran
    assert again.id == job_id and stored(again.result(timeout=5)) == stored(first)
    summary = client.session_summary(session)
    assert (summary.jobs_submitted, summary.samples_submitted) == (1, 3)

    for other in ({"samples": x[:2]}, {"samples": x, "session_id": "elsewhere"},
                  {"samples": x, "sample_ids": ["a", "b", "c"]}):
        options = {"session_id": session, **other}
        with pytest.raises(JobIdConflictError, match=f"job id '{job_id}' was submitted"):
            client.submit("digits", options.pop("samples"), job_id=job_id, **options)
    assert stored(client.result(job_id, timeout=5)) == stored(first)  # never overwritten
    plain = client.submit("digits", x)  # a job id the client made is no one else's
    with pytest.raises(JobIdConflictError):
        client.submit("digits", x, job_id=plain.id)
    with pytest.raises(BadArgumentError, match="job_id"):
        client.submit("digits", x, job_id="")


def test_the_async_client_mirrors_the_client(settings: Settings, models_dir: Path) -> None:
    x, _ = holdout(models_dir)

    async def run() -> list[JobResult]:
        async with AsyncClient(settings=settings) as client:
            assert "digits" in await client.models()
            jobs = await client.submit_many("digits", x[:20], job_size=7)
            assert await client.status(jobs[0].id) in ("queued", "running", "succeeded")
            return await client.results([job.id for job in jobs], timeout=30)

    results = asyncio.run(run())
    labels = [label for r in results for label in r.column("label")]
    assert labels == [str(i) for i in in_process(models_dir, "digits", x[:20]).argmax(axis=1)]


def test_a_stored_result_is_never_overwritten(client: Client) -> None:
    job = client.submit("digits", np.zeros((1, 64), np.float32))
    assert job.result(timeout=30).status == "succeeded"
    stored = client.redis.get(keys.result(job.id))
    replay = WireResult(job_id=job.id, model="digits", status=JobStatus.FAILED,
                        sample_ids=["0"], sample_status=[SampleStatus.FAILURE])
    assert Ledger(client.redis, ttl_s=60).store_result(replay) is False
    assert client.redis.get(keys.result(job.id)) == stored
    assert job.status() == "succeeded"


def test_results_of_more_jobs_than_one_poll_window_all_come_back_in_order(
        client: Client) -> None:
    from inferfleet.ledger import POLL_WINDOW

    x = np.random.default_rng(1).random((POLL_WINDOW * 2 + 7, 64), dtype=np.float32)
    jobs = client.submit_many("digits", x, job_size=1)
    results = client.results([job.id for job in jobs], timeout=120)
    assert [r.job_id for r in results] == [job.id for job in jobs]
    assert all(r.status == "succeeded" for r in results)


def test_submit_many_may_carry_more_samples_than_one_job_may(settings: Settings,
                                                             client: Client) -> None:
    x = np.zeros((settings.max_job_samples + 1, 64), np.float32)
    jobs = client.submit_many("digits", x, job_size=settings.max_job_samples)
    assert [job.n_samples for job in jobs] == [settings.max_job_samples, 1]
    client.results([job.id for job in jobs], timeout=120)
    with pytest.raises(BadArgumentError, match="over max_job_samples"):
        client.submit("digits", x)
