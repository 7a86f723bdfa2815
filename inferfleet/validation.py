"""Per-sample validation against a model signature, vectorised where samples are stacked.

Used by the producer (reject before enqueueing) and by the worker (a bad sample fails
alone; the rest of its job still runs). Pure numpy: no Celery, Redis or ONNX Runtime.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from inferfleet.errors import ErrorCode
from inferfleet.models.config import ModelSignature, TensorSpec

#: An input as a job carries it: stacked samples, or one array per sample.
SampleColumn = npt.NDArray[Any] | Sequence[npt.NDArray[Any]]
Problem = tuple[ErrorCode, str]


@dataclass(frozen=True)
class Limits:
    """Bounds on what one job may carry."""

    max_job_samples: int
    max_sample_elements: int


@dataclass
class ValidatedJob:
    """The samples that may run (stacked per input, cast to the model's dtypes) and why
    the others may not: `problems` per sample, or one `job_problem` that all share (a
    missing input, too many samples, a stacked input of the wrong sample shape)."""

    n_samples: int
    valid_index: npt.NDArray[np.intp]
    inputs: dict[str, npt.NDArray[Any]]
    problems: dict[int, Problem] = field(default_factory=dict)
    job_problem: Problem | None = None

    def each_problem(self) -> dict[int, Problem]:
        """Every failing sample's problem, the job's own repeated for each sample (for a
        caller holding the samples itself: costs one entry per sample)."""
        if self.job_problem is not None:
            return dict.fromkeys(range(self.n_samples), self.job_problem)
        return self.problems


def validate(columns: Mapping[str, SampleColumn], signature: ModelSignature,
             limits: Limits) -> ValidatedJob:
    """Check every sample of a job against `signature` and `limits`.

    A problem that concerns the whole job is its `job_problem`, never copied per sample
    (a tiny message claiming millions of zero-width samples must not cost millions of
    entries). Never raises for bad data: problems are returned.
    """
    if (ready := _already_valid(columns, signature, limits)) is not None:
        return ready
    n_samples, job_problem = _job_shape(columns, signature, limits)
    if job_problem is None:
        job_problem = _stacked_problem(columns, signature, limits)
    if job_problem is not None:
        return ValidatedJob(n_samples, np.arange(0), {}, {}, job_problem)
    problems: dict[int, Problem] = {}
    for spec in signature.inputs:
        for index, problem in _column_problems(columns[spec.name], spec, limits).items():
            problems.setdefault(index, problem)
    _require_common_shape(columns, signature, problems)
    valid = np.array([i for i in range(n_samples) if i not in problems], dtype=np.intp) \
        if problems else np.arange(n_samples)
    inputs = {spec.name: _stack(columns[spec.name], valid, spec) for spec in signature.inputs}
    return ValidatedJob(n_samples, valid, inputs, problems)


def _already_valid(columns: Mapping[str, SampleColumn], signature: ModelSignature,
                   limits: Limits) -> ValidatedJob | None:
    """The common case in a few numpy calls: one stacked input of the model's exact dtype
    and sample shape, within the limits, every value finite. None for anything else (the
    general checks then say what is wrong)."""
    if len(signature.inputs) != 1 or len(columns) != 1:
        return None
    spec = signature.inputs[0]
    column = columns.get(spec.name)
    if not isinstance(column, np.ndarray) or column.dtype != np.dtype(spec.dtype) or \
            len(column) > limits.max_job_samples or column.ndim != len(spec.shape) + 1:
        return None
    shape = column.shape[1:]
    if any(want is not None and got != want for got, want in zip(shape, spec.shape,
                                                                  strict=True)) or \
            math.prod(shape) > limits.max_sample_elements:
        return None
    if column.dtype.kind == "f" and not np.isfinite(column).all():
        return None
    return ValidatedJob(len(column), np.arange(len(column)),
                        {spec.name: np.ascontiguousarray(column)})


def _job_shape(columns: Mapping[str, SampleColumn], signature: ModelSignature,
               limits: Limits) -> tuple[int, Problem | None]:
    counts = {name: len(column) for name, column in columns.items()}
    n_samples = max(counts.values(), default=0)
    expected = [spec.name for spec in signature.inputs]
    missing = sorted(set(expected) - set(columns))
    unknown = sorted(set(columns) - set(expected))
    if missing or unknown:
        return n_samples, (ErrorCode.MISSING_INPUT,
                           f"model {signature.name!r} takes inputs {expected}; "
                           f"missing {missing}, unknown {unknown}")
    if len(set(counts.values())) > 1:
        return n_samples, (ErrorCode.BAD_REQUEST,
                           f"inputs hold different numbers of samples: {counts}")
    if n_samples > limits.max_job_samples:
        return n_samples, (ErrorCode.TOO_MANY_SAMPLES,
                           f"job has {n_samples} samples; the limit is "
                           f"{limits.max_job_samples}")
    return n_samples, None


def _stacked_problem(columns: Mapping[str, SampleColumn], signature: ModelSignature,
                     limits: Limits) -> Problem | None:
    """The problem of a stacked input whose dtype or sample shape is wrong: every sample
    of it shares that one problem."""
    for spec in signature.inputs:
        column = columns[spec.name]
        if isinstance(column, np.ndarray):
            problem = _array_problem(column.dtype, column.shape[1:], spec, limits)
            if problem is not None:
                return problem
    return None


def _column_problems(column: SampleColumn, spec: TensorSpec,
                     limits: Limits) -> dict[int, Problem]:
    if isinstance(column, np.ndarray):  # its dtype and shape are checked already
        return _non_finite(column, spec)
    problems = {}
    for index, sample in enumerate(column):
        problem = _array_problem(sample.dtype, sample.shape, spec, limits)
        if problem is None and sample.dtype.kind in "fc" and not np.isfinite(sample).all():
            problem = (ErrorCode.NON_FINITE, f"input {spec.name!r} contains NaN or Inf")
        if problem is not None:
            problems[index] = problem
    return problems


def _array_problem(dtype: np.dtype[Any], shape: tuple[int, ...], spec: TensorSpec,
                   limits: Limits) -> Problem | None:
    if dtype.kind not in "biuf" or not np.can_cast(dtype, spec.dtype, "same_kind"):
        return (ErrorCode.BAD_DTYPE,
                f"input {spec.name!r} has dtype {dtype.name}; the model takes {spec.dtype}")
    if len(shape) != len(spec.shape) or any(
        want is not None and got != want for got, want in zip(shape, spec.shape, strict=True)
    ):
        return (ErrorCode.BAD_SHAPE, f"input {spec.name!r} has sample shape {list(shape)}; "
                                     f"the model takes {spec.shape}")
    if math.prod(shape) > limits.max_sample_elements:
        return (ErrorCode.TOO_LARGE, f"input {spec.name!r} has {math.prod(shape)} elements "
                                     f"per sample; the limit is {limits.max_sample_elements}")
    return None


def _non_finite(column: npt.NDArray[Any], spec: TensorSpec) -> dict[int, Problem]:
    if column.dtype.kind != "f" or len(column) == 0:
        return {}
    finite = np.isfinite(column.reshape(len(column), -1)).all(axis=1)
    if finite.all():
        return {}
    problem = (ErrorCode.NON_FINITE, f"input {spec.name!r} contains NaN or Inf")
    return dict.fromkeys(np.flatnonzero(~finite).tolist(), problem)


def _require_common_shape(columns: Mapping[str, SampleColumn], signature: ModelSignature,
                          problems: dict[int, Problem]) -> None:
    """Samples given one by one must share a shape to be stacked into one batch."""
    for spec in signature.inputs:
        column = columns[spec.name]
        if isinstance(column, np.ndarray):
            continue
        shapes = [(i, s.shape) for i, s in enumerate(column) if i not in problems]
        if not shapes:
            continue
        first = shapes[0][1]
        for index, shape in shapes[1:]:
            if shape != first:
                problems[index] = (ErrorCode.BAD_SHAPE,
                                   f"input {spec.name!r} has sample shape {list(shape)}, "
                                   f"unlike the job's first valid sample {list(first)}")


def _stack(column: SampleColumn, valid: npt.NDArray[np.intp],
           spec: TensorSpec) -> npt.NDArray[Any]:
    dtype = np.dtype(spec.dtype)
    if isinstance(column, np.ndarray):
        rows = column if len(valid) == len(column) else column[valid]
        return np.ascontiguousarray(rows, dtype=dtype)
    if len(valid) == 0:
        return np.empty((0, *[d or 0 for d in spec.shape]), dtype=dtype)
    return np.stack([column[i] for i in valid]).astype(dtype, copy=False)
