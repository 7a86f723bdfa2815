import numpy as np

from inferfleet.errors import ErrorCode
from inferfleet.models.config import ModelSignature, TensorSpec
from inferfleet.validation import Limits, validate

SIGNATURE = ModelSignature(name="m", version="1", inputs=[TensorSpec(name="x", dtype="float32",
                                                                     shape=[4])], outputs=[])
LIMITS = Limits(max_job_samples=100, max_sample_elements=10)


def codes(problems: dict[int, tuple[ErrorCode, str]]) -> dict[int, ErrorCode]:
    return {index: code for index, (code, _) in problems.items()}


def test_stacked_samples_that_fit_are_cast_to_the_model_dtype() -> None:
    job = validate({"x": np.ones((3, 4), dtype=np.float64)}, SIGNATURE, LIMITS)
    assert job.problems == {}
    assert job.inputs["x"].dtype == np.float32
    assert job.valid_index.tolist() == [0, 1, 2]


def test_non_finite_samples_fail_alone_in_a_stacked_job() -> None:
    x = np.ones((4, 4), dtype=np.float32)
    x[1, 2] = np.nan
    x[3, 0] = np.inf
    job = validate({"x": x}, SIGNATURE, LIMITS)
    assert codes(job.problems) == {1: ErrorCode.NON_FINITE, 3: ErrorCode.NON_FINITE}
    assert job.valid_index.tolist() == [0, 2]
    assert job.inputs["x"].shape == (2, 4)


def test_each_kind_of_bad_sample_gets_its_own_code_among_good_ones() -> None:
    samples = [
        np.ones(4, dtype=np.float32),                  # good
        np.ones(5, dtype=np.float32),                  # wrong shape
        np.array([1, np.nan, 1, 1], dtype=np.float32),  # NaN
        np.array(["a", "b", "c", "d"]),                # wrong dtype
        np.ones(4, dtype=np.int64),                    # castable: good
        np.ones((2, 2), dtype=np.float32),             # wrong rank
    ]
    job = validate({"x": samples}, SIGNATURE, LIMITS)
    assert codes(job.problems) == {1: ErrorCode.BAD_SHAPE, 2: ErrorCode.NON_FINITE,
                                   3: ErrorCode.BAD_DTYPE, 5: ErrorCode.BAD_SHAPE}
    assert job.valid_index.tolist() == [0, 4]
    assert "sample shape [5]; the model takes [4]" in job.problems[1][1]


def test_oversized_samples_and_jobs_are_refused() -> None:
    big = ModelSignature(name="m", version="1", outputs=[],
                         inputs=[TensorSpec(name="x", dtype="float32", shape=[None])])
    job = validate({"x": [np.ones(3, np.float32), np.ones(11, np.float32)]}, big, LIMITS)
    assert codes(job.problems)[1] is ErrorCode.TOO_LARGE
    job = validate({"x": np.ones((101, 4), np.float32)}, SIGNATURE, LIMITS)
    assert job.job_problem is not None and job.job_problem[0] is ErrorCode.TOO_MANY_SAMPLES
    assert job.problems == {} and len(job.valid_index) == 0  # one problem, not 101
    assert set(codes(job.each_problem())) == set(range(101))


def test_missing_and_unknown_inputs_fail_the_whole_job() -> None:
    job = validate({"y": np.ones((2, 4), np.float32)}, SIGNATURE, LIMITS)
    assert codes(job.each_problem()) == {0: ErrorCode.MISSING_INPUT, 1: ErrorCode.MISSING_INPUT}
    assert job.job_problem is not None
    assert "missing ['x'], unknown ['y']" in job.job_problem[1]


def test_ragged_samples_of_a_dynamic_axis_must_share_the_first_valid_shape() -> None:
    dynamic = ModelSignature(name="m", version="1", outputs=[],
                             inputs=[TensorSpec(name="x", dtype="float32", shape=[None])])
    job = validate({"x": [np.ones(2, np.float32), np.ones(3, np.float32)]}, dynamic, LIMITS)
    assert codes(job.problems) == {1: ErrorCode.BAD_SHAPE}
    assert job.inputs["x"].shape == (1, 2)
