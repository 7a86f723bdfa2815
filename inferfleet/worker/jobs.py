"""From a task message to sample columns, and from batch outcomes to a `WireResult`."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from inferfleet.batching import BatchOutcome
from inferfleet.codec import decode_array, encode_column
from inferfleet.errors import ErrorCode, WireFormatError
from inferfleet.models.config import ModelSignature
from inferfleet.schemas import (
    SESSION_ID_PATTERN,
    ErrorInfo,
    JobRequest,
    JobStatus,
    JobTimings,
    SampleError,
    SampleStatus,
    WireResult,
)
from inferfleet.validation import Problem, SampleColumn, ValidatedJob


def decode_inputs(request: JobRequest,
                  signature: ModelSignature) -> tuple[dict[str, SampleColumn], dict[int, Problem]]:
    """Each input as stacked samples or a list of per-sample arrays, plus the samples
    whose arrays could not be decoded (they fail alone; a placeholder keeps their place).

    Raises:
        WireFormatError: if a stacked input cannot be decoded (the whole job is bad).
    """
    raw = request.inputs
    if not isinstance(raw, dict) or _is_encoded_array(raw):
        if len(signature.inputs) != 1:
            raise WireFormatError(f"model {signature.name!r} has several inputs; 'inputs' must "
                                  f"map each of {[s.name for s in signature.inputs]} to samples")
        raw = {signature.inputs[0].name: raw}
    columns: dict[str, SampleColumn] = {}
    problems: dict[int, Problem] = {}
    for name, value in raw.items():
        if isinstance(value, list):
            columns[name] = _decode_samples(value, name, problems)
        else:
            array = decode_array(value, what=f"inputs[{name!r}]")
            if array.ndim == 0:
                raise WireFormatError(f"inputs[{name!r}] must have a first axis of samples")
            columns[name] = array
    return columns, problems


def _is_encoded_array(value: Mapping[str, Any]) -> bool:
    return "dtype" in value and "shape" in value


def _decode_samples(values: list[Any], name: str,
                    problems: dict[int, Problem]) -> list[np.ndarray[Any, Any]]:
    samples = []
    for index, value in enumerate(values):
        try:
            samples.append(decode_array(value, what=f"inputs[{name!r}][{index}]"))
        except WireFormatError as exc:
            problems.setdefault(index, (exc.code, str(exc)))
            samples.append(np.zeros(0, dtype=np.float32))
    return samples


#: A request that fails as a whole reports at most this many samples, whatever it claims.
MAX_REPORTED_SAMPLES = 1_000_000


def count_samples(request: dict[str, Any]) -> int:
    """How many samples a (possibly invalid) request carries, as well as can be told
    (a claimed shape counts; never more than `MAX_REPORTED_SAMPLES`)."""
    ids = request.get("sample_ids")
    if isinstance(ids, list):
        return min(len(ids), MAX_REPORTED_SAMPLES)
    inputs = request.get("inputs")
    first = next(iter(inputs.values()), None) if isinstance(inputs, dict) and \
        not _is_encoded_array(inputs) else inputs
    if isinstance(first, list):
        return min(len(first), MAX_REPORTED_SAMPLES)
    shape = first.get("shape") if isinstance(first, dict) else None
    claimed = shape[0] if isinstance(shape, list) and shape and isinstance(shape[0], int) else 0
    return max(0, min(claimed, MAX_REPORTED_SAMPLES))


def sample_ids_of(request_ids: list[str] | None, n_samples: int) -> list[str]:
    """The caller's sample ids, or each sample's index in its job."""
    if request_ids is not None and len(request_ids) == n_samples:
        return request_ids
    while len(_INDEX_IDS) < n_samples:  # grown once, then sliced for every job
        _INDEX_IDS.extend(str(i) for i in range(len(_INDEX_IDS), 2 * len(_INDEX_IDS) + 256))
    return _INDEX_IDS[:n_samples]


_INDEX_IDS: list[str] = []


def failed_result(job_id: str, request: dict[str, Any], code: ErrorCode,
                  message: str, *, status: JobStatus = JobStatus.FAILED) -> WireResult:
    """A result in which the whole job failed (or expired) for one reason.

    `request` may be anything a client sent: only fields of the right form are kept (a
    malformed one must not stop the job from ending, nor name another session's keys).
    """
    n_samples = count_samples(request)
    ids = request.get("sample_ids")
    ids = ids if isinstance(ids, list) and all(isinstance(i, str) for i in ids) else None
    session_id = request.get("session_id")
    sample_status = SampleStatus.EXPIRED if status is JobStatus.EXPIRED else \
        SampleStatus.FAILURE
    return WireResult(
        job_id=job_id, model=str(request.get("model", ""))[:64],
        model_version=_str_or_none(request.get("model_version")),
        session_id=session_id if isinstance(session_id, str)
        and re.fullmatch(SESSION_ID_PATTERN, session_id) else None,
        status=status, sample_ids=sample_ids_of(ids, n_samples),
        sample_status=[sample_status] * n_samples,
        error=ErrorInfo(code=code, message=message),
    )


def _str_or_none(value: object) -> str | None:
    return value if isinstance(value, str) else None


def compose_result(job_id: str, request: JobRequest, signature: ModelSignature,
                   job: ValidatedJob, outcome: BatchOutcome | None, *,
                   timings: JobTimings, providers: list[str]) -> WireResult:
    """The job's result: every sample's status, its outputs, and every failure's reason."""
    failed = dict(job.problems)
    if outcome is not None:
        for row, message in outcome.failed_rows.items():
            failed[int(job.valid_index[row])] = (ErrorCode.INFERENCE_ERROR, message)
    n = job.n_samples
    outputs = {} if outcome is None else {
        name: encode_column(_scatter(column, job.valid_index, n))
        for name, column in outcome.outputs.items()}
    statuses = [SampleStatus.SUCCESS] * n
    for index in failed:
        statuses[index] = SampleStatus.FAILURE
    return WireResult(
        job_id=job_id, model=request.model, model_version=signature.version,
        session_id=request.session_id, status=_job_status(len(failed), n),
        sample_ids=sample_ids_of(request.sample_ids, n), sample_status=statuses,
        outputs=outputs, timings=timings, providers=providers,
        errors=[SampleError(index=i, code=code, message=message)
                for i, (code, message) in sorted(failed.items())],
    )


def _scatter(column: Any, valid_index: np.ndarray[Any, Any], n: int) -> Any:
    """Rows for the valid samples placed back at their indices among all `n`."""
    if len(valid_index) == n:
        return column
    if isinstance(column, np.ndarray):
        full = np.zeros((n, *column.shape[1:]), dtype=column.dtype)
        full[valid_index] = column
        return full
    rows: list[Any] = [None] * n
    for row, index in enumerate(valid_index.tolist()):
        rows[index] = column[row]
    return rows


def _job_status(n_failed: int, n_samples: int) -> JobStatus:
    if n_failed == 0:
        return JobStatus.SUCCEEDED
    return JobStatus.FAILED if n_failed >= n_samples else JobStatus.PARTIAL
