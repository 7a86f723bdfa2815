"""One job through the result cache in a worker: look its samples up before batching,
compute only the rest (each distinct sample once, in this worker), store what succeeded.

A cache that fails (Redis errors on the cache's own reads and writes) never fails a job:
its samples are computed, or not stored, and a warning says so.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Mapping
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import redis

from inferfleet.batching import BatchOutcome
from inferfleet.cache import (
    Claim,
    InFlight,
    ResultCache,
    Row,
    assemble,
    decode_row,
    encode_row,
    sample_digests,
)
from inferfleet.validation import ValidatedJob

logger = logging.getLogger(__name__)

Inputs = Mapping[str, npt.NDArray[Any]]
Submit = Callable[[Inputs], Future[BatchOutcome]]


@dataclass
class CachedJob:
    """A job's rows (its valid samples) split into cache hits, rows it computes, and rows
    that wait for another computation of the same sample."""

    model: str
    version: str
    job: ValidatedJob
    digests: list[bytes]
    hits: dict[int, Row]
    claim: Claim | None
    #: The batch of the rows this job computes (None: it computes none).
    future: Future[BatchOutcome] | None

    @property
    def hit_samples(self) -> list[int]:
        """The job's sample indices answered from the cache."""
        return sorted(int(self.job.valid_index[row]) for row in self.hits)


class JobCache:
    """A worker's use of the fleet-wide result cache."""

    def __init__(self, cache: ResultCache) -> None:
        self.cache = cache
        self.in_flight = InFlight()

    def begin(self, model: str, version: str, job: ValidatedJob, submit: Submit) -> CachedJob:
        """Look the job's rows up, and submit to the batcher those no one computes."""
        digests = sample_digests(job.inputs)
        try:
            entries = self.cache.get(model, version, digests)
        except redis.RedisError as exc:
            logger.warning("the result cache could not be read (%s); computing", exc)
            entries = [None] * len(digests)
        hits = {row: decode_row(entry) for row, entry in enumerate(entries) if entry is not None}
        misses = [row for row in range(len(digests)) if row not in hits]
        if not misses:
            return CachedJob(model, version, job, digests, hits, None, None)
        claim = self.in_flight.claim((model, version), [digests[row] for row in misses])
        compute = [misses[i] for i in claim.compute]
        future = None
        target = claim.future
        if compute:
            future = submit({name: array[compute] for name, array in job.inputs.items()})
            future.add_done_callback(lambda done: _settle(target, done))
        else:
            target.set_result(None)
        # The claim's rows are the misses' own numbering: map its waits back to job rows.
        claim = Claim(claim.future, compute,
                      {misses[i]: wait for i, wait in claim.waits.items()}, claim.digests)
        return CachedJob(model, version, job, digests, hits, claim, future)

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
            rows, failed = self._gather(cached, own, timeout_s)
            if own is not None and claim is not None:
                self._store(cached, own, claim)  # before the release: see InFlight
        finally:
            if claim is not None:  # whatever happened, no later job waits on it for good
                _settle_if_pending(claim.future, TimeoutError("its computation ended"))
                self.in_flight.release((cached.model, cached.version), claim)
        outputs = assemble([rows[row] for row in range(len(cached.digests))])
        if own is None:
            return BatchOutcome(outputs=outputs, failed_rows=failed, batch_id="",
                                batch_rows=0, wait_ms=0.0, run_ms=0.0)
        return BatchOutcome(outputs=outputs, failed_rows=failed, batch_id=own.batch_id,
                            batch_rows=own.batch_rows, wait_ms=own.wait_ms, run_ms=own.run_ms,
                            started_at=own.started_at)

    def _gather(self, cached: CachedJob, own: BatchOutcome | None, timeout_s: float
                ) -> tuple[dict[int, Row], dict[int, str]]:
        rows: dict[int, Row] = dict(cached.hits)
        failed: dict[int, str] = {}
        claim = cached.claim
        if claim is None:
            return rows, failed
        for place, row in enumerate(claim.compute):
            _take(own, place, row, rows, failed)
        for row, (future, place) in claim.waits.items():
            try:
                outcome = future.result(timeout=timeout_s)
            except TimeoutError:
                raise
            except Exception as exc:  # the job computing it failed: so does this row
                failed[row], rows[row] = f"{type(exc).__name__}: {exc}", {}
                continue
            _take(outcome, place, row, rows, failed)
        template = next((r for r in rows.values() if r), None)
        for row in failed:  # failed rows hold zeros or None, as the batcher leaves them
            rows[row] = _blank(template)
        return rows, failed

    def _store(self, cached: CachedJob, own: BatchOutcome, claim: Claim) -> None:
        """Put the rows this job computed and that succeeded (failures never)."""
        entries = [(cached.digests[row], encode_row(own.outputs, place))
                   for place, row in enumerate(claim.compute) if place not in own.failed_rows]
        try:
            self.cache.put(cached.model, cached.version, entries)
        except redis.RedisError as exc:
            logger.warning("the result cache could not be written (%s)", exc)


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


def _take(outcome: BatchOutcome | None, place: int, row: int, rows: dict[int, Row],
          failed: dict[int, str]) -> None:
    """Row `place` of a computation's outcome, as this job's `row`."""
    if outcome is None:
        return
    if place in outcome.failed_rows:
        failed[row], rows[row] = outcome.failed_rows[place], {}
        return
    rows[row] = {name: column[place] for name, column in outcome.outputs.items()}


def _blank(template: Row | None) -> Row:
    if template is None:
        return {}
    return {name: np.zeros_like(value) if isinstance(value, np.ndarray) else None
            for name, value in template.items()}
