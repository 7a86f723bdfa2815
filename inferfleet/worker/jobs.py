"""From a task message to checked samples, and from batch outcomes to a `WireResult`.

Everything here is bounded by what the message holds: no claimed shape or count is
trusted before the bytes behind it and the limits are checked.
"""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np
from pydantic import ValidationError

from inferfleet.batching import BatchOutcome
from inferfleet.codec import WIRE_DTYPES, decode_array, encode_column, is_encoded_array
from inferfleet.errors import ErrorCode, JobRefusedError, WireFormatError
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
from inferfleet.validation import Limits, Problem, SampleColumn, ValidatedJob, validate


def checked_request(kwargs: dict[str, Any], *, taken_at: float,
                    max_deadline_s: float) -> JobRequest:
    """The job's request, if it is one to compute now.

    Raises:
        JobRefusedError: `bad_request` for kwargs off the wire schema or a deadline
            further than `max_deadline_s` away; `expired` if the deadline passed before
            `taken_at`.
    """
    try:
        request = JobRequest.model_validate(kwargs)
    except ValidationError as exc:
        raise JobRefusedError(ErrorCode.BAD_REQUEST,
                              f"not a valid inferfleet.predict request: {_brief(exc)}") from exc
    deadline = request.deadline_at
    if deadline is not None and taken_at > deadline:
        raise JobRefusedError(ErrorCode.EXPIRED,
                              f"the deadline passed {taken_at - deadline:.3f} s before a "
                              "worker took the job; it was not computed")
    if deadline is not None and deadline - taken_at > max_deadline_s:
        raise JobRefusedError(ErrorCode.BAD_REQUEST,
                              f"deadline_at {deadline!r} is more than {max_deadline_s:g} s "
                              "away (result_ttl_s): the job's record would expire first")
    return request


def checked_samples(request: JobRequest, signature: ModelSignature,
                    limits: Limits) -> ValidatedJob:
    """The job's samples, decoded and validated: bad ones carry their problem.

    Raises:
        JobRefusedError: for a problem of the whole job (undecodable inputs, too many
            samples, a stacked input of the wrong shape, sample ids that do not fit).
    """
    try:
        columns, decode_problems = decode_inputs(request, signature,
                                                 max_samples=limits.max_job_samples)
    except WireFormatError as exc:
        raise JobRefusedError(exc.code, str(exc)) from exc
    job = validate(columns, signature, limits)
    if job.job_problem is not None:
        raise JobRefusedError(*job.job_problem)
    if job.n_samples == 0:
        raise JobRefusedError(ErrorCode.BAD_REQUEST, "the job has no samples")
    if request.sample_ids is not None and len(request.sample_ids) != job.n_samples:
        raise JobRefusedError(ErrorCode.BAD_REQUEST,
                              f"sample_ids holds {len(request.sample_ids)} ids for "
                              f"{job.n_samples} samples; give one per sample, or none")
    for index, problem in decode_problems.items():
        job.problems[index] = problem
    return job


def _brief(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'request'}: {e['msg']}"
                     for e in exc.errors()[:5])


def decode_inputs(request: JobRequest, signature: ModelSignature, *, max_samples: int
                  ) -> tuple[dict[str, SampleColumn], dict[int, Problem]]:
    """Each input as stacked samples or a list of per-sample arrays, plus the samples
    whose arrays could not be decoded (they fail alone; a placeholder keeps their place).

    Raises:
        WireFormatError: if a stacked input cannot be decoded, or an input holds more
            than `max_samples` samples (`too_many_samples`, found before anything per
            sample is made: a message of a few bytes can claim millions of zero-width
            samples).
    """
    raw = request.inputs
    if not isinstance(raw, dict) or is_encoded_array(raw):
        if len(signature.inputs) != 1:
            raise WireFormatError(f"model {signature.name!r} has several inputs; 'inputs' must "
                                  f"map each of {[s.name for s in signature.inputs]} to samples")
        raw = {signature.inputs[0].name: raw}
    columns: dict[str, SampleColumn] = {}
    problems: dict[int, Problem] = {}
    for name, value in raw.items():
        if isinstance(value, list):
            _check_count(len(value), name, max_samples)
            columns[name] = _decode_samples(value, name, problems)
        else:
            array = decode_array(value, what=f"inputs[{name!r}]")
            if array.ndim == 0:
                raise WireFormatError(f"inputs[{name!r}] must have a first axis of samples")
            _check_count(len(array), name, max_samples)
            columns[name] = array
    return columns, problems


