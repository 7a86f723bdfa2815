"""One job through the result cache in a worker: look its samples up before batching,
compute only the rest (each distinct sample once, in this worker), store what succeeded.

A cache that fails (Redis errors on the cache's own reads and writes) never fails a job:
its samples are computed, or not stored, and a warning says so.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import weakref
from collections.abc import Callable, Mapping
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson
import redis

from inferfleet.batching import BatchOutcome
from inferfleet.cache import (
    Claim,
    InFlight,
    ResultCache,
    decode_entries,
    encode_rows,
    sample_digests,
)
from inferfleet.models.runtime import OnnxModel
from inferfleet.validation import ValidatedJob

logger = logging.getLogger(__name__)

Inputs = Mapping[str, npt.NDArray[Any]]
Submit = Callable[[Inputs], Future[BatchOutcome]]
#: A model's outputs as served: its own outputs plus what postprocessing derives from them.
Derive = Callable[[dict[str, Any]], dict[str, Any]]


@dataclass(frozen=True)
class Outputs:
    """What a model's cache entries hold: its own outputs (`kept`), from which `derive`
    makes the rest (label, score, top-k) on a hit, so that entries stay small and decode
    as arrays."""

    kept: tuple[str, ...]
    derive: Derive


def cache_version(model: OnnxModel) -> str:
    """The version a model's cache entries are kept under: its version, and a digest of
    what shapes its outputs (outputs, labels, postprocessing), so that a config edited
    without a new version number never answers with entries of the old layout. Made once
    per loaded model (held weakly: a replaced version can be freed)."""
    version = _VERSIONS.get(model)
    if version is None:
        layout = orjson.dumps([
            model.signature.model_dump(include={"outputs", "labels", "scores"}),
            model.postprocess.model_dump() if model.postprocess else None])
        digest = hashlib.blake2b(layout, digest_size=4).hexdigest()
        version = _VERSIONS[model] = f"{model.signature.version}.{digest}"
    return version


_VERSIONS: weakref.WeakKeyDictionary[OnnxModel, str] = weakref.WeakKeyDictionary()


@dataclass
class CachedJob:
    """A job's rows (its valid samples) split into cache hits, rows it computes, and rows
    that wait for another computation of the same sample."""

    model: str
    version: str
    job: ValidatedJob
    digests: list[bytes]
    #: The rows answered from the cache, and their outputs (columns over those rows).
    hit_rows: list[int]
    hit_columns: dict[str, Any]
    claim: Claim | None
    #: The batch of the rows this job computes (None: it computes none).
    future: Future[BatchOutcome] | None
    #: The outputs its entries keep (`Outputs.kept`).
    kept: tuple[str, ...] = ()

    @property
    def hit_samples(self) -> list[int]:
        """The job's sample indices answered from the cache."""
        return [int(self.job.valid_index[row]) for row in self.hit_rows]


@dataclass(frozen=True)
class _Part:
    """Some of a job's rows and their outputs (columns over those rows, in that order)."""

    rows: list[int]
    columns: Mapping[str, Any]
    failed: dict[int, str]  # by place in `rows`


