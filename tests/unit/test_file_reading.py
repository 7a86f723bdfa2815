from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from inferfleet.errors import ErrorCode
from inferfleet.filerun import ScoreHistogram
from inferfleet.files import count_rows, read_rows


def test_a_parquet_file_is_read_one_row_group_at_a_time(tmp_path: Path) -> None:
    x = np.random.default_rng(0).random((400_000, 64), dtype=np.float32)  # 98 MiB of floats
    path = tmp_path / "big.parquet"
    pq.write_table(pa.table({f"p{j}": x[:, j] for j in range(64)}), path,
                   row_group_size=50_000)
    del x
    assert count_rows(path) == 400_000
    most, rows = 0, 0
    for batch in read_rows(path, id_column=None, batch_rows=8192):
        rows += len(batch.ids)
        most = max(most, pa.total_allocated_bytes())
    assert rows == 400_000
    # One row group is 12 MiB of floats; the whole file is 98 MiB.
    assert most < 50 * 2**20, f"pyarrow held {most / 2**20:.0f} MiB while reading"


def test_csv_cells_that_are_not_numbers_fail_their_row_only(tmp_path: Path) -> None:
    path = tmp_path / "rows.csv"
    path.write_text("id,a,b\nx,1,2\ny,oops,3\nz,4,\n")
    [batch] = read_rows(path, id_column="id", batch_rows=100)
    assert batch.ids == ["x", "y", "z"]
    assert batch.problems == {1: (ErrorCode.BAD_REQUEST, "column 'a': 'oops' is not a number"),
                              2: (ErrorCode.BAD_REQUEST, "column 'b': is empty")}
    np.testing.assert_array_equal(batch.features[0], [1, 2])
    assert count_rows(path) == 3


def test_the_score_histogram_keeps_percentiles_in_fixed_memory() -> None:
    histogram = ScoreHistogram()
    for _ in range(10):
        histogram.add(np.linspace(0, 1, 100_001))
    assert len(histogram) == 1_000_010
    assert abs(histogram.percentile(0.5) - 0.5) <= 0.001 + 1e-9  # one bin
    assert (histogram.low, histogram.high) == (0.0, 1.0)
