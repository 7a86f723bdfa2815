"""The one error tree of inferfleet.

    InferfleetError
    ├── ConfigurationError      settings that cannot work together
    ├── ServerError             the embedded Redis server or a fleet process failed to start
    ├── BrokerError             Redis did not answer in time or refused the connection
    │   ├── BrokerFullError     Redis is at its maxmemory and refuses writes
    │   └── DurabilityError     fewer replicas confirmed a submit than wait_replicas asks
    ├── WireFormatError         a message or array that does not follow the wire schema
    ├── JobRefusedError         a job a worker ends without computing it (bad, or expired)
    ├── InvalidInputError       samples rejected by validation before anything is enqueued
    ├── BadArgumentError        an API argument that cannot work (also a ValueError)
    ├── UnknownModelError       a model name the registry does not serve
    ├── QueueFullError          a model's queue holds as many jobs as it may
    ├── ModelLoadError          a model folder whose files cannot be served
    ├── BatchContractError      a batch function that broke its rows-in, rows-out contract
    └── ResultTimeoutError           a result that did not arrive in time (also a TimeoutError)

Across the wire errors travel as data: an `ErrorCode` and a message, never a pickled exception.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any


class ErrorCode(StrEnum):
    """Machine-readable reasons a sample or a job failed; stable across versions."""

    BAD_REQUEST = "bad_request"
    UNKNOWN_MODEL = "unknown_model"
    MISSING_INPUT = "missing_input"
    BAD_SHAPE = "bad_shape"
    BAD_DTYPE = "bad_dtype"
    NON_FINITE = "non_finite"
    TOO_LARGE = "too_large"
    TOO_MANY_SAMPLES = "too_many_samples"
    INFERENCE_ERROR = "inference_error"
    INTERNAL_ERROR = "internal_error"
    MALFORMED_MESSAGE = "malformed_message"
    TOO_MANY_DELIVERIES = "too_many_deliveries"
    EXPIRED = "expired"
    REVOKED = "revoked"


class InferfleetError(Exception):
    """Base class of every error inferfleet raises on purpose."""


class ConfigurationError(InferfleetError):
    """Settings that are invalid on their own or cannot work together."""


class ServerError(InferfleetError):
    """The embedded Redis server or another fleet process could not be started."""


class BrokerError(InferfleetError, ConnectionError):
    """Redis could not be reached, or did not answer within the socket timeout."""


class BrokerFullError(BrokerError):
    """Redis is at its maxmemory (noeviction) and refuses writes; `submitted` lists the
    jobs of the call that went before it filled."""

    def __init__(self, message: str, submitted: list[Any] | None = None) -> None:
        self.submitted = submitted or []
        super().__init__(message)


class DurabilityError(BrokerError):
    """The primary took the jobs of a submit, but fewer replicas confirmed them than
    `wait_replicas` asks for; `submitted` lists the jobs of the call (all went)."""

    def __init__(self, message: str, submitted: list[Any]) -> None:
        self.submitted = submitted
        super().__init__(message)


class WireFormatError(InferfleetError):
    """A task message, result or encoded array that does not follow the wire schema."""

    def __init__(self, message: str, *, code: ErrorCode = ErrorCode.BAD_REQUEST) -> None:
        self.code = code
        super().__init__(message)


class JobRefusedError(InferfleetError):
    """A job a worker ends without computing it; `code` says why (`expired`, ...)."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        self.code = code
        super().__init__(message)


class InvalidInputError(InferfleetError):
    """Samples rejected by validation; `problems` maps sample index to (code, message)."""

    def __init__(self, problems: dict[int, tuple[ErrorCode, str]]) -> None:
        self.problems = problems
        shown = "; ".join(
            f"sample {index}: {code.value}: {message}"
            for index, (code, message) in list(problems.items())[:5]
        )
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        super().__init__(f"{len(problems)} invalid sample(s): {shown}{more}")


class BadArgumentError(InferfleetError, ValueError):
    """An argument to the Python API that cannot work, named with its bad value."""


class JobIdConflictError(BadArgumentError):
    """A caller-given job id that names a job submitted with other inputs (or without an
    id of the caller's): that job and its result stay as they are."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        super().__init__(
            f"job id {job_id!r} was submitted before with other inputs (model, version, "
            "session, samples or ids): that job and its result stay as they are; retry "
            "with the same inputs to get it, or give a new job_id")


class UnknownModelError(InferfleetError):
    """A model name (or version) that the registry does not serve."""

    def __init__(self, name: str, reason: str) -> None:
        self.name = name
        super().__init__(f"unknown model {name!r}: {reason}")


class QueueFullError(InferfleetError):
    """A model's queue is at `max_queued_jobs`; `submitted` lists the jobs that did go."""

    def __init__(self, model: str, queued: int, limit: int, submitted: list[Any]) -> None:
        self.model, self.queued, self.limit, self.submitted = model, queued, limit, submitted
        super().__init__(f"the queue of model {model!r} holds {queued} jobs, its limit is "
                         f"{limit}; {len(submitted)} job(s) of this call were enqueued")


class ModelLoadError(InferfleetError):
    """A model folder whose ONNX file or config cannot be served."""


class BatchContractError(InferfleetError):
    """A batch function returned a number of rows other than it was given."""


class ResultTimeoutError(InferfleetError, TimeoutError):
    """A job's result did not arrive within the caller's timeout."""

    def __init__(self, job_id: str, timeout_s: float) -> None:
        self.job_id = job_id
        self.timeout_s = timeout_s
        super().__init__(f"no result for job {job_id} within {timeout_s:g} s")


class StreamInterruptedError(BrokerError):
    """Redis failed mid-stream (`Client.stream`); `position` results were yielded,
    counting from the stream's `start`."""

    def __init__(self, position: int, cause: BaseException) -> None:
        self.position = position
        super().__init__(f"the stream stopped after {position} result(s): {cause}. Resume "
                         f"with stream(model, islice(samples, {position} - start, None), "
                         f"start={position})")
