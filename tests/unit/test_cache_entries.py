"""Result cache entries: any output columns a model and its postprocessing give come back
from their entries as they went in, row for row."""

import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from inferfleet.cache import decode_entries, encode_rows, sample_digests

DTYPES = st.sampled_from([np.float32, np.float64, np.int64, np.int32, np.uint8, np.bool_])


@st.composite
def columns(draw: st.DrawFn) -> tuple[dict[str, object], int]:
    n = draw(st.integers(1, 20))
    outputs: dict[str, object] = {}
    for index in range(draw(st.integers(1, 3))):
        shape = (n, *draw(hnp.array_shapes(min_dims=0, max_dims=2, max_side=4)))
        outputs[f"a{index}"] = draw(hnp.arrays(draw(DTYPES), shape))
    if draw(st.booleans()):  # an ONNX string output: an array of str or objects
        strings = draw(st.lists(st.text(max_size=4), min_size=n, max_size=n))
        outputs["s"] = np.array(strings, dtype=draw(st.sampled_from([object, np.str_])))
    for index in range(draw(st.integers(0, 2))):
        value = st.one_of(st.text(max_size=5), st.lists(st.text(max_size=3), max_size=3),
                          st.none())
        outputs[f"l{index}"] = draw(st.lists(value, min_size=n, max_size=n))
    return outputs, n


@settings(max_examples=200, deadline=None)
@given(columns(), st.data())
def test_entries_give_back_the_rows_they_were_made_of(
        drawn: tuple[dict[str, object], int], data: st.DataObject) -> None:
    outputs, n = drawn
    rows = data.draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=n))
    decoded = decode_entries(encode_rows(outputs, rows))
    assert sorted(decoded) == sorted(outputs)
    for name, column in outputs.items():
        if isinstance(column, np.ndarray) and column.dtype.kind in "biuf":
            np.testing.assert_array_equal(decoded[name], column[rows])
            assert decoded[name].dtype == column.dtype
        elif isinstance(column, np.ndarray):  # strings come back as a list
            assert decoded[name] == [str(column[row]) for row in rows]
        else:
            assert decoded[name] == [column[row] for row in rows]  # type: ignore[index]


def test_entries_of_different_layouts_are_refused_together() -> None:
    one = encode_rows({"y": np.zeros((1, 2), np.float32)}, [0])
    other = encode_rows({"y": np.zeros((1, 3), np.float32)}, [0])
    with pytest.raises(ValueError, match="different layouts"):
        decode_entries(one + other)


def test_digests_tell_apart_bytes_dtype_shape_and_input_names() -> None:
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    base = sample_digests({"x": x})
    assert base[0] != base[1] and len(base[0]) == 20
    assert sample_digests({"x": x.astype(np.int32)}) != base
    assert sample_digests({"x": x.reshape(2, 3, 1)}) != base
    assert sample_digests({"z": x}) != base
    assert sample_digests({"x": x.copy()}) == base
