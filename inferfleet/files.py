"""Data files in and out of the fleet: `.npy`, `.csv` and `.parquet`, row batch by row batch.

Readers yield `RowBatch`es (ids, float32 features, and the rows whose cells could not be
read, with the reason), never the whole file; `resultfiles` writes the results. CSV and
Parquet go through pyarrow (the `files` extra).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from inferfleet.errors import BadArgumentError, ConfigurationError, ErrorCode

FORMATS = (".npy", ".csv", ".parquet")


@dataclass
class RowBatch:
    """Consecutive rows of a file: their ids, features, and the rows that cannot run."""

    ids: list[str]
    features: npt.NDArray[np.float32]
    problems: dict[int, tuple[ErrorCode, str]] = field(default_factory=dict)
    #: The feature columns' names in file order (None for a .npy: no names).
    columns: list[str] | None = None
    #: Feature columns none of whose cells in this batch is a number (ids, most likely).
    text_columns: list[str] = field(default_factory=list)


def file_format(path: Path) -> str:
    """The file's format (its suffix).

    Raises:
        BadArgumentError: for any other suffix.
    """
    if path.suffix not in FORMATS:
        raise BadArgumentError(f"{path}: the file must end in one of {', '.join(FORMATS)}")
    return path.suffix


def count_rows(path: Path) -> int:
    """How many data rows the file holds (a quick pass for CSV)."""
    fmt = file_format(path)
    if fmt == ".npy":
        return int(np.load(path, mmap_mode="r").shape[0])
    if fmt == ".parquet":
        return int(pyarrow_module("parquet").ParquetFile(path).metadata.num_rows)
    with path.open("rb") as handle:
        lines = sum(chunk.count(b"\n") for chunk in iter(lambda: handle.read(1 << 20), b""))
    with path.open("rb") as handle:
        handle.seek(max(0, path.stat().st_size - 1))
        ends_with_newline = handle.read(1) == b"\n"
    return max(0, lines - 1 + (0 if ends_with_newline else 1))  # less the header


def read_rows(path: Path, *, id_column: str | None, batch_rows: int) -> Iterator[RowBatch]:
    """The file's rows, `batch_rows` at a time; ids from `id_column`, else row numbers.

    Raises:
        BadArgumentError: if `id_column` is not in the file, or is given for a `.npy`.
    """
    fmt = file_format(path)
    if fmt == ".npy":
        if id_column is not None:
            raise BadArgumentError(f"{path}: a .npy file has no columns; drop --id-column")
        yield from _npy_rows(path, batch_rows)
        return
    for start, table in _arrow_batches(path, fmt, batch_rows):
        yield _table_rows(table, start, id_column, path)


def _npy_rows(path: Path, batch_rows: int) -> Iterator[RowBatch]:
    rows = np.load(path, mmap_mode="r")
    if rows.ndim != 2:
        raise BadArgumentError(f"{path}: expected a 2-D array of rows, got shape {rows.shape}")
    for start in range(0, len(rows), batch_rows):
        features = np.asarray(rows[start:start + batch_rows], dtype=np.float32)
        yield RowBatch([str(i) for i in range(start, start + len(features))], features)


def _arrow_batches(path: Path, fmt: str, batch_rows: int) -> Iterator[tuple[int, Any]]:
    pa = pyarrow_module("")
    if fmt == ".parquet":
        batches = _parquet_batches(path)
    else:
        csv = pyarrow_module("csv")
        # Every cell as text: a cell that is not a number fails its row, not the file.
        header = csv.open_csv(path).schema.names
        batches = csv.open_csv(path, convert_options=csv.ConvertOptions(
            column_types=dict.fromkeys(header, pa.string())))
    start = 0
    pending: list[Any] = []
    for batch in batches:
        pending.append(batch)
        while sum(b.num_rows for b in pending) >= batch_rows:
            table = pa.Table.from_batches(pending)
            yield start, table.slice(0, batch_rows)
            start += batch_rows
            pending = table.slice(batch_rows).to_batches()
    if pending and sum(b.num_rows for b in pending):
        yield start, pa.Table.from_batches(pending)


def _parquet_batches(path: Path) -> Iterator[Any]:
    """A Parquet file's record batches, one row group in memory at a time.

    `ParquetFile.iter_batches` keeps what it has read until the iteration ends (measured:
    pyarrow's pool grew ~400 bytes per row over a 1M-row file), so row groups are read
    one by one instead.
    """
    parquet = pyarrow_module("parquet").ParquetFile(path)
    for group in range(parquet.num_row_groups):
        yield from parquet.read_row_group(group).to_batches()


def _table_rows(table: Any, start: int, id_column: str | None, path: Path) -> RowBatch:
    names = table.column_names
    if id_column is not None and id_column not in names:
        raise BadArgumentError(f"{path}: no id column {id_column!r}; columns are {names}")
    ids = ([str(v) for v in table.column(id_column).to_pylist()] if id_column
           else [str(i) for i in range(start, start + table.num_rows)])
    features = [n for n in names if n != id_column]
    matrix = np.empty((table.num_rows, len(features)), dtype=np.float32)
    problems: dict[int, tuple[ErrorCode, str]] = {}
    texts = []
    for j, name in enumerate(features):
        matrix[:, j], not_numbers = _floats(table.column(name), name, problems)
        if table.num_rows and not_numbers == table.num_rows:
            texts.append(name)
    return RowBatch(ids, matrix, problems, columns=features, text_columns=texts)


def _floats(column: Any, name: str, problems: dict[int, tuple[ErrorCode, str]]
            ) -> tuple[npt.NDArray[np.float32], int]:
    """A column as float32, and how many of its cells are not numbers: those are NaN and
    recorded in problems."""
    pc = pyarrow_module("compute")
    try:
        return np.asarray(pc.cast(column, pyarrow_module("").float32()).to_numpy(
            zero_copy_only=False), dtype=np.float32), 0
    except Exception:  # pyarrow raises ArrowInvalid; fall back to the cells one by one
        values = column.to_pylist()
        out = np.full(len(values), np.nan, dtype=np.float32)
        not_numbers = 0
        for row, value in enumerate(values):
            try:
                out[row] = float(value)
            except (TypeError, ValueError):
                not_numbers += 1
                reason = "is empty" if value in (None, "") else f"{value!r} is not a number"
                problems.setdefault(row, (ErrorCode.BAD_REQUEST, f"column {name!r}: {reason}"))
        return out, not_numbers


def pyarrow_module(module: str) -> Any:
    """pyarrow, or one of its modules ('' for the top level).

    Raises:
        ConfigurationError: if pyarrow is not installed.
    """
    import importlib

    try:
        return importlib.import_module(f"pyarrow.{module}" if module else "pyarrow")
    except ImportError as exc:
        raise ConfigurationError("CSV and Parquet files need pyarrow: pip install "
                                 "'inferfleet[files]'") from exc
