"""From what a caller passes to `submit` to encoded job inputs (no Celery, no Redis)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from inferfleet.codec import encode_array
from inferfleet.errors import BadArgumentError, InvalidInputError
from inferfleet.models.config import ModelSignature, TensorSpec
from inferfleet.stored_inputs import INLINE_MAX_BYTES, InputString
from inferfleet.validation import Limits, SampleColumn, validate


def as_columns(samples: Any, signature: ModelSignature | None) -> dict[str | None, SampleColumn]:
    """Each input's samples, stacked where they share a shape, else one array per sample.

    `samples` is an array-like whose first axis is the samples, a mapping of input name to
    such, or a list of per-sample mappings. A bare array names the model's only input
    (None when the signature is unknown).

    Raises:
        BadArgumentError: if the structure cannot be read as samples.
    """
    if isinstance(samples, Mapping):
        return {str(name): _as_column(value, str(name)) for name, value in samples.items()}
    if isinstance(samples, list | tuple) and samples and isinstance(samples[0], Mapping):
        names = list(samples[0])
        return {name: _as_column([sample[name] for sample in samples], name) for name in names}
    if signature is not None and len(signature.inputs) > 1:
        raise BadArgumentError(f"model {signature.name!r} takes inputs "
                               f"{[s.name for s in signature.inputs]}: pass a dict of them")
    name = signature.inputs[0].name if signature is not None else None
    return {name: _as_column(samples, name or "input")}


def _as_column(value: Any, name: str) -> SampleColumn:
    if isinstance(value, np.ndarray):
        if value.ndim == 0:
            raise BadArgumentError(f"input {name!r} is a scalar; its first axis must be samples")
        return value
    if not isinstance(value, Sequence) or isinstance(value, str | bytes):
        raise BadArgumentError(f"input {name!r} must be an array-like of samples, "
                               f"got {type(value).__name__}")
    try:
        stacked = np.asarray(value)
        if stacked.dtype.kind in "biufc" and stacked.ndim >= 1:
            return stacked
    except ValueError:
        pass  # ragged: samples of different shapes travel one by one
    return [np.asarray(sample) for sample in value]


def n_samples(columns: Mapping[str | None, SampleColumn]) -> int:
    """The number of samples (the first input's, which validation checks against the rest)."""
    return len(next(iter(columns.values()))) if columns else 0


def sample_bytes(columns: Mapping[str | None, SampleColumn], total: int) -> int:
    """The bytes of array data a sample holds, on average over the `total` samples."""
    return sum(_nbytes(column) for column in columns.values()) // max(1, total)


def checked_inputs(columns: dict[str | None, SampleColumn], signature: ModelSignature,
                   limits: Limits, *, strict: bool = False) -> dict[str | None, SampleColumn]:
    """The inputs to send: stacked and cast to the model's dtypes once every sample
    passed; else, unless `strict`, as given (cast where they stack), so that the worker
    fails each bad sample alone with its code and runs the rest.

    Raises:
        InvalidInputError: listing each bad sample with its error code and reason, if
            `strict` and any is bad.
    """
    job = validate({str(k): v for k, v in columns.items()}, signature, limits)
    problems = job.each_problem()
    if not problems:
        return {name: array for name, array in job.inputs.items()}
    if strict:
        raise InvalidInputError(dict(sorted(problems.items())))
    specs = {spec.name: spec for spec in signature.inputs}
    return {name: _cast_where_safe(column, specs.get(str(name)))
            for name, column in columns.items()}


def _cast_where_safe(column: SampleColumn, spec: TensorSpec | None) -> SampleColumn:
    """A stacked column in the model's dtype when the cast keeps its kind (float64 to
    float32 halves the message); anything else as given, for the worker to judge."""
    if spec is None or not isinstance(column, np.ndarray) or spec.dtype == column.dtype:
        return column
    if column.dtype.kind in "biuf" and np.can_cast(column.dtype, spec.dtype, "same_kind"):
        return column.astype(spec.dtype)
    return column


def encode_inputs(columns: Mapping[str | None, SampleColumn], start: int,
                  stop: int) -> tuple[dict[str, Any] | Any, bytes | None]:
    """The wire form of samples [start, stop) of each input, and the job's input string:
    None for a job under `INLINE_MAX_BYTES`, whose arrays carry their bytes inline."""
    parts = {name: column[start:stop] for name, column in columns.items()}
    held = sum(_nbytes(part) for part in parts.values())
    if held < INLINE_MAX_BYTES:
        encoded = {name: _encoded(part, encode_array) for name, part in parts.items()}
        string = None
    else:
        apart = InputString()
        encoded = {name: _encoded(part, apart.add) for name, part in parts.items()}
        string = apart.value()
    if list(encoded) == [None]:
        return encoded[None], string
    return encoded, string


def _nbytes(part: SampleColumn) -> int:
    if isinstance(part, np.ndarray):
        return int(part.nbytes)
    return sum(int(np.asarray(sample).nbytes) for sample in part)


def _encoded(part: SampleColumn, encode: Callable[[np.ndarray[Any, Any]], Any]) -> Any:
    if isinstance(part, np.ndarray):
        return encode(part)
    return [encode(np.asarray(sample)) for sample in part]