class JobCache:
    """A worker's use of the fleet-wide result cache."""

    def __init__(self, cache: ResultCache) -> None:
        self.cache = cache
        self.in_flight = InFlight()

    def model_loaded(self, model: OnnxModel) -> None:
        """A model version was loaded: its other versions' entries go.

        Raises:
            redis.RedisError: if Redis cannot be reached.
        """
        self.cache.forget_other_versions(model.signature.name, cache_version(model))

    def begin(self, model: str, version: str, job: ValidatedJob, submit: Submit,
              outputs: Outputs) -> CachedJob:
        """Look the job's rows up (`version`: the model's `cache_version`), and submit to
        the batcher those no one computes."""
        digests = sample_digests(job.inputs)
        try:
            entries = self.cache.get(model, version, digests)
        except redis.RedisError as exc:
            logger.warning("the result cache could not be read (%s); computing", exc)
            entries = [None] * len(digests)
        hit_rows = [row for row, entry in enumerate(entries) if entry is not None]
        try:
            hit_columns = decode_entries([entries[row] or b"" for row in hit_rows])
            if hit_rows:
                hit_columns = outputs.derive(hit_columns)
        except ValueError as exc:
            logger.warning("cache entries of model %s %s could not be read (%s); computing",
                           model, version, exc)
            hit_rows, hit_columns = [], {}
        hit = set(hit_rows)
        misses = [row for row in range(len(digests)) if row not in hit]
        if not misses:
            return CachedJob(model, version, job, digests, hit_rows, hit_columns, None, None,
                             outputs.kept)
        claim = self.in_flight.claim((model, version), [digests[row] for row in misses])
        compute = [misses[i] for i in claim.compute]
        target = claim.future
        future = None
        if compute:
            future = submit({name: array[compute] for name, array in job.inputs.items()})
            future.add_done_callback(lambda done: _settle(target, done))
        else:
            target.set_result(None)
        # The claim's rows are the misses' own numbering: map its waits back to job rows.
        claim = Claim(target, compute, {misses[i]: wait for i, wait in claim.waits.items()},
                      claim.digests)
        return CachedJob(model, version, job, digests, hit_rows, hit_columns, claim, future,
                         outputs.kept)

    def finish(self, cached: CachedJob, *, timeout_s: float) -> BatchOutcome:
        """The job's outcome over all its rows: hits, rows computed here, rows computed by
        another job; stores the rows computed here that succeeded.

        Raises:
            TimeoutError: if a computation it waits for does not end within `timeout_s`.
            Exception: what the batch that computed its rows raised.
        """
        claim = cached.claim
        try:
            own = cached.future.result(timeout=timeout_s) if cached.future else None
            parts = [_Part(cached.hit_rows, cached.hit_columns, {})]
            if claim is not None:
                if own is not None:
                    parts.append(_Part(claim.compute, own.outputs, own.failed_rows))
                    self._store(cached, own, claim)  # before the release: see InFlight
                parts += _waited(claim, timeout_s)
        finally:
            if claim is not None:  # whatever happened, no later job waits on it for good
                _settle_if_pending(claim.future, TimeoutError("its computation ended"))
                self.in_flight.release((cached.model, cached.version), claim)
        outputs, failed = _combine(parts, len(cached.digests))
        if own is None:
            return BatchOutcome(outputs=outputs, failed_rows=failed, batch_id="",
                                batch_rows=0, wait_ms=0.0, run_ms=0.0)
        return BatchOutcome(outputs=outputs, failed_rows=failed, batch_id=own.batch_id,
                            batch_rows=own.batch_rows, wait_ms=own.wait_ms, run_ms=own.run_ms,
                            started_at=own.started_at)

    def _store(self, cached: CachedJob, own: BatchOutcome, claim: Claim) -> None:
        """Put the rows this job computed and that succeeded (failures never)."""
        places = [place for place in range(len(claim.compute)) if place not in own.failed_rows]
        kept = {name: own.outputs[name] for name in cached.kept if name in own.outputs}
        entries = list(zip([cached.digests[claim.compute[p]] for p in places],
                           encode_rows(kept, places), strict=True))
        try:
            self.cache.put(cached.model, cached.version, entries)
        except redis.RedisError as exc:
            logger.warning("the result cache could not be written (%s)", exc)


def _waited(claim: Claim, timeout_s: float) -> list[_Part]:
    """The rows the job waited for, grouped by the computation that gave them.

    Raises:
        TimeoutError: if one does not end within `timeout_s`.
    """
    by_future: dict[int, tuple[Future[Any], list[int], list[int]]] = {}
    for row, (future, place) in claim.waits.items():
        _, rows, places = by_future.setdefault(id(future), (future, [], []))
        rows.append(row)
        places.append(place)
    parts = []
    for future, rows, places in by_future.values():
        try:
            outcome: BatchOutcome = future.result(timeout=timeout_s)
        except TimeoutError:
            raise
        except Exception as exc:  # the job computing them failed: so do these rows
            parts.append(_Part(rows, {}, dict.fromkeys(range(len(rows)),
                                                       f"{type(exc).__name__}: {exc}")))
            continue
        columns = {name: column[places] if isinstance(column, np.ndarray)
                   else [column[p] for p in places] for name, column in outcome.outputs.items()}
        failed = {i: outcome.failed_rows[p] for i, p in enumerate(places)
                  if p in outcome.failed_rows}
        parts.append(_Part(rows, columns, failed))
    return parts


def _combine(parts: list[_Part], n: int) -> tuple[dict[str, Any], dict[int, str]]:
    """Columns over all `n` rows from the parts. A failed row holds zeros or None: the
    batcher leaves those in a computed part, and a failed wait writes nothing."""
    template = next((part.columns for part in parts if part.columns and part.rows), None)
    failed = {part.rows[place]: message for part in parts
              for place, message in part.failed.items()}
    if template is None:
        return {}, failed
    return {name: _column(name, sample, parts, n) for name, sample in template.items()}, failed


def _column(name: str, sample: Any, parts: list[_Part], n: int) -> Any:
    mine = [part for part in parts if part.rows and name in part.columns]
    if isinstance(sample, np.ndarray):
        column = np.zeros((n, *sample.shape[1:]), dtype=sample.dtype)
        for part in mine:
            column[part.rows] = part.columns[name]
        return column
    values: list[Any] = [None] * n
    for part in mine:
        for place, row in enumerate(part.rows):
            values[row] = part.columns[name][place]
    return values


def _settle(target: Future[Any], done: Future[BatchOutcome]) -> None:
    """Pass a batch's outcome (or exception) on to the claim's waiters."""
    if done.cancelled():
        target.set_exception(TimeoutError("the batch was cancelled"))
    elif (exc := done.exception()) is not None:
        target.set_exception(exc)
    else:
        target.set_result(done.result())


def _settle_if_pending(target: Future[Any], exc: BaseException) -> None:
    with contextlib.suppress(InvalidStateError):  # settled already, as it should be
        target.set_exception(exc)
