"""Arrays on the wire: dtype + shape + base64 of the raw little-endian C-order bytes.

    {"dtype": "float32", "shape": [2, 64], "data": "<base64>"}

A big job's arrays say `"bytes_at"` instead: their raw bytes are kept beside the message
(`inferfleet.stored_inputs`), and the worker puts a view of them in `"data"` before decoding.

Clients that cannot produce raw bytes may send `"values"` (nested JSON lists) instead of
`"data"`; the array must still match the declared dtype and shape. Columns that are not
numeric tensors (string labels, skl2onnx ZipMap dictionaries) travel as plain JSON lists.

Base64 goes through pybase64 (SIMD): for a 256 x 64 float32 job the standard library took
200 us to decode and 72 us to encode, pybase64 4 us each, on every job a worker takes and
every result a client reads.
"""

from __future__ import annotations

import binascii
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson
import pybase64
from pydantic import BaseModel

from inferfleet.errors import ErrorCode, WireFormatError

#: Every dtype an array may have on the wire.
WIRE_DTYPES = frozenset(
    ["bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
     "float16", "float32", "float64"]
)

EncodedArray = dict[str, Any]

#: Each wire dtype's name by dtype: numpy's `dtype.name` is computed in Python on every
#: read (~8 us; a single-sample result encodes three arrays).
_WIRE_NAMES = {np.dtype(name): name for name in WIRE_DTYPES}


def _wire_name(dtype: np.dtype[Any]) -> str | None:
    """The wire name of `dtype` (any byte order), None if it has no wire form."""
    name = _WIRE_NAMES.get(dtype)
    if name is None and dtype.name in WIRE_DTYPES:  # not in native byte order
        name = dtype.name
    return name


def is_encoded_array(value: Mapping[str, Any]) -> bool:
    """Whether a JSON object is an encoded array (it names a dtype and a shape), not a
    mapping of input names."""
    return "dtype" in value and "shape" in value


def little_endian(array: npt.NDArray[Any]) -> tuple[str, npt.NDArray[Any]]:
    """The wire name of the array's dtype, and the array as the wire holds its bytes
    (little-endian, C order; no copy when it is so already).

    Raises:
        WireFormatError: if the dtype has no wire form (strings, objects, complex).
    """
    name = _wire_name(array.dtype)
    if name is None:
        raise WireFormatError(f"dtype {array.dtype.name!r} cannot travel as an array; use "
                              f"one of {sorted(WIRE_DTYPES)}", code=ErrorCode.BAD_DTYPE)
    return name, array.astype(array.dtype.newbyteorder("<"), order="C", copy=False)


def encode_array(array: npt.NDArray[Any]) -> EncodedArray:
    """The wire form of a numeric array, its bytes inline (base64).

    Raises:
        WireFormatError: if the dtype has no wire form (strings, objects, complex).
    """
    name, little = little_endian(array)
    return {
        "dtype": name,
        "shape": list(array.shape),
        "data": pybase64.b64encode_as_string(little.tobytes()),
    }


def decode_array(encoded: Mapping[str, Any], *, what: str = "array") -> npt.NDArray[Any]:
    """The array an `encode_array` dict (or a `values` dict) stands for.

    Raises:
        WireFormatError: naming `what` and the field that is wrong.
    """
    if not isinstance(encoded, Mapping):
        raise WireFormatError(f"{what} must be an object with dtype, shape and data, "
                              f"got {type(encoded).__name__}")
    dtype = _wire_dtype(encoded.get("dtype"), what)
    shape = _wire_shape(encoded.get("shape"), what)
    if "data" in encoded:
        return _from_base64(encoded["data"], dtype, shape, what)
    if "values" in encoded:
        return _from_values(encoded["values"], dtype, shape, what)
    raise WireFormatError(f"{what} has neither 'data' (base64) nor 'values' (JSON lists)")


def _wire_dtype(value: object, what: str) -> np.dtype[Any]:
    if not isinstance(value, str) or value not in WIRE_DTYPES:
        raise WireFormatError(f"{what}.dtype {value!r} is not one of {sorted(WIRE_DTYPES)}",
                              code=ErrorCode.BAD_DTYPE)
    return np.dtype(value).newbyteorder("<")


def _wire_shape(value: object, what: str) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in value
    ):
        raise WireFormatError(f"{what}.shape {value!r} must be a list of non-negative ints")
    return tuple(value)