def _check_count(n_samples: int, name: str, max_samples: int) -> None:
    if n_samples > max_samples:
        raise WireFormatError(f"inputs[{name!r}] holds {n_samples} samples; the limit is "
                              f"{max_samples} (max_job_samples)",
                              code=ErrorCode.TOO_MANY_SAMPLES)


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


#: The most samples a whole-job failure reports when no limit is given.
MAX_REPORTED_SAMPLES = 100_000


def count_samples(request: dict[str, Any], *, most: int = MAX_REPORTED_SAMPLES,
                  stored_apart: bool = False) -> int:
    """How many samples a (possibly invalid) request carries, counting only what it
    holds: ids listed, arrays listed, or a stacked array whose bytes match its shape and
    whose samples have elements. 0 for a claim beyond that, or beyond `most`: a result
    is never bigger than the evidence in its message.

    With `stored_apart`, an array whose bytes are in the job's input string, not yet
    read, counts the length its `bytes_at` claims: for planning (how many rows a worker
    has taken), never for a result.
    """
    ids = request.get("sample_ids")
    inputs = request.get("inputs")
    first = next(iter(inputs.values()), None) if isinstance(inputs, dict) and \
        not is_encoded_array(inputs) else inputs
    if isinstance(ids, list):
        held = len(ids)
    elif isinstance(first, list):
        held = len(first)
    elif isinstance(first, dict):
        held = _stacked_samples_held(first, stored_apart=stored_apart)
    else:
        held = 0
    return held if held <= most else 0


def _stacked_samples_held(encoded: dict[str, Any], *, stored_apart: bool = False) -> int:
    """The first axis of an encoded array, if its data (or values) can back it."""
    shape, values = encoded.get("shape"), encoded.get("values")
    if not isinstance(shape, list) or not shape or not all(
            isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape):
        return 0
    first: int = shape[0]
    if isinstance(values, list):
        return min(first, len(values))
    dtype = encoded.get("dtype")
    itemsize = _ITEMSIZES.get(dtype, 0) if isinstance(dtype, str) else 0
    held_bytes = _bytes_held(encoded, stored_apart=stored_apart)
    if not itemsize or held_bytes is None:
        return 0
    return first if math.prod(shape) * itemsize <= held_bytes else 0


def _bytes_held(encoded: dict[str, Any], *, stored_apart: bool) -> int | None:
    """The bytes behind an encoded array: its base64's, its view's (a resolved
    `bytes_at`), or, with `stored_apart`, the length an unread `bytes_at` claims."""
    data, where = encoded.get("data"), encoded.get("bytes_at")
    if isinstance(data, bytes | memoryview):
        return len(data)
    if isinstance(data, str):
        return len(data) * 3 // 4
    if stored_apart and isinstance(where, list) and len(where) == 2 and \
            isinstance(where[1], int) and not isinstance(where[1], bool):
        return max(0, where[1])
    return None


_ITEMSIZES = {name: np.dtype(name).itemsize for name in WIRE_DTYPES}


def sample_ids_of(request_ids: list[str] | None, n_samples: int) -> list[str]:
    """The caller's sample ids (when there is one per sample), else each sample's index
    in its job."""
    if request_ids is not None and len(request_ids) == n_samples:
        return request_ids
    while len(_INDEX_IDS) < n_samples:  # grown once, then sliced for every job
        _INDEX_IDS.extend(str(i) for i in range(len(_INDEX_IDS), 2 * len(_INDEX_IDS) + 256))
    return _INDEX_IDS[:n_samples]


_INDEX_IDS: list[str] = []


def failed_result(job_id: str, request: dict[str, Any], code: ErrorCode,
                  message: str, *, status: JobStatus = JobStatus.FAILED,
                  most_samples: int = MAX_REPORTED_SAMPLES) -> WireResult:
    """A result in which the whole job failed (or expired) for one reason, with one
    status per sample the request holds (`count_samples`, at most `most_samples`).

    `request` may be anything a client sent: only fields of the right form are kept (a
    malformed one must not stop the job from ending, nor name another session's keys).
    """
    n_samples = count_samples(request, most=most_samples)
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
