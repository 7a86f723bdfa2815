import base64
import contextlib
import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from inferfleet.codec import (
    WIRE_DTYPES,
    decode_array,
    decode_column,
    encode_array,
    encode_column,
    json_fallback,
    wire_json,
)
from inferfleet.errors import ErrorCode, WireFormatError
from inferfleet.ledger import celery_meta, payload_of
from inferfleet.schemas import (
    ErrorInfo,
    JobStatus,
    JobTimings,
    SampleError,
    SampleStatus,
    WireResult,
)


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


# What a result's list columns may hold: JSON values, the numpy values and bytes a model's
# outputs leave in them, and what orjson refuses (ints past 64 bits, numpy dict keys).
_float = st.floats(allow_nan=True, allow_infinity=True)
_leaf = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), _float,
                  st.text(max_size=5), st.binary(max_size=4),
                  st.floats(width=32).map(np.float32), st.integers(-99, 99).map(np.int64),
                  hnp.arrays(np.float32, st.integers(0, 3)))
_column_value = st.recursive(_leaf, lambda inner: st.one_of(
    st.lists(inner, max_size=3),
    st.dictionaries(st.one_of(st.text(max_size=3), st.integers(0, 3).map(np.int64)), inner,
                    max_size=3)), max_leaves=10)
_wire_results = st.builds(
    WireResult, job_id=st.text(min_size=1, max_size=8), model=st.text(max_size=8),
    model_version=st.one_of(st.none(), st.text(max_size=4)),
    session_id=st.one_of(st.none(), st.text(max_size=4)), status=st.sampled_from(JobStatus),
    sample_ids=st.lists(st.text(max_size=4), max_size=4),
    sample_status=st.lists(st.sampled_from(SampleStatus), max_size=4),
    outputs=st.dictionaries(st.text(max_size=4), st.one_of(
        _column_value, hnp.arrays(st.sampled_from(["float32", "int64", "uint8"]),
                                  st.integers(0, 3)).map(encode_column)), max_size=3),
    errors=st.lists(st.builds(SampleError, code=st.sampled_from(ErrorCode),
                              message=st.text(max_size=8), index=st.integers(0, 9)), max_size=2),
    error=st.one_of(st.none(), st.builds(ErrorInfo, code=st.sampled_from(ErrorCode),
                                         message=st.text(max_size=8))),
    latency_ms=st.one_of(st.none(), _float),
    timings=st.builds(JobTimings, queued_ms=st.one_of(st.none(), _float)),
    batch_ids=st.lists(st.text(max_size=4), max_size=2),
    cache_hits=st.lists(st.integers(0, 9), max_size=2))


def test_a_stored_meta_reads_back_with_nan_and_integers_past_64_bits() -> None:
    wire = WireResult(job_id="j", model="m", status=JobStatus.SUCCEEDED, sample_ids=["0"],
                      sample_status=[SampleStatus.SUCCESS], latency_ms=1.5)
    assert payload_of(celery_meta(wire)) == json.loads(wire.model_dump_json())
    # Celery's own JSON writes NaN and integers past 64 bits (orjson refuses both).
    assert payload_of(b'{"result": {"a": NaN, "b": 123456789012345678901234}}')["b"] == \
        123456789012345678901234
    assert payload_of(b'{"status": "FAILURE", "result": "boom"}') == {}


def test_labels_read_back_share_one_string_each() -> None:
    # A client keeps every result it reads: one-character labels must not cost a string
    # each (orjson made one per label, 2.8x the memory of a kept digits result).
    meta = json.dumps({"result": {"outputs": {"label": [str(i % 10) for i in range(50)]}}})
    labels = payload_of(meta)["outputs"]["label"]
    assert len({id(label) for label in labels}) == 10


@given(_wire_results)
def test_a_results_json_is_what_pydantic_writes(result: WireResult) -> None:
    try:
        expected = result.model_dump_json(fallback=json_fallback)
    except Exception:  # pydantic refuses bytes that are not UTF-8; json_fallback does not
        try:
            written = wire_json(result)
        except Exception:  # refused by both is fine too
            return
        json.loads(written)
        return
    assert wire_json(result) == expected


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
