"""A grammar of task messages as anyone could push them onto a queue: a valid
`inferfleet.predict` envelope (Celery protocol 2, kombu's Redis form), then mutated at
any path of its envelope, headers, properties, body, kwargs and arrays. Used by the unit
tests of `inferfleet.admission` and by the live-worker drill."""

from __future__ import annotations

import base64
import copy
import json
import uuid
from typing import Any

from hypothesis import strategies as st

from inferfleet import keys

json_leaf = st.one_of(st.none(), st.booleans(), st.integers(-2**63, 2**64),
                      st.floats(allow_nan=False, allow_infinity=False),
                      st.sampled_from([0, -1, 1e308, 10**12, "", "inferfleet.predict",
                                       "digits", "float32", "AAAA"]),
                      st.text(max_size=8))
json_value = st.recursive(json_leaf, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=4)),
    max_leaves=10)

#: Where a mutation may land: (part, key); "body" paths index the decoded triple.
PATHS = [
    ("envelope", "body"), ("envelope", "content-type"), ("envelope", "content-encoding"),
    ("envelope", "headers"), ("envelope", "properties"),
    *(("headers", key) for key in ["task", "id", "lang", "shadow", "eta", "expires",
                                    "timelimit", "retries", "root_id", "parent_id", "group",
                                    "group_index", "argsrepr", "kwargsrepr", "ignore_result",
                                    "stamped_headers", "stamps", "replaced_task_nesting"]),
    *(("properties", key) for key in ["delivery_info", "priority", "body_encoding",
                                       "delivery_tag", "correlation_id", "reply_to"]),
    ("body", 0), ("body", 1), ("body", 2), ("body", "whole"),
    *(("kwargs", key) for key in ["v", "model", "model_version", "session_id", "inputs",
                                   "sample_ids", "submitted_at", "deadline_at", "notify"]),
    *(("array", key) for key in ["dtype", "shape", "data", "values"]),
    ("embed", "callbacks"), ("embed", "errbacks"), ("embed", "chain"), ("embed", "chord"),
]

mutation = st.tuples(st.sampled_from(PATHS), st.sampled_from(["set", "delete"]), json_value)
raw_text = st.one_of(st.text(max_size=20), st.sampled_from(
    ["{not json", '{"a": 1}', "5", "[" * 5000 + "]" * 5000, "[[], {}]", "null"]))


def valid_envelope(model: str = "digits", *, rows: int = 1) -> dict[str, Any]:
    """A job for `model` (64 float32 features a sample), as `Client.submit` would push it;
    the body stays decoded so that mutations can reach into it."""
    job_id = str(uuid.uuid4())
    data = base64.b64encode(bytes(4 * 64 * rows)).decode()
    kwargs = {"v": 1, "model": model, "inputs": {"dtype": "float32", "shape": [rows, 64],
                                                  "data": data}}
    return {
        "body": [[], kwargs, {"callbacks": None, "errbacks": None, "chain": None,
                              "chord": None}],
        "content-encoding": "utf-8", "content-type": "application/json",
        "headers": {"lang": "py", "task": keys.TASK_NAME, "id": job_id, "root_id": job_id,
                    "parent_id": None, "group": None, "retries": 0,
                    "timelimit": [None, None], "eta": None, "expires": None,
                    "argsrepr": "()", "kwargsrepr": "{}", "ignore_result": True},
        "properties": {"correlation_id": job_id, "reply_to": "", "delivery_mode": 2,
                       "delivery_info": {"exchange": "", "routing_key":
                                         keys.model_queue(model)},
                       "priority": 0, "body_encoding": None, "delivery_tag": "t"},
    }


def apply(envelope: dict[str, Any], mutations: list[tuple[tuple[str, Any], str, Any]],
          whole_body: str | None = None) -> bytes:
    """The envelope with `mutations` applied, serialised as it would sit in a queue (a
    `whole_body` text replaces the body's JSON)."""
    message = copy.deepcopy(envelope)
    for (part, key), op, value in mutations:
        if (part, key) == ("body", "whole"):
            message["body"] = value
            continue
        target = _part(message, part)
        if isinstance(target, dict):
            if op == "delete":
                target.pop(key, None)
            else:
                target[key] = value
        elif isinstance(target, list) and isinstance(key, int) and key < len(target):
            target[key] = value
    body = message.get("body")
    if whole_body is not None:
        message["body"] = whole_body
    elif not isinstance(body, str):
        message["body"] = json.dumps(body)
    return json.dumps(message).encode()


def _part(message: dict[str, Any], part: str) -> Any:
    body = message.get("body")
    kwargs = body[1] if isinstance(body, list) and len(body) > 1 else None
    embed = body[2] if isinstance(body, list) and len(body) > 2 else None
    inputs = kwargs.get("inputs") if isinstance(kwargs, dict) else None
    return {"envelope": message, "headers": message.get("headers"),
            "properties": message.get("properties"), "body": body, "kwargs": kwargs,
            "embed": embed, "array": inputs}[part]


hostile_message = st.builds(
    apply, st.builds(valid_envelope, rows=st.integers(1, 3)),
    st.lists(mutation, min_size=1, max_size=3),
    st.one_of(st.none(), st.none(), st.none(), raw_text))


def job_id_in(raw: bytes) -> str | None:
    """The job id a pushed message names, if it can be read at all."""
    try:
        headers = json.loads(raw).get("headers")
        job_id = headers.get("id")
    except (ValueError, AttributeError):
        return None
    return job_id if isinstance(job_id, str) else None
