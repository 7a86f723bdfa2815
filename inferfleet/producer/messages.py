"""What goes into a job's message: samples read as input columns (arrays, dicts, tables),
their ids, the caller's job id and its fingerprint, and the chunks published per round
trip. No Redis here: `Client` publishes what these build."""

from __future__ import annotations

import hashlib
import itertools
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from inferfleet import keys
from inferfleet.errors import BadArgumentError
from inferfleet.models.config import ModelSignature
from inferfleet.producer.inputs import as_columns
from inferfleet.producer.tables import (
    frame_inputs,
    is_data_frame,
    is_feature_records,
    records_inputs,
)
from inferfleet.schemas import JOB_ID_PATTERN, MODEL_NAME_PATTERN
from inferfleet.validation import SampleColumn

#: Jobs whose messages are built and published per round trip in `submit_many`: the
#: first chunk is small and each next one twice as big, up to the last, so that workers
#: start on the first jobs while the rest are being built (with 64 from the start, the
#: first result of a 196-job submit came 130-180 ms in).
PUBLISH_CHUNK_JOBS = (4, 8, 16, 32, 64)


@dataclass(frozen=True)
class Message:
    """One job's message before it is published: its id, kwargs and sample count, and
    its input string (`inferfleet.stored_inputs`; None: its arrays are inline)."""

    job_id: str
    kwargs: dict[str, Any]
    samples: int
    given_id: bool = False  # the caller's job id: the submit is idempotent
    inputs_string: bytes | None = None

    def fingerprint(self) -> str:
        """What makes two submits under one job id the same job: a SHA-256 of its model,
        version, session, inputs (their input string too) and sample ids (not of its
        times or notify list)."""
        if not self.given_id:
            return ""
        same = {name: self.kwargs.get(name) for name in
                ("model", "model_version", "session_id", "inputs", "sample_ids")}
        digest = hashlib.sha256(orjson.dumps(same, option=orjson.OPT_SORT_KEYS))
        if self.inputs_string is not None:
            digest.update(self.inputs_string)
        return digest.hexdigest()


def samples_as_columns(samples: Any, signature: ModelSignature | None
                       ) -> tuple[dict[str | None, SampleColumn], list[str] | None]:
    """Each input's samples, and the sample ids a table carries (a DataFrame's index).

    Raises:
        BadArgumentError: if the samples cannot be read as the model's inputs.
    """
    if signature is not None and is_data_frame(samples):
        inputs, ids = frame_inputs(samples, signature)
        return {name: array for name, array in inputs.items()}, ids
    if is_feature_records(samples, signature):
        assert signature is not None  # for mypy: checked by is_feature_records
        inputs = records_inputs(samples, signature)
        return {name: array for name, array in inputs.items()}, None
    return as_columns(samples, signature), None


#: The most bytes of samples published per round trip (one job at least). Chunks of 32
#: and 64 jobs of 3x48x192 images were 300-600 MB in one command: the client held them
#: all at once, and Redis grew a query buffer that size to read them.
PUBLISH_CHUNK_BYTES = 8 * 1024 * 1024


def chunks(total: int, job_size: int, *, sample_bytes: int = 0) -> Iterator[tuple[int, int]]:
    """[start, stop) sample ranges of the publish chunks (`PUBLISH_CHUNK_JOBS`, and no
    more than `PUBLISH_CHUNK_BYTES` of samples of `sample_bytes` each)."""
    most = max(1, PUBLISH_CHUNK_BYTES // max(1, job_size * sample_bytes))
    start = 0
    for jobs in itertools.chain(PUBLISH_CHUNK_JOBS, itertools.repeat(PUBLISH_CHUNK_JOBS[-1])):
        if start >= total:
            return
        stop = min(total, start + min(jobs, most) * job_size)
        yield start, stop
        start = stop


def check_model_name(model: str) -> None:
    """Raises: BadArgumentError: for a name no model folder can have."""
    if not isinstance(model, str) or not re.match(MODEL_NAME_PATTERN, model):
        raise BadArgumentError(f"model name {model!r} must match {MODEL_NAME_PATTERN}")


def sample_ids_of(sample_ids: Sequence[str] | None, total: int) -> list[str] | None:
    """The ids as strings, one per sample (None: the worker numbers them).

    Raises:
        BadArgumentError: if there are not as many as samples.
    """
    if sample_ids is None:
        return None
    ids = [str(sample_id) for sample_id in sample_ids]
    if len(ids) != total:
        raise BadArgumentError(f"{len(ids)} sample_ids given for {total} samples")
    return ids


def check_job_id(job_id: str | None) -> None:
    """Raises: BadArgumentError: for a caller-given job id no result can be stored under."""
    if job_id is not None and (not isinstance(job_id, str) or
                               not re.match(JOB_ID_PATTERN, job_id)):
        raise BadArgumentError(f"job_id {job_id!r} must be a string matching {JOB_ID_PATTERN}")


def check_priority(priority: str) -> None:
    """Raises: BadArgumentError: for a priority that is not one of `keys.PRIORITIES`."""
    if priority not in keys.PRIORITIES:
        raise BadArgumentError(f"priority {priority!r} must be one of "
                               f"{', '.join(map(repr, keys.PRIORITIES))}")
