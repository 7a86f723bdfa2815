"""One delivery of a job's message to a worker process, as the lean path or the task got
it, and the jobs this process is running (so that a second delivery of a running job
waits for the first)."""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from inferfleet.liveness import TAKEN_AT
from inferfleet.take import TAKEN_PRIORITY


class InFlightJobs:
    """The job ids this process is running. When Redis drops a connection, kombu puts
    the messages it held back in the queue at once, while their jobs still run here: the
    second delivery of a job waits for the first instead of computing it again."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: dict[str, threading.Event] = {}

    def begin(self, job_id: str) -> threading.Event | None:
        """Claim `job_id`; None if claimed, else the event set when its runner ends."""
        with self._lock:
            running = self._running.get(job_id)
            if running is None:
                self._running[job_id] = threading.Event()
            return running

    def end(self, job_id: str) -> None:
        with self._lock:
            self._running.pop(job_id).set()

    def claimed(self, job_id: str) -> bool:
        return job_id in self._running


@dataclass(frozen=True)
class Delivery:
    """One delivery of a job's message to this process, as the task got it."""

    job_id: str
    kwargs: dict[str, Any]
    positional_args: int = 0
    #: Delivered before (kombu's flag: its worker died, or its connection dropped).
    redelivered: bool = False
    #: When the message was first taken (its deadline is checked against this), if known.
    taken_at: float | None = None
    #: The transport's delivery tag (None when not run through a worker's transport).
    tag: str | None = None
    #: The message's headers, as sent (the trace context rides in them).
    headers: Mapping[str, Any] = field(default_factory=dict)
    #: The priority whose list the message was taken from (`normal` when not known).
    priority: str = "normal"

    @classmethod
    def of(cls, job_id: str, args: Sequence[Any], kwargs: object, *,
           properties: Mapping[str, Any], delivery_info: Mapping[str, Any] | None,
           headers: Mapping[str, Any] | None = None) -> Delivery:
        """The delivery a message's fields describe (the take's properties carry its
        delivery tag and first-taken time; kombu's delivery info, the redelivered flag)."""
        taken_at = properties.get(TAKEN_AT)
        tag = properties.get("delivery_tag")
        return cls(job_id=job_id, kwargs=kwargs if isinstance(kwargs, dict) else {},
                   positional_args=len(args),
                   redelivered=bool((delivery_info or {}).get("redelivered")),
                   taken_at=float(taken_at) if isinstance(taken_at, int | float) else None,
                   tag=tag if isinstance(tag, str) else None,
                   headers=headers if isinstance(headers, Mapping) else {},
                   priority=str(properties.get(TAKEN_PRIORITY) or "normal"))
