"""Pydantic v2 models: the wire schema (version 1) and what callers get back.

The task `inferfleet.predict` takes one keyword argument per `JobRequest` field, all JSON;
its result (stored where Celery's Redis backend keeps results) is a `WireResult`. Results
are columnar on the wire, one encoded array per output, so that a 1,000-sample job is a
few base64 strings rather than thousands of JSON numbers; `JobResult.from_wire` turns
them into one `SampleResult` per sample.
"""

from __future__ import annotations

from enum import StrEnum
from functools import cached_property
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from inferfleet.codec import decode_column
from inferfleet.errors import ErrorCode

WIRE_VERSION: Literal[1] = 1
#: Model names are allow-listed to this pattern, so a name can never become a path.
MODEL_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
#: Session ids name Redis keys; without ':' one session's keys never alias another's.
SESSION_ID_PATTERN = r"^[A-Za-z0-9_.-]{1,128}$"
#: Job ids (Celery task ids) name Redis keys and log lines: no control characters.
JOB_ID_PATTERN = r"^[^\x00-\x1f\x7f]{1,128}$"


class JobStatus(StrEnum):
    """The terminal state a job ends in, exactly once."""

    SUCCEEDED = "succeeded"
    PARTIAL = "partial"
    FAILED = "failed"
    EXPIRED = "expired"
    DEAD_LETTERED = "dead_lettered"


class JobState(StrEnum):
    """What `Client.status` reports: a live state, a terminal `JobStatus`, or unknown."""

    QUEUED = "queued"
    RUNNING = "running"
    UNKNOWN = "unknown"


class SampleStatus(StrEnum):
    """How one sample ended."""

    SUCCESS = "success"
    FAILURE = "failure"
    EXPIRED = "expired"


class ErrorInfo(BaseModel):
    """Why a sample or a job failed, as data: a stable code and a readable message."""

    model_config = ConfigDict(frozen=True)

    code: ErrorCode
    message: str


class SampleError(ErrorInfo):
    """An `ErrorInfo` for the sample at `index` in its job."""

    index: int = Field(ge=0)


class JobRequest(BaseModel):
    """The keyword arguments of one `inferfleet.predict` task message (wire version 1).

    `inputs` maps each model input name to either one encoded array whose first axis is
    the samples, or a list of per-sample encoded arrays (for samples of differing shape or
    dtype). A model with one input may also take the array or list directly.
    """

    model_config = ConfigDict(extra="forbid")

    v: Literal[1] = 1
    model: str = Field(pattern=MODEL_NAME_PATTERN)
    model_version: str | None = Field(None, max_length=64)
    session_id: str | None = Field(None, pattern=SESSION_ID_PATTERN)
    inputs: dict[str, Any] | list[Any]
    sample_ids: list[str] | None = None
    submitted_at: float | None = Field(None, ge=0, allow_inf_nan=False)
    #: Unix time; a worker refuses one further away than the results' TTL.
    deadline_at: float | None = Field(None, ge=0, allow_inf_nan=False)
    #: A list the worker pushes the job id onto once the result is stored; it must start
    #: with `inferfleet:notify:`.
    notify: str | None = Field(None, pattern=r"^inferfleet:notify:[A-Za-z0-9_.:-]{1,100}$")
    #: Answer repeated samples from the fleet-wide result cache (`inferfleet.cache`);
    #: None: as the model's config says (off unless it says `"cache": true`).
    cache: bool | None = None


class JobTimings(BaseModel):
    """Where a job's time went, in milliseconds (None when that stage never ran)."""

    queued_ms: float | None = None
    batch_wait_ms: float | None = None
    inference_ms: float | None = None
    total_ms: float | None = None


class WireResult(BaseModel):
    """A job's terminal result as stored in Redis (wire version 1), columnar."""

    v: Literal[1] = 1
    job_id: str
    model: str
    model_version: str | None = None
    session_id: str | None = None
    status: JobStatus
    sample_ids: list[str]
    sample_status: list[SampleStatus]
    outputs: dict[str, Any] = Field(default_factory=dict)
    errors: list[SampleError] = Field(default_factory=list)
    error: ErrorInfo | None = None
    latency_ms: float | None = None
    timings: JobTimings = Field(default_factory=JobTimings)
    providers: list[str] = Field(default_factory=list)
    #: The coalesced batches (ONNX Runtime calls) that computed this job's samples.
    batch_ids: list[str] = Field(default_factory=list)
    #: The indices of the samples answered from the result cache (not computed).
    cache_hits: list[int] = Field(default_factory=list)


