"""A big job's input string: built by the producer, read back by the worker, bit for bit."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from inferfleet.codec import WIRE_DTYPES, decode_array
from inferfleet.errors import ErrorCode, WireFormatError
from inferfleet.producer.inputs import encode_inputs
from inferfleet.producer.messages import PUBLISH_CHUNK_BYTES, PUBLISH_CHUNK_JOBS, chunks
from inferfleet.stored_inputs import ALIGN, INLINE_MAX_BYTES, InputString, inline, resolve
from inferfleet.worker.jobs import count_samples

arrays = hnp.arrays(
    dtype=st.sampled_from(sorted(WIRE_DTYPES)).map(np.dtype)
    | st.sampled_from([">f4", ">i8", ">u2"]).map(np.dtype),  # big-endian: turned little
    shape=hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=5))


@settings(max_examples=200, deadline=None)
@given(st.lists(arrays, min_size=1, max_size=4))
def test_arrays_read_back_from_the_string_equal_what_was_added(added: list[Any]) -> None:
    string = InputString()
    encoded = [string.add(array) for array in added]
    value = string.value()
    inputs = {f"x{index}": item for index, item in enumerate(encoded)}
    resolve(inputs, value, "job-1")
    for index, array in enumerate(added):
        back = decode_array(inputs[f"x{index}"])
        assert back.shape == array.shape and back.dtype == array.dtype.newbyteorder("=")
        np.testing.assert_array_equal(back, array)
        assert back.flags.aligned
        assert inputs[f"x{index}"]["data"].nbytes == array.nbytes
    # Every array starts at a multiple of ALIGN; the copy with base64 reads the same.
    assert all(item["data"].obj is value for item in inputs.values())
    inline(inputs)
    for index, array in enumerate(added):
        assert isinstance(inputs[f"x{index}"]["data"], str)
        np.testing.assert_array_equal(decode_array(inputs[f"x{index}"]), array)


def test_each_array_starts_aligned_and_the_view_is_no_copy() -> None:
    string = InputString()
    first = string.add(np.arange(3, dtype=np.int8))
    second = string.add(np.ones((2, 5), np.float64))
    assert first["bytes_at"] == [0, 3] and second["bytes_at"] == [ALIGN, 80]
    value = string.value()
    inputs = [first, second]
    resolve(inputs, value, "job-1")
    view = decode_array(inputs[1])
    assert not view.flags.owndata and not view.flags.writeable  # on the GET's bytes


def test_a_view_at_an_unaligned_offset_is_copied_aligned() -> None:
    value = b"\0" + np.arange(4, dtype=np.float32).tobytes()
    inputs = {"dtype": "float32", "shape": [4], "bytes_at": [1, 16]}
    resolve(inputs, value, "job-1")
    array = decode_array(inputs)
    assert array.flags.aligned
    np.testing.assert_array_equal(array, np.arange(4, dtype=np.float32))


@pytest.mark.parametrize("where", [
    [0, 17], [16, 1], [-1, 4], [0], "0:16", [0.0, 16], [True, 4], None, [0, 4, 8],
])
def test_a_range_outside_the_string_or_not_a_range_is_refused_by_name(where: object) -> None:
    inputs = {"pixels": {"dtype": "float32", "shape": [4], "bytes_at": where}}
    with pytest.raises(WireFormatError, match=r"bytes_at .* must be \[offset, length\] "
                                              r"inside the job's input string of 16 bytes"):
        resolve(inputs, bytes(16), "job-1")


def test_a_missing_string_is_refused_with_its_key_and_what_to_do() -> None:
    inputs = [{"dtype": "float32", "shape": [4], "bytes_at": [0, 16]}]
    with pytest.raises(WireFormatError, match=r"inferfleet:inputs:job-9.*Submit the job again"):
        resolve(inputs, None, "job-9")


def test_arrays_inline_are_left_alone_and_need_no_string() -> None:
    inputs = {"a": {"dtype": "float32", "shape": [1], "data": "AACAPw=="},
              "b": [{"dtype": "int8", "shape": [2], "values": [1, 2]}]}
    resolve(inputs, None, "job-1")
    before = {"a": dict(inputs["a"]), "b": [dict(inputs["b"][0])]}
    inline(inputs)
    assert inputs == before and inputs["a"]["data"] == "AACAPw=="


def test_the_producer_keeps_only_big_jobs_apart() -> None:
    row_bytes = 64 * 4
    rows = INLINE_MAX_BYTES // row_bytes
    columns: dict[str | None, Any] = {None: np.ones((rows, 64), np.float32)}
    small, none = encode_inputs(columns, 0, rows - 1)
    assert none is None and "data" in small
    big, string = encode_inputs(columns, 0, rows)
    assert string is not None and big["bytes_at"] == [0, rows * row_bytes]
    # Per-sample arrays (a list) go into the string too, each aligned.
    ragged: dict[str | None, Any] = {"x": [np.ones(5000, np.float64), np.ones(3, np.int8)]}
    encoded, string = encode_inputs(ragged, 0, 2)
    assert string is not None
    assert [item["bytes_at"] for item in encoded["x"]] == [[0, 40000], [40000, 3]]


def test_a_resolved_job_reports_its_samples_when_it_fails_whole() -> None:
    string = InputString()
    request = {"inputs": string.add(np.zeros((7, 3), np.float32))}
    assert count_samples(request) == 0  # unresolved: no bytes seen, no samples claimed
    resolve(request["inputs"], string.value(), "job-1")
    assert count_samples(request) == 7
    request["inputs"]["shape"] = [8, 3]  # more than its bytes hold
    assert count_samples(request) == 0


def test_the_code_of_a_refusal_is_bad_request() -> None:
    with pytest.raises(WireFormatError) as refused:
        resolve({"dtype": "int8", "shape": [1], "bytes_at": [5, 1]}, b"", "job-1")
    assert refused.value.code is ErrorCode.BAD_REQUEST


def test_big_jobs_are_published_a_few_megabytes_a_round_trip() -> None:
    image = 3 * 48 * 192 * 4  # 110,592 bytes a sample
    sizes = [stop - start for start, stop in chunks(6400, 64, sample_bytes=image)]
    assert sizes == [64] * 100  # one 7 MB job a round trip, not 32 or 64 of them
    small = [stop - start for start, stop in chunks(256 * 200, 256, sample_bytes=256)]
    assert small[:5] == [256 * n for n in PUBLISH_CHUNK_JOBS]  # unchanged for small jobs
    assert sum(small) == 256 * 200
    assert all(
        (stop - start) * image <= PUBLISH_CHUNK_BYTES or stop - start == 100
        for start, stop in chunks(1000, 100, sample_bytes=image))


def test_a_taken_job_kept_apart_counts_its_claimed_rows_for_the_take_budget() -> None:
    # The take budget converts rows to messages: a big job counted as one row made a
    # worker take 16 of them ahead of a `high` job that came a moment later.
    request = {"inputs": InputString().add(np.zeros((64, 3), np.float32))}
    assert count_samples(request, stored_apart=True) == 64
    assert count_samples(request) == 0  # for a result: no bytes seen, no samples claimed
    request["inputs"]["bytes_at"] = [0, 64 * 3 * 4 - 1]  # claims less than the shape
    assert count_samples(request, stored_apart=True) == 0
    request["inputs"]["bytes_at"] = [0, True]
    assert count_samples(request, stored_apart=True) == 0
