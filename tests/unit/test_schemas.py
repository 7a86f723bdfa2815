import numpy as np
import pytest
from pydantic import ValidationError

from inferfleet.codec import encode_array
from inferfleet.errors import ErrorCode
from inferfleet.schemas import (
    JobRequest,
    JobResult,
    JobStatus,
    SampleError,
    SampleStatus,
    WireResult,
)


def test_a_wire_result_becomes_one_sample_result_per_sample() -> None:
    wire = WireResult(
        job_id="j1", model="digits", model_version="1", session_id="s", status=JobStatus.PARTIAL,
        sample_ids=["a", "b", "c"],
        sample_status=[SampleStatus.SUCCESS, SampleStatus.FAILURE, SampleStatus.SUCCESS],
        outputs={"score": encode_array(np.array([0.5, 0.0, 0.9], dtype=np.float32)),
                 "label": ["7", None, "1"]},
        errors=[SampleError(index=1, code=ErrorCode.NON_FINITE, message="NaN")],
        latency_ms=12.5,
    )
    result = JobResult.from_wire(wire.model_dump(mode="json"))
    assert [s.sample_id for s in result.samples] == ["a", "b", "c"]
    assert result.samples[0].outputs == {"score": 0.5, "label": "7"}
    assert result.samples[1].outputs == {}
    assert result.samples[1].error is not None
    assert result.samples[1].error.code is ErrorCode.NON_FINITE
    assert result.samples[2].latency_ms == 12.5
    np.testing.assert_allclose(result.column("score"), [0.5, 0.0, 0.9])


def test_requests_refuse_model_names_that_could_be_paths() -> None:
    for name in ["../etc/passwd", "a/b", "", ".hidden", "x" * 65]:
        with pytest.raises(ValidationError, match="model"):
            JobRequest(model=name, inputs=[])


def test_requests_refuse_unknown_fields_and_other_wire_versions() -> None:
    with pytest.raises(ValidationError, match="extra"):
        JobRequest.model_validate({"model": "m", "inputs": [], "pickle": "x"})
    with pytest.raises(ValidationError, match="v"):
        JobRequest.model_validate({"v": 2, "model": "m", "inputs": []})
