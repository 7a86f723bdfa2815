"""kombu's Redis transport with two changes, both measured or seen to matter.

- One Redis client per channel instead of one per call: kombu's `conn_or_acquire` built a
  new `redis.Redis` (over the same pool) for every publish and every ack; in a worker that
  sends three task events and one ack per job that was ~9% of its CPU (py-spy).
- A message that is not a JSON envelope with JSON content does not reach Celery: kombu
  decodes the envelope inside its event loop, so `LPUSH queue "{not json"` made a worker
  exit (and the popped message was lost), and a pickle message was dropped by Celery with
  its id reading PENDING forever. Such messages go to the dead-letter list with the reason
  (and a terminal `dead_lettered` result for the job they name), and the worker goes on.

`_brpop_read` follows kombu 5.7's own; pyproject pins kombu below 5.8 for that reason.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cached_property
from queue import Empty
from typing import Any

from kombu.transport import redis as kombu_redis
from kombu.utils.encoding import bytes_to_str

from inferfleet.ledger import dead_letter

logger = logging.getLogger(__name__)

#: What `broker_transport` names to use this transport.
TRANSPORT_PATH = "inferfleet.transport:Transport"
ACCEPTED_CONTENT = "application/json"


class Channel(kombu_redis.Channel):
    """A kombu Redis channel that reuses one client and dead-letters unusable messages."""

    #: Messages above this many bytes are dead-lettered (0: no limit); set from the
    #: broker's transport options like kombu's own options.
    max_message_bytes = 0
    from_transport_options = (*kombu_redis.Channel.from_transport_options,
                              "max_message_bytes")

    @cached_property
    def _shared_client(self) -> Any:
        return self._create_client()  # type: ignore[attr-defined]

    @contextmanager
    def conn_or_acquire(self, client: Any = None) -> Iterator[Any]:
        yield client or self._shared_client

    def _brpop_read(self, **options: Any) -> bool:
        try:
            try:
                reply = self.client.parse_response(self.client.connection, "BRPOP", **options)
            except self.connection_errors:  # type: ignore[attr-defined]  # kombu internal
                # Disconnect, so that the next iteration reconnects (as kombu does).
                self.client.connection.disconnect()
                raise
            if not reply:
                raise Empty()
            dest, item = reply
            dest = bytes_to_str(dest).rsplit(self.sep, 1)[0]
            self._queue_cycle.rotate(dest)  # type: ignore[attr-defined]  # kombu internal
            message = self._usable(dest, item)
            if message is not None:
                self.connection._deliver(message, dest)
            return True
        finally:
            self._in_poll = None
            flush = getattr(self, "_flush_brpop_reauth", None)
            if flush is not None:
                flush()

    def _usable(self, queue: str, item: bytes) -> dict[str, Any] | None:
        """The decoded envelope, or None after dead-lettering a message no task can use."""
        problem, job_id, message = _problem_of(item, self.max_message_bytes)
        if problem is None:
            return message
        logger.error("dead-lettered a message from %s: %s", queue, problem)
        dead_letter(self._shared_client, queue=queue, reason=problem, raw=item, job_id=job_id)
        return None


def _problem_of(item: bytes, max_bytes: int
                ) -> tuple[str | None, str | None, dict[str, Any] | None]:
    """(why no task can use it or None, the job id it names, the decoded envelope)."""
    try:
        message = json.loads(bytes_to_str(item))
    except ValueError as exc:
        return f"not a JSON message: {exc}", None, None
    if max_bytes and len(item) > max_bytes:
        headers = message.get("headers") if isinstance(message, dict) else None
        job_id = headers.get("id") if isinstance(headers, dict) else None
        return (f"message of {len(item)} bytes is over max_message_bytes={max_bytes}",
                job_id if isinstance(job_id, str) else None, None)
    if not isinstance(message, dict) or not isinstance(message.get("properties"), dict) \
            or "body" not in message:
        return "not a kombu message envelope", None, None
    headers = message.get("headers")
    headers = headers if isinstance(headers, dict) else {}
    job_id = headers.get("id") if isinstance(headers.get("id"), str) else None
    content_type = message.get("content-type")
    if content_type != ACCEPTED_CONTENT and headers.get("task"):
        return (f"content type {content_type!r} is refused; only {ACCEPTED_CONTENT} is "
                "accepted", job_id, None)
    return None, job_id, message


class Transport(kombu_redis.Transport):
    """kombu's Redis transport with `Channel` above."""

    Channel = Channel
