"""Task messages for the Redis broker, pushed in the same pipeline as the job's ledger
record: one round trip per submit (and per chunk of `submit_many`) instead of two.

The headers and body are Celery's own (protocol 2, as `app.amqp.create_task_message` makes
them); the envelope is what kombu's Redis transport pushes (`virtual.Channel.prepare_message` then
`basic_publish` to the queue named by the routing key), with the body left as JSON text
(`body_encoding: null`, as `celery_app` configures kombu). Measured: kombu's publish path
cost ~300 us per message and a round trip of its own (`inferfleet bench`'s profile).

orjson writes the JSON: the standard library's encoder scans every character of a
string, and a 256-sample job's base64 input (87 KB) went through it twice, 180 us each
time, against 3 us with orjson.
"""

from __future__ import annotations

import os
from typing import Any

import orjson
from celery.utils.nodenames import anon_nodename

from inferfleet import keys


def task_envelope(job_id: str, queue: str, kwargs: dict[str, Any], kwargsrepr: str,
                  shadow: str | None = None,
                  trace_headers: dict[str, str] | None = None) -> bytes:
    """The serialised message (UTF-8 JSON) that makes a worker run
    `inferfleet.predict(**kwargs)`: Celery's protocol-2 headers and body exactly as
    `app.amqp.create_task_message` makes them for this task (a test holds the two
    equal), built here directly, since Celery's builder cost ~30 us of each submit's
    ~300. `shadow` is the name Flower and the events show (Celery's `shadow`);
    `trace_headers`, the job's trace context (`inferfleet.tracing`).

    Raises:
        TypeError: if `kwargs` holds something JSON cannot carry (orjson.JSONEncodeError).
    """
    headers: dict[str, Any] = {
        "lang": "py", "task": keys.TASK_NAME, "id": job_id, "shadow": shadow, "eta": None,
        "expires": None, "group": None, "group_index": None, "retries": 0,
        "timelimit": [None, None], "root_id": job_id, "parent_id": None, "argsrepr": "()",
        "kwargsrepr": kwargsrepr, "origin": _origin(), "ignore_result": True,
        "replaced_task_nesting": 0, "stamped_headers": None, "stamps": {},
    }
    if trace_headers:
        headers.update(trace_headers)
    body = ((), kwargs, _NO_CALLBACKS)
    return orjson.dumps({
        "body": orjson.dumps(body).decode(),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": headers,
        "properties": {
            "correlation_id": job_id, "reply_to": "",
            "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": queue},
            "priority": 0,
            "body_encoding": None,
            # kombu's field; the worker's take gives every message a tag of its own.
            "delivery_tag": job_id,
        },
    })


def shown_name(model: str) -> str:
    """The task name a job of `model` shows in Flower and its events: the model in it, so
    that Flower's list tells models apart (Celery's `shadow` name; routing still goes by
    the task name)."""
    return f"{keys.TASK_NAME}[{model}]"


def _origin() -> str:
    """What Celery puts in a message's `origin` header: this process's node name (made
    once per process)."""
    pid = os.getpid()
    if _ORIGINS.get("pid") != pid:
        _ORIGINS.update(pid=pid, name=anon_nodename())
    return str(_ORIGINS["name"])


_ORIGINS: dict[str, object] = {}
_NO_CALLBACKS = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
