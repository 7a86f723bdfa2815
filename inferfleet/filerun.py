"""`inferfleet submit FILE`: a data file through the fleet, its results into another file.

Rows are read a batch at a time and at most `window_batches` batches are in flight, so a
file of any length streams in bounded memory. Rows whose cells cannot be read, or that fail
validation (a NaN, a wrong width), are never sent: they are written as failures with their
id and the reason. Results come out in input order, in the input's format.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from inferfleet.errors import BadArgumentError, ErrorCode
from inferfleet.files import ResultRows, ResultWriter, RowBatch, count_rows, file_format, read_rows
from inferfleet.models.config import ModelSignature
from inferfleet.producer import Client, Job
from inferfleet.schemas import JobResult
from inferfleet.validation import Limits, validate

Progress = Callable[[int, int, int], None]


class ScoreHistogram:
    """The distribution of scores in fixed memory: 1,000 bins over [0, 1] (scores outside
    land in the edge bins) and the exact extremes."""

    BINS = 1000

    def __init__(self) -> None:
        self.counts = np.zeros(self.BINS, dtype=np.int64)
        self.low = float("inf")
        self.high = float("-inf")

    def add(self, scores: npt.NDArray[Any]) -> None:
        scores = scores[~np.isnan(scores)]
        if len(scores):
            self.counts += np.histogram(np.clip(scores, 0.0, 1.0), bins=self.BINS,
                                        range=(0.0, 1.0))[0]
            self.low, self.high = min(self.low, scores.min()), max(self.high, scores.max())

    def __len__(self) -> int:
        return int(self.counts.sum())

    def percentile(self, q: float) -> float:
        """The upper edge of the bin holding the q-th quantile (within 0.001)."""
        index = int(np.searchsorted(np.cumsum(self.counts), q * len(self)))
        return min(self.high, (index + 1) / self.BINS)


@dataclass
class FileReport:
    """What a file run did: rows by status, the scores of the successes, the time taken."""

    source: Path
    out: Path
    model: str
    rows: int = 0
    by_status: Counter[str] = field(default_factory=Counter)
    scores: ScoreHistogram = field(default_factory=ScoreHistogram)
    seconds: float = 0.0

    def render(self) -> str:
        """The report printed at the end of `inferfleet submit`."""
        rate = self.rows / self.seconds if self.seconds else 0.0
        lines = [f"{self.rows:,} rows of {self.source} through model {self.model!r} in "
                 f"{self.seconds:.1f} s ({rate:,.0f} rows/s)",
                 "by status: " + ", ".join(f"{status} {count:,}" for status, count
                                            in sorted(self.by_status.items()))]
        if len(self.scores):
            s = self.scores
            lines.append(f"score: min {s.low:.3f}, p5 {s.percentile(0.05):.3f}, median "
                         f"{s.percentile(0.5):.3f}, p95 {s.percentile(0.95):.3f}, "
                         f"max {s.high:.3f}")
            tenths = s.counts.reshape(10, -1).sum(axis=1)
            widest = max(int(tenths.max()), 1)
            lines += [f"  {i / 10:.1f}-{(i + 1) / 10:.1f} {'#' * int(40 * n / widest):<40} "
                      f"{n:,}" for i, n in enumerate(tenths) if n]
        lines.append(f"results: {self.out}")
        return "\n".join(lines)


@dataclass
class _InFlight:
    batch: RowBatch
    problems: dict[int, tuple[ErrorCode, str]]
    jobs: list[Job]


def run_file(client: Client, source: Path, *, model: str, out: Path | None = None,
             session_id: str | None = None, id_column: str | None = None, job_size: int = 256,
             batch_rows: int = 8192, window_batches: int = 4,
             progress: Progress | None = None) -> FileReport:
    """Push every row of `source` through `model`; write one result row per input row.

    Raises:
        BadArgumentError: if the file cannot feed the model (format, width, id column).
        UnknownModelError: if no worker serves `model`.
    """
    fmt = file_format(source)
    signature = client.signature(model)
    if len(signature.inputs) != 1:
        raise BadArgumentError(f"model {model!r} takes several inputs; files feed one")
    out = out or source.with_name(f"{source.stem}.results{fmt}")
    report = FileReport(source, out, model)
    total = count_rows(source)
    started = time.perf_counter()
    in_flight: deque[_InFlight] = deque()
    with ResultWriter(out, fmt, total) as writer:
        for batch in read_rows(source, id_column=id_column, batch_rows=batch_rows):
            in_flight.append(_send(client, batch, signature, model, session_id, job_size))
            if len(in_flight) >= window_batches:
                _finish(client, in_flight.popleft(), writer, report, total, progress)
        while in_flight:
            _finish(client, in_flight.popleft(), writer, report, total, progress)
    report.seconds = time.perf_counter() - started
    return report


def _send(client: Client, batch: RowBatch, signature: ModelSignature, model: str,
          session_id: str | None, job_size: int) -> _InFlight:
    spec = signature.inputs[0]
    width = batch.features.shape[1]
    if spec.shape != [width] and spec.shape != [None]:
        raise BadArgumentError(f"the file has {width} feature columns; model {model!r} takes "
                               f"samples of shape {spec.shape}")
    checked = validate({spec.name: batch.features}, signature,
                       Limits(max_job_samples=len(batch.features),
                              max_sample_elements=client.settings.max_sample_elements))
    problems = {**checked.each_problem(), **batch.problems}  # an unreadable cell says more
    valid = [i for i in range(len(batch.ids)) if i not in problems]
    jobs = client.submit_many(
        model, batch.features[valid], job_size=job_size, session_id=session_id,
        sample_ids=[batch.ids[i] for i in valid], validate=False) if valid else []
    return _InFlight(batch, problems, jobs)


def _finish(client: Client, flight: _InFlight, writer: ResultWriter, report: FileReport,
            total: int, progress: Progress | None) -> None:
    results = client.results([job.id for job in flight.jobs], timeout=3600)
    sent = iter([row for result in results for row in _rows_of(result)])
    rows = ResultRows()
    for index, row_id in enumerate(flight.batch.ids):
        problem = flight.problems.get(index)
        status, label, score, code, message = (
            ("failure", "", float("nan"), problem[0].value, problem[1]) if problem is not None
            else next(sent))
        rows.id.append(row_id)
        rows.status.append(status)
        rows.label.append(label)
        rows.score.append(score)
        rows.error_code.append(code)
        rows.error_message.append(message)
    writer.write(rows)
    report.rows += len(rows)
    report.by_status.update(rows.status)
    succeeded = np.asarray(rows.status) == "success"
    report.scores.add(np.asarray(rows.score, dtype=np.float64)[succeeded])
    if progress is not None:
        progress(report.rows, total, report.rows - report.by_status["success"])


def _rows_of(result: JobResult) -> Iterator[tuple[str, str, float, str, str]]:
    """(status, label, score, error code, error message) per sample, from the columns."""
    n = len(result.sample_ids)
    labels = _column(result, "label", n)
    scores = _column(result, "score", n)
    errors = {e.index: e for e in result.errors}
    job_error = result.error
    for index, status in enumerate(result.sample_status):
        error = errors.get(index) or (job_error if status != "success" else None)
        if error is not None:
            yield status.value, "", float("nan"), error.code.value, error.message
        else:
            label = labels[index]
            yield status.value, "" if label is None else str(label), float(scores[index]), "", ""


def _column(result: JobResult, name: str, n: int) -> Any:
    try:
        return result.column(name)
    except KeyError:  # a model without postprocessing has no label or score
        return [None] * n if name == "label" else np.full(n, np.nan)
