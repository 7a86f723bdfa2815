"""Any request a client might send yields a result or a clear error, never a crash."""

from __future__ import annotations

import time

import numpy as np
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from inferfleet.errors import ErrorCode, JobRefusedError
from inferfleet.models.config import ModelSignature, TensorSpec
from inferfleet.validation import Limits
from inferfleet.worker.jobs import checked_request, checked_samples, count_samples, failed_result

SIGNATURE = ModelSignature(name="m", version="1", outputs=[],
                           inputs=[TensorSpec(name="x", dtype="float32", shape=[3])])
LIMITS = Limits(max_job_samples=50, max_sample_elements=100)
NOW = time.time()

json_leaf = st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.floats(allow_nan=True),
                      st.text(max_size=6))
json_value = st.recursive(json_leaf, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=4)),
    max_leaves=12)
encoded = st.fixed_dictionaries({
    "dtype": st.one_of(st.sampled_from(["float32", "float64", "int64", "bool", "complex64",
                                        "str", 3]), json_value),
    "shape": st.one_of(st.lists(st.integers(-1, 4), max_size=3), json_leaf),
}, optional={"data": st.one_of(st.text(max_size=12), st.binary(max_size=12).map(
    lambda b: __import__("base64").b64encode(b).decode())), "values": json_value})
inputs = st.one_of(encoded, st.lists(encoded, max_size=4),
                   st.dictionaries(st.sampled_from(["x", "y"]),
                                   st.one_of(encoded, st.lists(encoded, max_size=3)),
                                   max_size=2), json_value)
request = st.fixed_dictionaries({"model": st.sampled_from(["m", "../x", ""]),
                                 "inputs": inputs},
                                optional={"v": st.sampled_from([1, 2]),
                                          "sample_ids": st.one_of(
                                              json_value, st.lists(st.text(max_size=3),
                                                                   max_size=5)),
                                          "deadline_at": st.one_of(
                                              st.floats(), st.sampled_from([1e308, NOW + 60])),
                                          "session_id": json_value, "extra": json_value})


def message_bytes(kwargs: dict[str, object]) -> int:
    return len(orjson.dumps(kwargs, option=orjson.OPT_NON_STR_KEYS))


@given(request)
def test_any_request_yields_samples_to_run_or_a_refusal_no_bigger_than_its_message(
        kwargs: dict[str, object]) -> None:
    try:
        parsed = checked_request(kwargs, taken_at=NOW, max_deadline_s=3600)
        job = checked_samples(parsed, SIGNATURE, LIMITS)
    except JobRefusedError as exc:
        assert isinstance(exc.code, ErrorCode) and str(exc)
        failed = failed_result("j", kwargs, exc.code, str(exc),
                               most_samples=LIMITS.max_job_samples)
        assert len(failed.sample_status) == len(failed.sample_ids) == count_samples(kwargs)
        assert len(failed.sample_ids) <= min(LIMITS.max_job_samples, message_bytes(kwargs))
        return
    assert 0 < job.n_samples <= LIMITS.max_job_samples
    assert parsed.sample_ids is None or len(parsed.sample_ids) == job.n_samples
    for index, (code, message) in job.problems.items():
        assert 0 <= index < job.n_samples and isinstance(code, ErrorCode) and message
    for array in job.inputs.values():
        assert array.dtype == np.float32 and array.shape[1:] == (3,)
        assert len(array) == len(job.valid_index)


def refusal(kwargs: dict[str, object]) -> JobRefusedError:
    with pytest.raises(JobRefusedError) as refused:
        checked_samples(checked_request(kwargs, taken_at=NOW, max_deadline_s=3600),
                        SIGNATURE, LIMITS)
    return refused.value


def test_a_claimed_shape_that_its_bytes_cannot_back_reports_no_samples() -> None:
    claim = {"model": "m", "inputs": {"dtype": "float32", "shape": [10**9, 3], "data": "AAAA"}}
    assert "holds 3 bytes" in str(refusal(claim))
    assert count_samples(claim) == 0
    assert count_samples({"inputs": {"dtype": "float32", "shape": [-5], "data": ""}}) == 0


def test_millions_of_zero_width_samples_are_refused_before_any_is_made() -> None:
    claim = {"model": "m", "inputs": {"dtype": "float32", "shape": [3_000_000, 0], "data": ""}}
    exc = refusal(claim)
    assert exc.code is ErrorCode.TOO_MANY_SAMPLES and "3000000 samples" in str(exc)
    assert count_samples(claim) == 0  # zero-width samples hold nothing to report
    within = {"model": "m", "inputs": {"dtype": "float32", "shape": [40, 0], "data": ""}}
    assert refusal(within).code is ErrorCode.BAD_SHAPE  # one problem for the job, not 40


def test_deadlines_beyond_the_results_lifetime_and_mismatched_sample_ids_are_refused() -> None:
    one = {"dtype": "float32", "shape": [2, 3], "values": [[0, 0, 0], [1, 1, 1]]}
    for deadline in (1e308, NOW + 3601):
        exc = refusal({"model": "m", "inputs": one, "deadline_at": deadline})
        assert exc.code is ErrorCode.BAD_REQUEST and "result_ttl_s" in str(exc)
    assert refusal({"model": "m", "inputs": one, "deadline_at": float("inf")}).code \
        is ErrorCode.BAD_REQUEST
    exc = refusal({"model": "m", "inputs": one, "sample_ids": ["a"]})
    assert "sample_ids holds 1 ids for 2 samples" in str(exc)
    assert refusal({"model": "m", "inputs": one, "deadline_at": NOW - 1}).code \
        is ErrorCode.EXPIRED
