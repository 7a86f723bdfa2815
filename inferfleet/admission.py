"""What a message must be before a worker hands it to Celery: the admission rules.

Celery assumes every message on a task queue is a well-formed protocol-2 task message.
One that is not can stop a worker for good: a body of `{"a": 1}` made Celery's
`Request` raise while unpacking `[args, kwargs, embed]` inside the consumer's event loop
(`Unrecoverable error`, exit), and the restored message then killed the next worker too.
Headers of the wrong type, a task name that is not a string, or a missing id did the same
further along. So every message a worker takes is checked here first, all of it, and one
that breaks a rule is refused with the rule it broke, to be dead-lettered (with a
`dead_lettered` result for the job it names, when it names one that can hold a result).

The body is decoded here, once (orjson), and handed on decoded: Celery would otherwise
decode it again with the standard library's JSON.

Pure: no Redis, no Celery. `admit` never raises.
"""

from __future__ import annotations

import binascii
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
import pybase64

from inferfleet.schemas import JOB_ID_PATTERN

ACCEPTED_CONTENT = "application/json"
_JOB_ID = re.compile(JOB_ID_PATTERN)


@dataclass(frozen=True)
class Admitted:
    """A message a worker may take: its envelope, and for a task message its decoded
    `[args, kwargs, embed]` body (None for other messages, such as control replies)."""

    envelope: dict[str, Any]
    body: list[Any] | None


@dataclass(frozen=True)
class Refused:
    """A message no worker can take: the rule it broke, and the job id it names (None when
    it names none that a result could be stored under)."""

    reason: str
    job_id: str | None


def admit(raw: bytes | str, *, max_bytes: int = 0,
          tasks: frozenset[str] | None = None) -> Admitted | Refused:
    """Check one message as popped from a queue.

    With `tasks` given, the message must be a JSON protocol-2 Celery task message for one
    of those task names, headers and body included; without it (a plain kombu consumer),
    only the envelope is checked. Messages over `max_bytes` (0: no limit) are refused
    unread.
    """
    try:
        envelope = orjson.loads(raw)
    except ValueError as exc:  # orjson.JSONDecodeError: bad UTF-8 and deep nesting too
        return Refused(f"not a JSON message: {exc}", None)
    headers = envelope.get("headers") if isinstance(envelope, dict) else None
    headers = headers if isinstance(headers, dict) else {}
    job_id = job_id_of(headers)
    if max_bytes and len(raw) > max_bytes:
        return Refused(f"message of {len(raw)} bytes is over max_message_bytes={max_bytes}",
                       job_id)
    problem = _envelope_problem(envelope)
    if problem is not None:
        return Refused(problem, job_id)
    if tasks is None:
        return _admit_any(envelope, headers, job_id)
    problem = _task_headers_problem(headers, tasks)
    if problem is not None:
        return Refused(problem, job_id)
    body, problem = _task_body(envelope)
    if problem is not None:
        return Refused(problem, job_id)
    return Admitted(envelope, body)


def _admit_any(envelope: dict[str, Any], headers: dict[str, Any],
               job_id: str | None) -> Admitted | Refused:
    content_type = envelope.get("content-type")
    if headers.get("task") and content_type != ACCEPTED_CONTENT:
        return Refused(_content_type_reason(content_type), job_id)
    return Admitted(envelope, None)


def _content_type_reason(content_type: object) -> str:
    return f"content type {content_type!r} is refused; only {ACCEPTED_CONTENT} is accepted"


def job_id_of(headers: Mapping[str, Any]) -> str | None:
    """The message's job id, if it is one a result can be stored under."""
    job_id = headers.get("id")
    return job_id if isinstance(job_id, str) and _JOB_ID.fullmatch(job_id) else None


def _envelope_problem(envelope: object) -> str | None:
    """Why `envelope` is not a kombu message envelope kombu itself can read."""
    if not isinstance(envelope, dict) or not isinstance(envelope.get("properties"), dict) \
            or "body" not in envelope:
        return "not a kombu message envelope"
    properties = envelope["properties"]
    for name, check in _PROPERTY_TYPES.items():
        if name in properties and not check(properties[name]):
            return f"not a kombu message envelope: properties.{name} is {properties[name]!r}"
    if "headers" in envelope and not isinstance(envelope["headers"], dict | None):
        return f"not a kombu message envelope: headers is a {type(envelope['headers']).__name__}"
    return None


def _is_str_or_none(value: object) -> bool:
    return value is None or isinstance(value, str)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number_or_none(value: object) -> bool:
    return value is None or (isinstance(value, int | float) and not isinstance(value, bool))


def _is_count_or_none(value: object) -> bool:
    return value is None or (_is_int(value) and value >= 0)  # type: ignore[operator]


def _is_int_or_none(value: object) -> bool:
    return value is None or _is_int(value)


def _is_priority_or_none(value: object) -> bool:
    return value is None or (_is_int(value) and 0 <= value <= 255)  # type: ignore[operator]


