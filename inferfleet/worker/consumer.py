"""Celery's consumer, publishing task events at most every `EVENT_FLUSH_S`, and never
stopped by a message it cannot handle.

Celery buffers task events and publishes each buffer as one `task.multi` message, but it
flushes on the event loop's next turn after any event: about one PUBLISH per job (three
events each), ~17% of a worker's CPU on single-sample jobs (py-spy), and inline, in a pool
thread, whenever 24 are buffered. Gathering them for up to `EVENT_FLUSH_S` sends every
job's events still, in far fewer messages; Flower sees them that much later.

Celery's task handler lets any error other than a decode or invalid-task error out of the
event loop, which ends the worker (`Unrecoverable error`). The transport admits only
messages that follow the task-message contract (`inferfleet.admission`); should one still
make Celery raise, it is dead-lettered with the error and acked, and the worker goes on.

The Celery methods overridden here are listed, with every other internal the worker
hooks into, in `inferfleet.upstream`.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import orjson
from celery.worker.consumer import Consumer as CeleryConsumer

from inferfleet.admission import job_id_of

logger = logging.getLogger(__name__)

#: What `worker_consumer` names to use this consumer.
CONSUMER_PATH = "inferfleet.worker.consumer:Consumer"


class Consumer(CeleryConsumer):
    """A Celery consumer whose event flushes wait up to `EVENT_FLUSH_S` for company."""

    #: How long a task event may wait to be published with others. At 10 ms a worker
    #: published ~25 events a message under single-sample load; at 50 ms, ~125: 12% less
    #: worker CPU per job (alternating A/B runs, BENCHMARKS.md), Flower a little later.
    EVENT_FLUSH_S = 0.05
    #: Events buffered before a pool thread publishes them itself, at once (Celery's 24
    #: made most publishes happen inline, in whichever job's thread sent the 24th).
    EVENT_BUFFER_LIMIT = 1000

    # Set by Celery's Consumer; celery-types does not declare them.
    hub: Any
    event_dispatcher: Any
    connection_errors: tuple[type[BaseException], ...]

    _last_event_flush = 0.0
    _timed_flush_due = 0.0

    def update_strategies(self) -> None:
        # Runs after the events step made this connection's dispatcher.
        super().update_strategies()
        if self.event_dispatcher is not None:
            self.event_dispatcher.buffer_limit = self.EVENT_BUFFER_LIMIT

    def create_task_handler(self, *args: Any, **kwargs: Any) -> Any:
        handle = super().create_task_handler(*args, **kwargs)
        connection_errors = tuple(self.connection_errors)

        def on_task_received(message: Any) -> None:
            try:
                handle(message)
            except connection_errors:
                raise  # the consumer reconnects, and kombu puts the message back
            except Exception as exc:  # a message must never stop the worker
                _dead_letter_unhandled(message, exc)

        return on_task_received

    def on_send_event_buffered(self) -> None:  # type: ignore[override]  # stubs: Callable
        """Called in whichever thread buffered an event (pool and finisher threads
        mostly): Celery wakes the event loop to flush. With a timed flush still to come,
        the event waits for it without the wake-up, a loop turn each.

        No event is left behind: the timer clears `_timed_flush_due` before it flushes,
        so an event buffered after the flush took its copy sees no timer, and wakes the
        loop as Celery would; so does one buffered after a timer was lost (its time
        passed unfired: the hub was reset with the connection)."""
        if self._timed_flush_due > time.monotonic():
            return
        super().on_send_event_buffered()

    def _flush_events(self) -> None:
        # Runs in the event loop's thread (the hub's ready set or its timer).
        now = time.monotonic()
        wait_s = self._last_event_flush + self.EVENT_FLUSH_S - now
        if wait_s > 0 and self.hub is not None:
            # One timer at a time; one whose time has passed unfired (the hub was reset
            # with the connection) is replaced, so no event waits for the next one.
            if now >= self._timed_flush_due:
                self._timed_flush_due = now + wait_s
                self.hub.call_later(wait_s, self._timed_flush)
            return
        self._last_event_flush = now
        super()._flush_events()  # type: ignore[misc]  # untyped

    def _timed_flush(self) -> None:
        self._timed_flush_due = 0.0
        self._last_event_flush = time.monotonic()
        super()._flush_events()  # type: ignore[misc]  # untyped

    def stop(self) -> None:
        self._flush_now()
        super().stop()

    def shutdown(self) -> None:
        self._flush_now()
        super().shutdown()

    def _flush_now(self, *_: Any) -> None:
        """Publish what waits in the buffer: the worker is stopping."""
        if self.event_dispatcher is not None:
            try:
                super()._flush_events()  # type: ignore[misc]  # untyped
            except Exception:  # stopping anyway: Celery would drop them the same way
                logger.warning("task events not published at shutdown", exc_info=True)


def _dead_letter_unhandled(message: Any, exc: Exception) -> None:
    """Dead-letter a message Celery raised on (with a result for the job it names), and
    ack it so that it is never delivered again."""
    logger.exception("dead-lettered a message Celery could not handle")
    envelope = message.serializable()
    headers = envelope.get("headers") or {}
    message.channel.dead_letter(
        queue=str((message.delivery_info or {}).get("routing_key")),
        reason=f"Celery could not handle it: {type(exc).__name__}: {exc}",
        raw=orjson.dumps(envelope, default=str), job_id=job_id_of(headers))
    message.ack()
