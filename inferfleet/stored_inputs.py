"""A big job's input bytes kept beside its message: raw, in one Redis string per job.

In a JSON message an array's bytes travel as base64 inside a string: 4/3 of the bytes, and
every process that handles the message parses all of them as JSON. A 64-sample job of
3x48x192 float32 images is a 9.4 MB message; orjson parsed it in 7.4 ms on this machine,
and a worker parsed it twice (kombu's envelope, then Celery's body): ~230 us of the
worker's ~1,750 us of CPU per sample. Redis wrote the message's bytes with the enqueue,
copied them into the unacked hash with the take, and wrote both to the AOF.

So `Client` keeps the arrays of a job of `INLINE_MAX_BYTES` or more apart: their raw
little-endian bytes, one after another (each at a multiple of `ALIGN`), in the string
`keys.job_inputs(job_id)`, written in the same atomic step as the message and the job's
record (`ledger._ENQUEUE`). Each array in the message says where its bytes are:

    {"dtype": "float32", "shape": [64, 3, 48, 192], "bytes_at": [0, 7077888]}

A worker reads the string in one round trip when it begins the job (`fetch`; one over
`max_message_bytes` is refused unread, as a message would be), views each array
on its bytes (`resolve`: no base64, no JSON, no copy), and the store of the job's terminal
result deletes it (`ledger._STORE_ONCE`); otherwise it expires with the job's record
(`result_ttl_s`). The message itself stays a Celery message of a few hundred bytes: the
take copies and the AOF writes only that.

Smaller jobs stay inline (`"data"`, base64): for them the extra round trip costs more than
the parse (`INLINE_MAX_BYTES`). Foreign clients send `"data"` or `"values"` as before; one
that writes the string beside its message, in this form, may send `"bytes_at"` too.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy.typing as npt
import pybase64
import redis

from inferfleet import keys
from inferfleet.codec import EncodedArray, is_encoded_array, little_endian
from inferfleet.errors import ErrorCode, WireFormatError
from inferfleet.wire import round_trip

#: A job whose arrays hold this many bytes or more keeps them apart. Measured per job,
#: kept apart against inline: a worker's `fetch` 47 against 11 us at 8 KiB, 51 against 40
#: at 32 KiB, 65 against 78 at 64 KiB (the JSON parsed twice, then the base64); the
#: client's submit 15-35 us cheaper at 32 KiB, Redis no dearer, and the take copies less.
INLINE_MAX_BYTES = 32 * 1024
#: Each array starts at a multiple of this in the string, so that its view is aligned for
#: every dtype (and for SIMD loads).
ALIGN = 64

BYTES_AT = "bytes_at"


class InputString:
    """One job's input string, built array by array (the producer's side)."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._size = 0

    def add(self, array: npt.NDArray[Any]) -> EncodedArray:
        """Append the array's bytes; its wire form, pointing at them.

        Raises:
            WireFormatError: if the dtype has no wire form.
        """
        name, little = little_endian(array)
        padding = -self._size % ALIGN
        if padding:
            self._parts.append(bytes(padding))
        offset = self._size + padding
        self._parts.append(little.tobytes())
        self._size = offset + little.nbytes
        return {"dtype": name, "shape": list(array.shape), BYTES_AT: [offset, little.nbytes]}

    def value(self) -> bytes:
        """The string to store at `keys.job_inputs(job_id)`."""
        return b"".join(self._parts)


def stored_apart(inputs: object) -> bool:
    """Whether any array of a request's `inputs` has its bytes in the job's input string."""
    return any(BYTES_AT in array for array in _arrays(inputs))


# KEYS: the input string. ARGV: the most bytes to read (0: no limit). Its length instead,
# if it is longer: a string over the limit is never sent to the worker.
_FETCH = """
local size = redis.call('STRLEN', KEYS[1])
if tonumber(ARGV[1]) > 0 and size > tonumber(ARGV[1]) then return size end
return redis.call('GET', KEYS[1])
"""


def fetch(client: redis.Redis, job_id: str, *, max_bytes: int = 0) -> bytes | None:
    """The job's input string, None if Redis holds none.

    Raises:
        WireFormatError: `too_large`, if it is over `max_bytes` (0: no limit); it is not
            read.
    """
    # Packed by hiredis on a pooled connection (`wire`): redis-py's `eval` cost a worker
    # 73 us of CPU a call, more than parsing a 32 KiB job's base64 twice (40 us).
    [value] = round_trip(client, [("EVAL", _FETCH, 1, keys.job_inputs(job_id), max_bytes)])
    if isinstance(value, Exception):
        raise value
    if isinstance(value, int):
        raise WireFormatError(
            f"the job's input string ({keys.job_inputs(job_id)}) holds {value} bytes, over "
            f"max_message_bytes={max_bytes}: submit fewer samples per job",
            code=ErrorCode.TOO_LARGE)
    return value  # type: ignore[no-any-return]


def resolve(inputs: object, value: bytes | None, job_id: str) -> None:
    """Give each array of `inputs` that points into the input string its bytes, in place:
    `"data"` becomes a view of `value` (what `codec.decode_array` reads without base64).

    Raises:
        WireFormatError: naming the array, if the string is missing or an array's
            `bytes_at` is not a range inside it.
    """
    view = memoryview(value) if value is not None else None
    for array in _arrays(inputs):
        if BYTES_AT not in array:
            continue
        where = array.pop(BYTES_AT)
        if view is None:
            raise WireFormatError(
                f"the job's inputs point into {keys.job_inputs(job_id)} ('bytes_at'), but "
                "Redis holds nothing there: it is deleted when the job's result is stored, "
                "expires after result_ttl_s, and a client that sends 'bytes_at' must write "
                "it with the message. Submit the job again")
        if not (isinstance(where, list) and len(where) == 2 and
                all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in where)
                and where[0] + where[1] <= len(view)):
            raise WireFormatError(
                f"bytes_at {str(where)[:60]} must be [offset, length] inside the job's input "
                f"string of {len(view)} bytes")
        array["data"] = view[where[0]:where[0] + where[1]]


def inline(inputs: object) -> None:
    """Turn each resolved array of `inputs` back into base64 `"data"`, in place: a message
    that needs no input string (a dead letter's replay copy, which runs under a new id)."""
    for array in _arrays(inputs):
        if isinstance(array.get("data"), bytes | memoryview):
            array["data"] = pybase64.b64encode_as_string(array["data"])


def _arrays(inputs: object) -> Iterator[dict[str, Any]]:
    """Every encoded array of a request's inputs, at the places the wire schema allows
    (one array, a list of them, or either per input name); anything else is left to
    `worker.jobs.decode_inputs` to refuse."""
    if isinstance(inputs, dict) and not is_encoded_array(inputs):
        columns: list[object] = list(inputs.values())
    else:
        columns = [inputs]
    for column in columns:
        for array in column if isinstance(column, list) else [column]:
            if isinstance(array, dict) and is_encoded_array(array):
                yield array
