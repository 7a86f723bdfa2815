"""Any request a client might send yields a result or a clear error, never a crash."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from inferfleet.errors import ErrorCode, WireFormatError
from inferfleet.models.config import ModelSignature, TensorSpec
from inferfleet.schemas import JobRequest
from inferfleet.validation import Limits, validate
from inferfleet.worker.jobs import count_samples, decode_inputs, failed_result

SIGNATURE = ModelSignature(name="m", version="1", outputs=[],
                           inputs=[TensorSpec(name="x", dtype="float32", shape=[3])])
LIMITS = Limits(max_job_samples=50, max_sample_elements=100)

json_leaf = st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.floats(allow_nan=True),
                      st.text(max_size=6))
json_value = st.recursive(json_leaf, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=4)),
    max_leaves=12)
encoded = st.fixed_dictionaries({
    "dtype": st.sampled_from(["float32", "float64", "int64", "bool", "complex64", "str", 3]),
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
                                          "sample_ids": json_value,
                                          "session_id": json_value, "extra": json_value})


@given(request)
def test_any_request_yields_samples_to_run_or_a_clear_error(kwargs: dict[str, object]) -> None:
    try:
        parsed = JobRequest.model_validate(kwargs)
    except ValidationError:
        failed = failed_result("j", kwargs, ErrorCode.BAD_REQUEST, "not valid")
        assert len(failed.sample_status) == len(failed.sample_ids) == count_samples(kwargs)
        return
    try:
        columns, problems = decode_inputs(parsed, SIGNATURE)
    except WireFormatError as exc:
        assert str(exc)
        return
    job = validate(columns, SIGNATURE, LIMITS)
    for index, (code, message) in {**job.problems, **problems}.items():
        assert index >= 0 and isinstance(code, ErrorCode) and message
    for array in job.inputs.values():
        assert array.dtype == np.float32 and array.shape[1:] == (3,)
        assert len(array) == len(job.valid_index)


def test_a_failing_request_cannot_claim_unbounded_samples() -> None:
    from inferfleet.worker.jobs import MAX_REPORTED_SAMPLES

    claim = {"model": "m", "inputs": {"dtype": "float32", "shape": [10**12, 3], "data": ""}}
    assert count_samples(claim) == MAX_REPORTED_SAMPLES
    assert count_samples({"inputs": {"dtype": "float32", "shape": [-5], "data": ""}}) == 0