def _is_time_limits(value: object) -> bool:
    return value is None or (isinstance(value, list) and len(value) == 2
                             and all(_is_number_or_none(v) for v in value))


_PROPERTY_TYPES: dict[str, Callable[[object], bool]] = {
    "delivery_info": lambda v: v is None or isinstance(v, dict),
    "priority": _is_priority_or_none,
    "body_encoding": lambda v: v in (None, "base64"),
    "correlation_id": _is_str_or_none,
    "reply_to": _is_str_or_none,
}

#: Header types Celery's worker relies on (celery.worker.request, strategy and trace).
_HEADER_TYPES: dict[str, tuple[Callable[[object], bool], str]] = {
    "lang": (_is_str_or_none, "a string"),
    "shadow": (_is_str_or_none, "a string"),
    "root_id": (_is_str_or_none, "a string"),
    "parent_id": (_is_str_or_none, "a string"),
    "group": (_is_str_or_none, "a string"),
    "origin": (_is_str_or_none, "a string"),
    "argsrepr": (_is_str_or_none, "a string"),
    "kwargsrepr": (_is_str_or_none, "a string"),
    "retries": (_is_count_or_none, "a non-negative integer"),
    "group_index": (_is_int_or_none, "an integer"),
    "replaced_task_nesting": (_is_int_or_none, "an integer"),
    "ignore_result": (lambda v: v is None or isinstance(v, bool), "true or false"),
    "timelimit": (_is_time_limits, "[soft, hard] (numbers or null)"),
    "stamped_headers": (lambda v: v is None or isinstance(v, list), "a list"),
    "stamps": (lambda v: v is None or isinstance(v, dict), "an object"),
    # Jobs run as soon as a worker takes them: an ETA would hold a prefetch slot (and the
    # message) until then, and Celery's own expiry stores a state no inferfleet reader
    # knows. A job's `deadline_at` is what expires it.
    "eta": (lambda v: v is None, "null (inferfleet jobs do not wait for an ETA; a "
                                 "job's deadline_at ends it instead)"),
    "expires": (lambda v: v is None, "null (use the job's deadline_at)"),
}


def _task_headers_problem(headers: Mapping[str, Any], tasks: frozenset[str]) -> str | None:
    task = headers.get("task")
    if not isinstance(task, str):
        return f"not a task message: headers.task is {task!r}, not a task name"
    if task not in tasks:
        return f"unknown task {task[:100]!r}: this worker runs only {sorted(tasks)}"
    job_id = headers.get("id")
    if job_id_of(headers) is None:
        return (f"headers.id {_brief(job_id)} is not a job id (a string of 1-128 "
                "characters, none of them control characters)")
    for name, (check, wanted) in _HEADER_TYPES.items():
        if name in headers and not check(headers[name]):
            return f"headers.{name} must be {wanted}, got {_brief(headers[name])}"
    return None


def _task_body(envelope: dict[str, Any]) -> tuple[list[Any] | None, str | None]:
    """The decoded `[args, kwargs, embed]` of a task message, or why there is none."""
    content_type = envelope.get("content-type")
    if content_type != ACCEPTED_CONTENT:
        return None, _content_type_reason(content_type)
    if envelope.get("content-encoding") not in (None, "utf-8"):
        return None, (f"content encoding {envelope.get('content-encoding')!r} is refused; "
                      "JSON bodies are utf-8")
    text = envelope["body"]
    if not isinstance(text, str):
        return None, f"the body must be JSON text, got {type(text).__name__}"
    try:
        if envelope["properties"].get("body_encoding") == "base64":
            text = pybase64.b64decode(text, validate=True)
        body = orjson.loads(text)
    except (ValueError, binascii.Error) as exc:
        return None, f"the body is not JSON: {exc}"
    return _body_problem(body)


def _body_problem(body: object) -> tuple[list[Any] | None, str | None]:
    if not isinstance(body, list) or len(body) != 3:
        return None, ("the body must be Celery's [args, kwargs, embed] triple, got "
                      f"{_brief(body)}")
    args, kwargs, embed = body
    if not isinstance(args, list):
        return None, f"the body's args must be a list, got {_brief(args)}"
    if not isinstance(kwargs, dict):
        return None, f"the body's kwargs must be an object, got {_brief(kwargs)}"
    if embed is not None and not isinstance(embed, dict):
        return None, f"the body's embed must be an object or null, got {_brief(embed)}"
    for name, value in (embed or {}).items():
        wanted = dict if name == "chord" else list
        if value is not None and not isinstance(value, wanted):
            return None, (f"the body's embed.{name} must be "
                          f"{'an object' if wanted is dict else 'a list'} or null")
    return body, None


def _brief(value: object) -> str:
    if isinstance(value, list):
        return f"a list of {len(value)}"
    if isinstance(value, dict):
        return f"an object with keys {sorted(value)[:5]}"
    return repr(value)[:100]