class SampleResult(BaseModel):
    """One sample's outcome: its outputs on success, its error on failure."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    sample_id: str
    job_id: str
    status: SampleStatus
    outputs: dict[str, Any] = Field(default_factory=dict)
    error: ErrorInfo | None = None
    latency_ms: float | None = None
    #: Answered from the fleet-wide result cache, not computed.
    cache_hit: bool = False


class ModelCounts(BaseModel):
    """One model's samples within a session."""

    submitted: int = 0
    done: int = 0


class SessionSummary(BaseModel):
    """A session's counts and timings, read from counters (no scan of its results).

    Latency percentiles come from a histogram of quarter-octave buckets: each is the upper
    edge of its bucket, so within 19% of the exact value. Jobs enqueued by clients other
    than `Client` are counted when done but were never counted as submitted.
    """

    session_id: str
    jobs_submitted: int
    jobs_done: int
    jobs_by_status: dict[str, int]
    samples_submitted: int
    samples_succeeded: int
    samples_failed: int
    samples_expired: int
    samples_pending: int
    success_rate: float | None
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    latency_p99_ms: float | None
    samples_per_s: float | None
    first_submitted_at: float | None
    last_finished_at: float | None
    models: dict[str, ModelCounts]
    #: The samples the submitter said are coming (`Client.expect`); None if it did not.
    samples_expected: int | None = None
    #: Samples answered from the result cache, and their share of those done.
    samples_cache_hits: int = 0
    cache_hit_rate: float | None = None


class JobResult(BaseModel):
    """A job's terminal result: `samples` has one `SampleResult` per sample, in submission
    order; `column(name)` has one output for all of them at once."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    job_id: str
    model: str
    model_version: str | None
    session_id: str | None
    status: JobStatus
    sample_ids: list[str]
    sample_status: list[SampleStatus]
    errors: list[SampleError] = Field(default_factory=list)
    error: ErrorInfo | None = None
    latency_ms: float | None = None
    timings: JobTimings
    providers: list[str] = Field(default_factory=list)
    batch_ids: list[str] = Field(default_factory=list)
    cache_hits: list[int] = Field(default_factory=list)
    _columns: dict[str, Any] = PrivateAttr(default_factory=dict)

    @property
    def cache_hit_rate(self) -> float:
        """The share of the job's samples answered from the result cache."""
        return len(self.cache_hits) / len(self.sample_ids) if self.sample_ids else 0.0

    def column(self, name: str) -> Any:
        """One output for every sample at once (rows of failed samples are zero/None).

        Raises:
            KeyError: if the job has no such output.
        """
        return self._columns[name]

    @cached_property
    def samples(self) -> list[SampleResult]:
        """One `SampleResult` per sample, built on first use (reading many results in
        bulk through `column` never pays for them)."""
        errors = {error.index: ErrorInfo(code=error.code, message=error.message)
                  for error in self.errors}
        hits = set(self.cache_hits)
        return [SampleResult.model_construct(
            sample_id=sample_id, job_id=self.job_id, status=status,
            outputs=({name: _row(column, index) for name, column in self._columns.items()}
                     if status is SampleStatus.SUCCESS else {}),
            # A whole-job failure (`error`) is each of its failed samples' error too.
            error=errors.get(index) or (self.error if status is not SampleStatus.SUCCESS
                                        else None),
            latency_ms=self.latency_ms, cache_hit=index in hits,
        ) for index, (sample_id, status) in enumerate(zip(self.sample_ids, self.sample_status,
                                                          strict=True))]

    def to_frame(self, signature: Any = None, *, index_name: str = "id") -> Any:
        """The samples as a pandas DataFrame indexed by sample id: status, label, score,
        error, and with the model's `ModelSignature` (`Client.signature`) a `prob_<class>`
        column per class. Needs pandas (`inferfleet[frames]`)."""
        from inferfleet.frames import results_frame

        return results_frame([self], signature=signature, index_name=index_name)

    @classmethod
    def from_wire(cls, payload: dict[str, Any]) -> JobResult:
        """Decode a stored `WireResult` dict.

        Raises:
            pydantic.ValidationError, WireFormatError: if the payload is not a result.
        """
        wire = WireResult.model_validate(payload)
        result = cls.model_construct(**{name: getattr(wire, name) for name in cls.model_fields})
        result._columns = {name: decode_column(column, what=f"outputs[{name!r}]")
                           for name, column in wire.outputs.items()}
        return result


def _row(column: Any, index: int) -> Any:
    row = column[index]
    return row.item() if isinstance(row, np.ndarray) and row.ndim == 0 else (
        row.item() if isinstance(row, np.generic) else row)
