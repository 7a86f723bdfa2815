import base64
import contextlib
import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from inferfleet.codec import WIRE_DTYPES, decode_array, decode_column, encode_array, encode_column
from inferfleet.errors import ErrorCode, WireFormatError
from inferfleet.ledger import celery_meta
from inferfleet.schemas import JobStatus, SampleStatus, WireResult


@pytest.mark.parametrize("dtype", sorted(WIRE_DTYPES))
def test_every_wire_dtype_round_trips_exactly(dtype: str) -> None:
    rng = np.random.default_rng(0)
    array = (rng.random((3, 4, 2)) * 100).astype(dtype)
    decoded = decode_array(encode_array(array))
    assert decoded.dtype == array.dtype
    np.testing.assert_array_equal(decoded, array)


def test_big_endian_input_travels_as_little_endian() -> None:
    array = np.arange(6, dtype=">i4").reshape(2, 3)
    encoded = encode_array(array)
    assert base64.b64decode(encoded["data"])[:4] == b"\x00\x00\x00\x00"
    assert base64.b64decode(encoded["data"])[4:8] == b"\x01\x00\x00\x00"
    np.testing.assert_array_equal(decode_array(encoded), array)


def test_values_lists_are_accepted_in_place_of_base64() -> None:
    decoded = decode_array({"dtype": "float32", "shape": [2, 2], "values": [[1, 2], [3, 4]]})
    assert decoded.dtype == np.float32
    np.testing.assert_array_equal(decoded, [[1, 2], [3, 4]])


@pytest.mark.parametrize(("encoded", "fragment", "code"), [
    ({"dtype": "complex64", "shape": [1], "data": ""}, "dtype 'complex64'", ErrorCode.BAD_DTYPE),
    ({"dtype": "float32", "shape": [-1], "data": ""}, "shape [-1]", ErrorCode.BAD_REQUEST),
    ({"dtype": "float32", "shape": [2], "data": "AAAA"}, "holds 3 bytes", ErrorCode.BAD_REQUEST),
    ({"dtype": "float32", "shape": [1], "data": "!!!"}, "not valid base64", ErrorCode.BAD_REQUEST),
    ({"dtype": "float32", "shape": [3], "values": [1, 2]}, "values has shape [2]",
     ErrorCode.BAD_REQUEST),
    ({"dtype": "float32", "shape": [1]}, "neither 'data'", ErrorCode.BAD_REQUEST),
    ("not a dict", "must be an object", ErrorCode.BAD_REQUEST),
])
def test_malformed_arrays_raise_an_error_that_names_the_field(encoded: object, fragment: str,
                                                               code: ErrorCode) -> None:
    with pytest.raises(WireFormatError, match="sample") as caught:
        decode_array(encoded, what="sample")  # type: ignore[arg-type]
    assert fragment in str(caught.value)
    assert caught.value.code is code


def test_encoding_a_dtype_without_a_wire_form_is_refused() -> None:
    with pytest.raises(WireFormatError, match="complex128"):
        encode_array(np.zeros(2, dtype=np.complex128))


def test_non_numeric_columns_travel_as_json_lists() -> None:
    zipmap = [{np.int64(0): np.float32(0.25), 1: 0.75}]
    wire = WireResult(job_id="j", model="m", status=JobStatus.SUCCEEDED, sample_ids=["0"],
                      sample_status=[SampleStatus.SUCCESS],
                      outputs={"p": encode_column(zipmap),
                               "names": encode_column(np.array(["a"], dtype=object))})
    stored = json.loads(celery_meta(wire))
    assert stored["status"] == "SUCCESS"
    assert stored["result"]["outputs"] == {"p": [{"0": 0.25, "1": 0.75}], "names": ["a"]}
    assert decode_column(["x"], what="c") == ["x"]


@given(hnp.arrays(dtype=st.sampled_from(sorted(WIRE_DTYPES)),
                  shape=hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=4)))
def test_any_array_round_trips(array: np.ndarray) -> None:
    decoded = decode_array(encode_array(array))
    np.testing.assert_array_equal(decoded, array)


@given(st.dictionaries(st.sampled_from(["dtype", "shape", "data", "values"]),
                       st.one_of(st.text(max_size=8), st.integers(), st.lists(st.integers()),
                                 st.none())))
def test_any_garbage_yields_an_array_or_a_wire_format_error(garbage: dict[str, object]) -> None:
    with contextlib.suppress(WireFormatError):
        decode_array(garbage)
