"""Logging for every inferfleet process: text, or one JSON object per line.

Records made while a worker thread runs a job carry that job's id, session id and model
(`job_context`); records about a batch carry its `batch_id` (passed as `extra`). The JSON
form puts them in fields of their own, for log pipelines to index.
"""

from __future__ import annotations

import contextvars
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

#: The job a thread is running: job_id, session_id, model.
_JOB: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar(
    "inferfleet_job", default=None)
#: Fields a record may carry that the JSON form keeps.
CONTEXT_FIELDS = ("job_id", "session_id", "model", "batch_id")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


@contextmanager
def job_context(job_id: str, request: dict[str, Any]) -> Iterator[None]:
    """Tag the records made in this thread while the job runs."""
    fields = {"job_id": job_id}
    for name in ("session_id", "model"):
        value = request.get(name)
        if isinstance(value, str):
            fields[name] = value[:128]
    token = _JOB.set(fields)
    try:
        yield
    finally:
        _JOB.reset(token)


class _JobFields(logging.Filter):
    """Copies the running job's fields onto each record (never overriding `extra`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, value in (_JOB.get() or {}).items():
            if not hasattr(record, name):
                setattr(record, name, value)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, the job's fields, and
    the exception (formatted) if there is one."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname, "logger": record.name,
            "message": record.getMessage(), "process": record.process,
        }
        entry.update({name: getattr(record, name) for name in CONTEXT_FIELDS
                      if getattr(record, name, None) is not None})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure(level: str | int, *, json_lines: bool) -> None:
    """Send every record of this process to stderr, as text or JSON lines."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if json_lines else logging.Formatter(TEXT_FORMAT))
    handler.addFilter(_JobFields())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(True)  # warnings are records too, in the same form
