"""The results file of `inferfleet submit FILE`, written in input order and resumable.

A run that is interrupted (Ctrl-C, Redis gone) can be resumed with `--resume`: after each
batch of result rows is on disk, the run's state goes to a small JSON file next to the
results (`<results>.progress`), and a resumed run starts from the rows it names, into the
same session, without redoing them.

- `.csv` is appended to; the state holds its length after the last whole batch, so rows
  written after that (the run died mid-write) are cut off before appending.
- `.npy` is a memory-mapped array of all rows, filled in place (`r+` on resume).
- `.parquet` cannot be appended to, and a file cut short has no footer. Each batch is
  written as a part file of its own (`<results>.parts/`), and the parts are joined into
  the results file once the last is written.

The `.npy` layout is compact: byte strings (UTF-8) sized to what they hold, the ids of a
`.npy` input (row numbers) as integers.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from inferfleet.errors import BadArgumentError
from inferfleet.files import pyarrow_module

#: Columns of every results file, around the per-class probability columns.
LEADING_COLUMNS = ("status", "label", "score")
TRAILING_COLUMNS = ("error_code", "error_message")
#: Widths (bytes) of the `.npy` text fields; a longer error message is cut.
NPY_WIDTHS = {"status": 8, "error_code": 24, "error_message": 160, "id": 64}


@dataclass
class ResultRows:
    """Result rows in input order, one column each: ids, status, label, score, per-class
    probabilities (rows, classes) and error."""

    id: Sequence[str] = ()
    status: npt.NDArray[Any] = field(default_factory=lambda: np.empty(0, object))
    label: npt.NDArray[Any] = field(default_factory=lambda: np.empty(0, object))
    score: npt.NDArray[Any] = field(default_factory=lambda: np.empty(0, np.float32))
    probabilities: npt.NDArray[Any] = field(
        default_factory=lambda: np.empty((0, 0), np.float32))
    error_code: npt.NDArray[Any] = field(default_factory=lambda: np.empty(0, object))
    error_message: npt.NDArray[Any] = field(default_factory=lambda: np.empty(0, object))
    #: The input's features, (rows, features), when the results repeat them.
    features: Any = None

    def __len__(self) -> int:
        return len(self.id)


@dataclass
class RunState:
    """What a resumed run needs: the run it continues and how far it got."""

    source: str
    source_bytes: int
    source_mtime_ns: int
    model: str
    session_id: str | None
    id_column: str | None
    rows_done: int = 0
    out_bytes: int = 0  # a .csv's length after its last whole batch
    parts: int = 0  # a .parquet's part files written
    include_features: bool = False  # the results repeat the input's features

    @staticmethod
    def path_for(out: Path) -> Path:
        return out.with_name(out.name + ".progress")

    @classmethod
    def new(cls, source: Path, model: str, session_id: str | None,
            id_column: str | None) -> RunState:
        info = source.stat()
        return cls(str(source.resolve()), info.st_size, info.st_mtime_ns, model, session_id,
                   id_column)

    @classmethod
    def load(cls, out: Path, source: Path, model: str) -> RunState:
        """The state of the interrupted run that writes `out`.

        Raises:
            BadArgumentError: if there is none, or it was a run of another file or model,
                or the file changed since.
        """
        path = cls.path_for(out)
        try:
            state = cls(**json.loads(path.read_text(encoding="utf-8")))
        except FileNotFoundError:
            raise BadArgumentError(f"nothing to resume: {path} does not exist (a run that "
                                   "finished, or never began, leaves none)") from None
        except (ValueError, TypeError) as exc:
            raise BadArgumentError(f"{path} is not a run's state: {exc}") from exc
        info = source.stat()
        if (state.source, state.model) != (str(source.resolve()), model):
            raise BadArgumentError(f"{path} is the state of a run of {state.source} through "
                                   f"model {state.model!r}, not of this one")
        if (state.source_bytes, state.source_mtime_ns) != (info.st_size, info.st_mtime_ns):
            raise BadArgumentError(f"{source} changed since the interrupted run: its rows "
                                   "may not be the same; run it afresh, without --resume")
        return state

    def save(self, out: Path) -> None:
        path = self.path_for(out)
        staged = path.with_name(path.name + ".tmp")
        staged.write_text(json.dumps(asdict(self)), encoding="utf-8")
        staged.replace(path)  # atomic: a crash leaves the old state or the new one

    def clear(self, out: Path) -> None:
        self.path_for(out).unlink(missing_ok=True)


class ResultWriter:
    """Writes result rows in input order in the input's format; a context manager.

    The columns are the id (named `id_name`, the input's id column), the input's
    `features` if asked for, status, label, score, one `prob_<class>` per entry of
    `classes`, error code and message. `state` (a resumed
    run's, else a new one) is where it picks up and what it records after each write.
    """

    def __init__(self, path: Path, fmt: str, total_rows: int, state: RunState, *,
                 id_name: str = "id", classes: Sequence[str] = (),
                 labels: Sequence[str] = (), numbered_ids: bool = False,
                 features: Sequence[str] = ()) -> None:
        self.path, self.fmt, self.state = path, fmt, state
        self.id_name = id_name
        self.feature_columns = list(features)
        self.class_columns = [f"prob_{label}" for label in classes]
        self._handle: Any = None
        self._parts = path.with_name(path.name + ".parts")
        if fmt == ".npy":
            self._handle = self._open_npy(total_rows, labels, numbered_ids)
        elif fmt == ".csv" and state.rows_done:
            with path.open("r+b") as handle:  # rows after the last whole batch go
                handle.truncate(state.out_bytes)
        elif fmt == ".csv":
            path.write_bytes(b"")  # a new run: nothing of an earlier one stays
        elif fmt == ".parquet":
            self._parts.mkdir(exist_ok=True)
            for stale in self._parts.glob("part-*.parquet"):
                if int(stale.stem.split("-")[1]) >= state.parts:
                    stale.unlink()

    def _open_npy(self, total_rows: int, labels: Sequence[str], numbered_ids: bool) -> Any:
        label_bytes = max([len(label.encode()) for label in labels] or [32])
        dtype = np.dtype([
            (self.id_name, "i8" if numbered_ids else f"S{NPY_WIDTHS['id']}"),
            *[(c, "f4") for c in self.feature_columns],
            ("status", f"S{NPY_WIDTHS['status']}"), ("label", f"S{label_bytes}"),
            ("score", "f4"), *[(c, "f4") for c in self.class_columns],
            ("error_code", f"S{NPY_WIDTHS['error_code']}"),
            ("error_message", f"S{NPY_WIDTHS['error_message']}")])
        if self.state.rows_done:
            handle = np.load(self.path, mmap_mode="r+")
            if handle.dtype != dtype or len(handle) != total_rows:
                raise BadArgumentError(f"{self.path} is not the results file of this run")
            return handle
        return np.lib.format.open_memmap(self.path, mode="w+", dtype=dtype,
                                         shape=(total_rows,))

    def _columns(self, rows: ResultRows) -> dict[str, Any]:
        probabilities = np.asarray(rows.probabilities, dtype=np.float32).reshape(
            len(rows), len(self.class_columns))
        features = np.asarray(rows.features if rows.features is not None else [],
                              dtype=np.float32).reshape(len(rows), len(self.feature_columns))
        return {self.id_name: rows.id,
                **{c: features[:, j] for j, c in enumerate(self.feature_columns)},
                "status": rows.status, "label": rows.label,
                "score": rows.score,
                **{c: probabilities[:, j] for j, c in enumerate(self.class_columns)},
                "error_code": rows.error_code, "error_message": rows.error_message}

    def write(self, rows: ResultRows) -> None:
        """Append rows (in input order), then record how far the run got."""
        columns = self._columns(rows)
        if self.fmt == ".npy":
            self._write_npy(columns, len(rows))
        elif self.fmt == ".csv":
            self._write_csv(columns)
        else:
            self._write_part(columns)
        self.state.rows_done += len(rows)
        self.state.save(self.path)

    def _write_npy(self, columns: dict[str, Any], n: int) -> None:
        block = self._handle[self.state.rows_done:self.state.rows_done + n]
        for name, values in columns.items():
            kind = block.dtype[name]
            if kind.kind == "S":
                values = _utf8(values, kind.itemsize)
            elif kind.kind == "i":  # a .npy input's ids: its row numbers
                values = np.asarray(values, dtype=np.int64)
            block[name] = values
        self._handle.flush()

    def _write_csv(self, columns: dict[str, Any]) -> None:
        csv = pyarrow_module("csv")
        header = self.state.rows_done == 0 and self.state.out_bytes == 0
        with self.path.open("ab") as sink:
            csv.write_csv(self._table(columns), sink,
                          write_options=csv.WriteOptions(include_header=header))
            sink.flush()
            os.fsync(sink.fileno())
            self.state.out_bytes = sink.tell()

    def _write_part(self, columns: dict[str, Any]) -> None:
        part = self._parts / f"part-{self.state.parts:06d}.parquet"
        staged = part.with_name(part.name + ".tmp")
        pyarrow_module("parquet").write_table(self._table(columns), staged)
        staged.replace(part)
        self.state.parts += 1

    def _table(self, columns: dict[str, Any]) -> Any:
        pa = pyarrow_module("")
        numbers = {"score", *self.class_columns, *self.feature_columns}
        # A failed row's score and probabilities are empty cells (null), not "nan".
        arrays = [_nullable_floats(pa, values) if name in numbers
                  else pa.array(values, type=pa.string()) for name, values in columns.items()]
        return pa.table(arrays, names=list(columns))

    def __enter__(self) -> ResultWriter:
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        if exc_type is not None:
            return  # interrupted: the file and its state stay, for --resume
        if self.fmt == ".npy":
            self._handle.flush()
        elif self.fmt == ".csv" and self.state.out_bytes == 0:  # no rows: still a header
            self._write_csv(self._columns(ResultRows()))
        elif self.fmt == ".parquet":
            self._join_parts()
        self.state.clear(self.path)

    def _join_parts(self) -> None:
        parquet = pyarrow_module("parquet")
        parts = sorted(self._parts.glob("part-*.parquet"))
        schema = self._table(self._columns(ResultRows())).schema
        with parquet.ParquetWriter(str(self.path), schema) as writer:
            for part in parts:  # one part in memory at a time
                writer.write_table(parquet.read_table(part))
        shutil.rmtree(self._parts, ignore_errors=True)


def _utf8(values: Any, width: int) -> npt.NDArray[Any]:
    """Text as UTF-8 bytes of at most `width`, a value too long cut at a character
    boundary (numpy alone would cut mid-character)."""
    encoded = np.char.encode(np.asarray(values, dtype=str), "utf-8")
    for index in np.flatnonzero(np.char.str_len(encoded) > width):  # rare: long messages
        encoded[index] = encoded[index][:width].decode("utf-8", "ignore").encode()
    return encoded


def _nullable_floats(pa: Any, values: Any) -> Any:
    floats = np.asarray(values, dtype=np.float32)
    return pa.array(floats, type=pa.float32(), mask=np.isnan(floats))
