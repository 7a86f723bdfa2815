"""`inferfleet submit FILE`: a data file through the fleet, its results into another file.

Rows are read a batch at a time and at most `window_batches` batches are in flight, so a
file of any length streams in bounded memory. Rows whose cells cannot be read, or that fail
validation (a NaN, a wrong width), are never sent: they are written as failures with their
id and the reason. Results come out in input order, in the input's format.
"""

from __future__ import annotations

import itertools
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from inferfleet.errors import BadArgumentError
from inferfleet.features import feature_layout
from inferfleet.files import RowBatch, count_rows, file_format, read_rows
from inferfleet.frames import RESULT_COLUMNS, result_columns
from inferfleet.models.config import ModelSignature
from inferfleet.producer import Client, Job
from inferfleet.resultfiles import ResultRows, ResultWriter, RunState

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
    session_id: str | None = None
    score_name: str = "score"  # what the histogram shows (a binary model's prob_<class>)
    resumed_after: int = 0  # rows an interrupted run had written (--resume)
    rows: int = 0  # rows this run sent and wrote
    total: int = 0  # rows in the file
    by_status: Counter[str] = field(default_factory=Counter)
    scores: ScoreHistogram = field(default_factory=ScoreHistogram)
    seconds: float = 0.0

    def render(self) -> str:
        """The report printed at the end of `inferfleet submit`."""
        rate = self.rows / self.seconds if self.seconds else 0.0
        lines = [f"{self.rows:,} rows of {self.source} through model {self.model!r} in "
                 f"{self.seconds:.1f} s ({rate:,.0f} rows/s)"
                 + (f", resuming after the {self.resumed_after:,} rows written before"
                    if self.resumed_after else "")
                 + (f"; session {self.session_id}" if self.session_id else ""),
                 "by status: " + ", ".join(f"{status} {count:,}" for status, count
                                            in sorted(self.by_status.items()))]
        if len(self.scores):
            s = self.scores
            lines.append(f"{self.score_name}: min {s.low:.3f}, p5 {s.percentile(0.05):.3f}, median "
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
    jobs: list[Job]


def run_file(client: Client, source: Path, *, model: str, out: Path | None = None,
             session_id: str | None = None, id_column: str | None = None, job_size: int = 256,
             batch_rows: int = 8192, window_batches: int = 4,
             progress: Progress | None = None, resume: bool = False,
             include_features: bool = False, priority: str = "normal") -> FileReport:
    """Push every row of `source` through `model`; write one result row per input row.

    Columns feed a model with feature names by name, in any order
    (`inferfleet.features`); others by position. Every row is sent, so that the
    session counts it: a row whose cells are not numbers fails (the worker sees NaN), and
    its result row gives the cell that was not a number. `include_features` repeats the
    input's feature columns in the results; `priority` is the jobs' (`Client.submit`). With
    `resume`, an interrupted
    run of the same file and model goes on from its last whole batch, into its session,
    with its id column (`resultfiles.RunState`).

    Raises:
        BadArgumentError: if the file cannot feed the model (format, columns, width, id
            column), before the results file is created; or, with `resume`, if there is
            no interrupted run of this file to resume.
        UnknownModelError: if no worker serves `model`.
    """
    fmt = file_format(source)
    out = out or default_out(source)
    if resume:
        state = RunState.load(out, source, model)
        session_id, id_column = state.session_id, state.id_column
        include_features = state.include_features
    else:
        state = RunState.new(source, model, session_id, id_column)
        state.include_features = include_features
    signature = client.signature(model)
    classes = _class_columns(signature)
    report = FileReport(source, out, model, session_id=session_id,
                        resumed_after=state.rows_done,
                        score_name=f"prob_{classes[0]}" if len(classes) == 1 else "score")
    started = time.perf_counter()
    report.total = count_rows(source)
    if session_id is not None:
        client.expect(session_id, report.total)  # `watch` then shows a percentage and ETA
    in_flight: deque[_InFlight] = deque()
    batches = _skip(read_rows(source, id_column=id_column, batch_rows=batch_rows),
                    state.rows_done)
    first = next(batches, None)
    if first is not None:
        model_inputs(first, signature)  # a file that cannot feed the model writes nothing
    with ResultWriter(out, fmt, report.total, state, id_name=id_column or "id",
                      classes=classes, labels=signature.labels or (),
                      numbered_ids=fmt == ".npy",
                      features=_feature_names(first) if include_features and first else ()
                      ) as writer:
        for batch in itertools.chain([first] if first is not None else [], batches):
            in_flight.append(_send(client, batch, signature, session_id, job_size, priority))
            if len(in_flight) >= window_batches:
                _finish(client, in_flight.popleft(), writer, report, signature, progress)
        while in_flight:
            _finish(client, in_flight.popleft(), writer, report, signature, progress)
    report.seconds = time.perf_counter() - started
    return report


def _feature_names(batch: RowBatch) -> list[str]:
    """The input's feature column names (a .npy's, which has none: x0, x1, ...)."""
    return batch.columns if batch.columns is not None else [
        f"x{j}" for j in range(batch.features.shape[1])]


def default_out(source: Path) -> Path:
    """Where the results of `source` go unless told: `<stem>.results<suffix>` beside it."""
    return source.with_name(f"{source.stem}.results{source.suffix}")


def _skip(batches: Iterator[RowBatch], rows: int) -> Iterator[RowBatch]:
    """The batches less their first `rows` rows (those a resumed run has written)."""
    for batch in batches:
        n = len(batch.ids)
        if rows >= n:
            rows -= n
            continue
        if rows:
            batch = RowBatch(batch.ids[rows:], batch.features[rows:],
                             {i - rows: p for i, p in batch.problems.items() if i >= rows},
                             columns=batch.columns, text_columns=batch.text_columns)
            rows = 0
        yield batch


def model_inputs(batch: RowBatch, signature: ModelSignature) -> dict[str, npt.NDArray[Any]]:
    """A batch's features as the model's inputs: by column name where the model has
    feature names, else by position.

    Raises:
        BadArgumentError: naming missing or extra columns, or for a width that does not
            fit, with a hint when a column holds text (an id column not named as one).
    """
    hint = "".join(f"; column {name!r} holds no numbers: if it holds ids, pass --id-column "
                   f"{name}" for name in batch.text_columns)
    layout = feature_layout(signature)
    if layout is not None and batch.columns is not None:
        try:
            order = layout.order(batch.columns)
        except BadArgumentError as exc:
            raise BadArgumentError(f"{exc}{hint}") from None
        return layout.inputs(batch.features[:, order])
    if layout is not None and layout.per_column and len(layout.names) == batch.features.shape[1]:
        return layout.inputs(batch.features)  # a .npy: its columns in the model's order
    if len(signature.inputs) != 1:
        raise BadArgumentError(f"model {signature.name!r} takes the inputs "
                               f"{[s.name for s in signature.inputs]}, which a file's "
                               "columns cannot feed by position")
    spec = signature.inputs[0]
    width = batch.features.shape[1]
    if spec.shape != [width] and spec.shape != [None]:
        raise BadArgumentError(f"the file has {width} feature columns; model "
                               f"{signature.name!r} takes samples of shape {spec.shape}{hint}")
    return {spec.name: batch.features}


def _class_columns(signature: ModelSignature) -> list[str]:
    """The classes whose probability gets a column: each, or a binary model's positive
    (second) class alone."""
    if signature.scores is None or not signature.labels:
        return []
    return signature.labels[1:] if len(signature.labels) == 2 else list(signature.labels)


def _send(client: Client, batch: RowBatch, signature: ModelSignature,
          session_id: str | None, job_size: int, priority: str) -> _InFlight:
    jobs = client.submit_many(signature.name, model_inputs(batch, signature),
                              job_size=job_size, session_id=session_id, sample_ids=batch.ids,
                              validate=False, priority=priority) if batch.ids else []
    return _InFlight(batch, jobs)


def _finish(client: Client, flight: _InFlight, writer: ResultWriter, report: FileReport,
            signature: ModelSignature, progress: Progress | None) -> None:
    results = client.results([job.id for job in flight.jobs], timeout=3600)
    classes = len(writer.class_columns)
    parts = [result_columns(result, signature.scores, classes, blank="")
             for result in results]
    rows = ResultRows(
        id=list(flight.batch.ids),
        **{name: np.concatenate([part[name] for part in parts]) if parts
           else np.empty((0, classes) if name == "probabilities" else 0,
                         np.float32 if name in ("score", "probabilities") else object)
           for name in RESULT_COLUMNS},
        features=flight.batch.features if writer.feature_columns else None)
    for index, (code, message) in flight.batch.problems.items():
        # The worker saw NaN where the file had text: the file's reason says more.
        rows.error_code[index], rows.error_message[index] = code.value, message
    writer.write(rows)
    report.rows += len(rows)
    succeeded = rows.status == "success"
    report.by_status.update(dict(zip(*np.unique(rows.status.astype(str), return_counts=True),
                                     strict=True)))
    # A binary model's report shows its positive class's probability, the one a user
    # thresholds; other models' their top score.
    shown = rows.probabilities[:, 0] if classes == 1 else rows.score
    report.scores.add(np.asarray(shown, dtype=np.float64)[succeeded])
    if progress is not None:
        progress(report.resumed_after + report.rows, report.total,
                 report.rows - report.by_status["success"])
