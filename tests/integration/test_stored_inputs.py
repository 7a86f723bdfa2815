"""Big jobs keep their arrays beside a small message (`inferfleet.stored_inputs`): through
a real Redis and a real worker, with the answers ONNX Runtime gives in-process."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from faultkit import plain_celery

from inferfleet import Client, ErrorCode, JobIdConflictError, keys
from inferfleet.codec import encode_array
from inferfleet.settings import Settings
from inferfleet.stored_inputs import INLINE_MAX_BYTES, InputString

pytestmark = pytest.mark.usefixtures("worker")

ROW_BYTES = 64 * 4  # a digits sample: 64 float32


def rows(models_dir: Path, n: int) -> np.ndarray:
    x = np.load(models_dir / "digits" / "holdout.npz")["x"]
    return np.resize(x, (n, x.shape[1])).astype(np.float32)


def in_process(models_dir: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(models_dir / "digits" / "model.onnx"))
    return session.run(["probabilities"], {"pixels": x})[0]


def test_a_big_job_travels_as_a_small_message_and_its_input_string_goes_with_its_result(
        client: Client, models_dir: Path) -> None:
    n = 2 * INLINE_MAX_BYTES // ROW_BYTES
    x = rows(models_dir, n)
    # Where no worker takes it, what Redis holds can be read: a message of a few hundred
    # bytes, and the raw float32 bytes beside it.
    parked = client.submit("nobody_serves_this", x, validate=False)
    [message] = client.redis.lrange(keys.model_queue("nobody_serves_this"), 0, -1)
    assert len(message) < 2_000 and b"bytes_at" in message
    assert client.redis.get(keys.job_inputs(parked.id)) == x.tobytes()
    client.redis.delete(keys.model_queue("nobody_serves_this"), keys.job_inputs(parked.id))

    job = client.submit("digits", x)
    result = job.result(timeout=30)
    assert result.status == "succeeded" and len(result.samples) == n
    np.testing.assert_allclose(np.stack([s.outputs["probabilities"] for s in result.samples]),
                               in_process(models_dir, x), rtol=1e-5, atol=1e-6)
    assert not client.redis.exists(keys.job_inputs(job.id))
    # A job one sample under the threshold stays inline and answers the same.
    small = client.submit("digits", x[:n // 2 - 1])
    assert not client.redis.exists(keys.job_inputs(small.id))
    assert small.result(timeout=30).status == "succeeded"


def test_any_celery_client_may_keep_its_arrays_apart_in_the_documented_form(
        settings: Settings, client: Client, models_dir: Path) -> None:
    x = rows(models_dir, 3)
    string = InputString()
    string.add(np.zeros(5, np.int8))  # another array first: this one starts at 64
    job_id = str(uuid.uuid4())
    client.redis.set(keys.job_inputs(job_id), string.value() + bytes(59) + x.tobytes())
    plain_celery(settings).send_task(keys.TASK_NAME, task_id=job_id,
                                     queue=keys.model_queue("digits"), kwargs={
        "v": 1, "model": "digits",
        "inputs": {"pixels": {"dtype": "float32", "shape": [3, 64],
                              "bytes_at": [64, x.nbytes]}}})
    result = client.result(job_id, timeout=30)
    assert result.status == "succeeded"
    np.testing.assert_allclose(np.stack([s.outputs["probabilities"] for s in result.samples]),
                               in_process(models_dir, x), rtol=1e-5, atol=1e-6)
    assert not client.redis.exists(keys.job_inputs(job_id))


@pytest.mark.parametrize(("write", "where", "says"), [
    (False, [0, 768], "Redis holds nothing there"),
    (True, [0, 769], "must be [offset, length] inside the job's input string of 768 bytes"),
    (True, [0, 512], "data holds 512 bytes, but dtype float32 and shape [3, 64] need 768"),
    (True, {"from": 0}, "must be [offset, length]"),
])
def test_an_input_string_missing_or_not_matching_fails_its_job_alone_saying_why(
        settings: Settings, client: Client, models_dir: Path, write: bool, where: object,
        says: str) -> None:
    x = rows(models_dir, 3)
    job_id = str(uuid.uuid4())
    if write:
        client.redis.set(keys.job_inputs(job_id), x.tobytes())
    neighbour = client.submit("digits", x)
    plain_celery(settings).send_task(keys.TASK_NAME, task_id=job_id,
                                     queue=keys.model_queue("digits"), kwargs={
        "v": 1, "model": "digits", "session_id": "apart",
        "inputs": {"dtype": "float32", "shape": [3, 64], "bytes_at": where}})
    result = client.result(job_id, timeout=30)
    assert result.status == "failed" and result.error is not None
    assert result.error.code == ErrorCode.BAD_REQUEST and says in result.error.message
    assert not client.redis.exists(keys.job_inputs(job_id))
    assert neighbour.result(timeout=30).status == "succeeded"


def test_a_big_job_submitted_twice_under_one_id_runs_once_and_other_inputs_conflict(
        client: Client, models_dir: Path) -> None:
    x = rows(models_dir, 2 * INLINE_MAX_BYTES // ROW_BYTES)
    job_id = f"apart-{uuid.uuid4()}"
    first = client.submit("digits", x, job_id=job_id)
    again = client.submit("digits", x, job_id=job_id)
    assert again.id == first.id and first.result(timeout=30).status == "succeeded"
    assert int(client.redis.hget(keys.job(job_id), "refused_writes") or 0) == 0
    changed = x.copy()
    changed[-1, -1] += 1
    with pytest.raises(JobIdConflictError):
        client.submit("digits", changed, job_id=job_id)


def test_a_plain_celery_job_inline_still_runs_beside_jobs_kept_apart(
        settings: Settings, client: Client, models_dir: Path) -> None:
    x = rows(models_dir, 2 * INLINE_MAX_BYTES // ROW_BYTES)
    apart = client.submit("digits", x)
    inline = plain_celery(settings).send_task(
        keys.TASK_NAME, queue=keys.model_queue("digits"),
        kwargs={"v": 1, "model": "digits", "inputs": encode_array(x)})
    assert apart.result(timeout=30).status == "succeeded"
    assert inline.get(timeout=30)["status"] == "succeeded"