def _from_base64(
    data: object, dtype: np.dtype[Any], shape: tuple[int, ...], what: str
) -> npt.NDArray[Any]:
    """The array of base64 `data`, or of raw bytes already read (a view of a job's input
    string, `inferfleet.stored_inputs`: JSON never holds bytes)."""
    if isinstance(data, bytes | memoryview):
        raw: bytes | memoryview = data
    elif not isinstance(data, str):
        raise WireFormatError(f"{what}.data must be a base64 string, got {type(data).__name__}")
    else:
        try:
            raw = pybase64.b64decode(data, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise WireFormatError(f"{what}.data is not valid base64 (the standard alphabet, "
                                  f"'='-padded to a multiple of 4 characters): {exc}") from exc
    expected = math.prod(shape) * dtype.itemsize
    if len(raw) != expected:
        raise WireFormatError(
            f"{what}.data holds {len(raw)} bytes, but dtype {dtype.name} and shape "
            f"{list(shape)} need {expected}"
        )
    array = np.frombuffer(raw, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="),
                                                                  copy=False)
    # A view at an offset no multiple of the itemsize (a foreign input string's): copied
    # once, so that nothing downstream reads unaligned elements.
    return array if array.flags.aligned else array.copy()


def _from_values(
    values: object, dtype: np.dtype[Any], shape: tuple[int, ...], what: str
) -> npt.NDArray[Any]:
    try:
        array = np.asarray(values, dtype=dtype.newbyteorder("="))
    except (TypeError, ValueError, OverflowError) as exc:
        raise WireFormatError(f"{what}.values cannot be read as {dtype.name}: {exc}") from exc
    if array.shape != shape:
        raise WireFormatError(
            f"{what}.values has shape {list(array.shape)}, but shape says {list(shape)}"
        )
    return array


def encode_column(column: object) -> EncodedArray | list[Any]:
    """The wire form of one output column: an encoded array when numeric, else a list.

    Lists are passed through as they are (ONNX Runtime and postprocessing give JSON-ready
    values); whatever numpy values remain inside are converted by `json_fallback` when the
    result is serialised, so no per-element walk happens here.
    """
    if isinstance(column, np.ndarray):
        if _wire_name(column.dtype) is not None:
            return encode_array(column)
        return column.tolist()  # type: ignore[no-any-return]
    return column if isinstance(column, list) else list(column)  # type: ignore[call-overload]


def decode_column(column: object, *, what: str) -> npt.NDArray[Any] | list[Any]:
    """The column `encode_column` wrote: an array for encoded arrays, a list otherwise.

    Raises:
        WireFormatError: if the column is neither.
    """
    if isinstance(column, list):
        return column
    if isinstance(column, Mapping):
        return decode_array(column, what=what)
    raise WireFormatError(f"{what} must be an encoded array or a list")


def json_fallback(item: object) -> Any:
    """JSON for the numpy values and bytes a model's list outputs may hold.

    Raises:
        TypeError: for anything else, as `json.dumps` would.
    """
    if isinstance(item, np.ndarray):
        return item.tolist()
    if isinstance(item, np.generic):
        return item.item()
    if isinstance(item, bytes):
        return item.decode("utf-8", "replace")
    raise TypeError(f"{type(item).__name__} is not JSON serialisable")


def wire_json(model: BaseModel) -> str:
    """The JSON of a wire model (a `WireResult`): byte for byte what pydantic's
    `model.model_dump_json(fallback=json_fallback)` writes (a property test holds them
    equal), but written by orjson from the model's fields. Bytes that are not UTF-8,
    which pydantic refuses, are written as `json_fallback` says (with U+FFFD).

    pydantic's serializer infers the type of every element of an `Any` column: for a
    256-sample digits result, with its top-3 label lists, it took 92 us, orjson 23 us; a
    one-sample result, 7.7 us against 1.4. Whatever orjson refuses (an integer beyond 64
    bits, a lone surrogate) goes to pydantic, which decides as before.
    """
    try:
        return orjson.dumps(model, default=_wire_default).decode()
    except orjson.JSONEncodeError:
        return model.model_dump_json(fallback=json_fallback)


def _wire_default(item: object) -> Any:
    """orjson's `default`: a nested model as its fields (in field order, as pydantic
    writes them), else `json_fallback`."""
    if isinstance(item, BaseModel):
        return item.__dict__
    return json_fallback(item)
