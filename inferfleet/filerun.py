"""`inferfleet submit FILE`: a data file through the fleet, its results into another file.

Rows are read a batch at a time and at most `window_batches` batches are in flight, so a
file of any length streams in bounded memory. Rows whose cells cannot be read, or that fail
validation (a NaN, a wrong width), are never sent: they are written as failures with their
id and the reason. Results come out in input order, in the input's format.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from inferfleet.errors import BadArgumentError, ErrorCode
from inferfleet.files import ResultRows, ResultWriter, RowBatch, count_rows, file_format, read_rows
from inferfleet.models.config import ModelSignature
from inferfleet.producer import Client, Job
from inferfleet.schemas import SampleResult
from inferfleet.validation import Limits, validate

Progress = Callable[[int, int, int], None]


@dataclass
class FileReport:
    """What a file run did: rows by status, the scores of the successes, the time taken."""

    source: Path
    out: Path
    model: str
    rows: int = 0
    by_status: Counter[str] = field(default_factory=Counter)
    scores: list[float] = field(default_factory=list)
    seconds: float = 0.0

    def render(self) -> str:
        """The report printed at the end of `inferfleet submit`."""
        rate = self.rows / self.seconds if self.seconds else 0.0
        lines = [f"{self.rows:,} rows of {self.source} through model {self.model!r} in "
                 f"{self.seconds:.1f} s ({rate:,.0f} rows/s)",
                 "by status: " + ", ".join(f"{status} {count:,}" for status, count
                                            in sorted(self.by_status.items()))]
        if self.scores:
            scores = np.asarray(self.scores)
            low, p5, p50, p95, high = np.percentile(scores, [0, 5, 50, 95, 100])
            lines.append(f"score: min {low:.3f}, p5 {p5:.3f}, median {p50:.3f}, "
                         f"p95 {p95:.3f}, max {high:.3f}")
            counts, edges = np.histogram(scores, bins=10, range=(0.0, 1.0))
            widest = max(counts.max(), 1)
            lines += [f"  {edges[i]:.1f}-{edges[i + 1]:.1f} {'#' * int(40 * n / widest):<40} "
                      f"{n:,}" for i, n in enumerate(counts) if n]
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
    problems = {**checked.problems, **batch.problems}  # an unreadable cell says more
    valid = [i for i in range(len(batch.ids)) if i not in problems]
    jobs = client.submit_many(
        model, batch.features[valid], job_size=job_size, session_id=session_id,
        sample_ids=[batch.ids[i] for i in valid], validate=False) if valid else []
    return _InFlight(batch, problems, jobs)


def _finish(client: Client, flight: _InFlight, writer: ResultWriter, report: FileReport,
            total: int, progress: Progress | None) -> None:
    results = client.results([job.id for job in flight.jobs], timeout=3600)
    samples = iter([sample for result in results for sample in result.samples])
    rows = ResultRows()
    for index, row_id in enumerate(flight.batch.ids):
        problem = flight.problems.get(index)
        if problem is not None:
            _append(rows, row_id, "failure", None, problem[0].value, problem[1])
        else:
            _append_sample(rows, row_id, next(samples))
    writer.write(rows)
    report.rows += len(rows)
    report.by_status.update(rows.status)
    report.scores += [s for s, status in zip(rows.score, rows.status, strict=True)
                      if status == "success" and not np.isnan(s)]
    if progress is not None:
        progress(report.rows, total, report.rows - report.by_status["success"])


def _append_sample(rows: ResultRows, row_id: str, sample: SampleResult) -> None:
    if sample.error is not None:
        _append(rows, row_id, sample.status.value, None, sample.error.code.value,
                sample.error.message)
    else:
        _append(rows, row_id, sample.status.value, sample.outputs, "", "")


def _append(rows: ResultRows, row_id: str, status: str, outputs: dict[str, Any] | None,
            code: str, message: str) -> None:
    outputs = outputs or {}
    rows.id.append(row_id)
    rows.status.append(status)
    rows.label.append("" if outputs.get("label") is None else str(outputs["label"]))
    score = outputs.get("score")
    rows.score.append(float(score) if score is not None else float("nan"))
    rows.error_code.append(code)
    rows.error_message.append(message)
