"""The lean path of `inferfleet.predict`: a message goes from the consumer to the worker's
pool without Celery's per-task Request and tracer.

For every message Celery's default strategy builds a `Request`, reserves it, and runs the
task through its tracer, which accepts it, tracks its state, and sends its events and ack
from `on_accepted` and `on_success`: per single-sample job about half of a worker's CPU
(py-spy), more than the job's own decoding, batching and result write. `strategy` is
Celery's `Task.Strategy` hook (the one celery-batches uses). It hands the job to the
same pool (`--pool=threads`, bounded by `--concurrency`) and keeps every part of a job's
Celery life that users and Flower see (a job whose batch has not run when its pool thread
hands it to the batcher ends in the service's finisher thread, with the others of its
batch: `worker.finisher`):

- its `task-received`, `task-started` and `task-succeeded` events, with the fields Flower
  reads (`task-rejected` when Redis fails and it goes back to its queue);
- its ack, through the consumer's ack promise, only after its result is stored;
- a revoked job is not run: it ends `failed` with `revoked` and a `task-revoked` event
  (`install_revoke_command`: Celery's own would store a result of its own format there first);
- a warm shutdown waits for the jobs running (those handed to the finisher too:
  `worker.threads`) and gives back those not begun, as the pool does for any task
  (`restore_unacked` puts those back without counting a delivery).

What it leaves out: Celery's `task_received` signal, and the job in `inspect active` and
`inspect reserved` (the fleet's own `inferfleet status` and Flower's task list, which
read the events and results, show it).

The Celery hooks it relies on (the strategy's signature, the ack and reject promises,
the revoked set) are listed in `inferfleet.upstream`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis
from celery import Celery, Task
from celery.utils.functional import maybe_list
from celery.worker.control import control_command, ok  # type: ignore[attr-defined]

from inferfleet import keys, upstream
from inferfleet.ledger import sample_counts
from inferfleet.schemas import WireResult
from inferfleet.worker.delivery import Delivery
from inferfleet.worker.jobs import count_samples
from inferfleet.worker.service import InferenceService

logger = logging.getLogger(__name__)

#: What `Task.Strategy` names to take `inferfleet.predict` messages this way.
STRATEGY_PATH = "inferfleet.worker.intake:strategy"

#: How a job's run ends, for its events and its message.
Summary = dict[str, Any]


class ResultNotStoredError(Exception):
    """Redis failed while the job ran: its message goes back to its queue, not acked."""


@dataclass(frozen=True)
class TakenMessage:
    """What the lean path reads of one admitted task message (`inferfleet.admission`
    checked every field's type already)."""

    delivery: Delivery
    queue: str
    headers: dict[str, Any]

    @classmethod
    def of(cls, message: Any) -> TakenMessage:
        headers = message.headers
        args, kwargs, _embed = message.decode()  # decoded once at admission, then cached
        info = message.delivery_info or {}
        delivery = Delivery.of(str(headers["id"]), args, kwargs,
                               properties=message.properties, delivery_info=info,
                               headers=headers)
        return cls(delivery, str(info.get("routing_key") or ""), headers)

    def received_event(self) -> dict[str, Any]:
        """The fields of Celery's `task-received` event (Flower lists the job by them)."""
        headers = self.headers
        shadow = headers.get("shadow")
        return {"uuid": self.delivery.job_id,
                "name": shadow if isinstance(shadow, str) and shadow else keys.TASK_NAME,
                "args": headers.get("argsrepr"), "kwargs": headers.get("kwargsrepr"),
                "root_id": headers.get("root_id"), "parent_id": headers.get("parent_id"),
                "retries": headers.get("retries") or 0, "eta": None, "expires": None}


def run_job(service: InferenceService, delivery: Delivery) -> Summary:
    """Run one job to its stored result; its summary (the task's return value).

    Raises:
        ResultNotStoredError: if the result could not be stored: the message must go
            back to run again, never acked without a result.
    """
    over = threading.Event()
    endings: list[Summary | ResultNotStoredError] = []

    def ended(ending: Summary | ResultNotStoredError) -> None:
        endings.append(ending)
        over.set()

    start_job(service, delivery, ended)
    over.wait()
    if isinstance(endings[0], ResultNotStoredError):
        raise endings[0]
    return endings[0]


def start_job(service: InferenceService, delivery: Delivery,
              ended: Callable[[Summary | ResultNotStoredError], None]) -> None:
    """Run one job to its stored result; `ended` hears, exactly once and in whichever
    thread ends the job, its summary, or a `ResultNotStoredError` if the result could
    not be stored (the message must go back to run again, never acked without one)."""
    told = False

    def finished(result: WireResult | None, error: BaseException | None) -> None:
        nonlocal told
        if told:
            return
        told = True
        if error is not None and not isinstance(error, redis.RedisError):
            logger.error("job %s failed unexpectedly", delivery.job_id, exc_info=error)
            try:  # every job must end: a bug still gets a result
                result = service.fail(delivery.job_id, delivery.kwargs, error)
                error = None
            except redis.RedisError as exc:
                error = exc
        if error is not None:
            logger.warning("job %s: Redis failed (%s); requeued", delivery.job_id, error)
            ended(ResultNotStoredError(f"Redis failed: {error}"))
            return
        ended(_summary(result))

    try:
        service.begin(delivery, finished)
    except Exception as exc:  # it ended before `finished` was called
        finished(None, exc)


def _summary(result: WireResult | None) -> Summary:
    if result is None:
        return {"status": "not_held"}
    counts = sample_counts(result)  # from the errors, no walk over every sample
    failed = counts["failure"] + counts["expired"]
    return {"status": result.status.value, "samples": len(result.sample_ids),
            "failed": failed}


Promise = Callable[..., Any]


def strategy(task: Task[Any, Any], app: Celery, consumer: Any, **_: Any
             ) -> Callable[..., None]:
    """Celery's `Task.Strategy` for `inferfleet.predict`: the consumer calls the handler
    it returns for every message of the task, in its event loop's thread."""
    service: InferenceService = task.service  # type: ignore[attr-defined]  # set at creation
    service.consumer_started(consumer)
    taken = service.taken
    pool = consumer.pool
    errors = tuple(consumer.connection_errors)
    revoked = upstream.revoked_job_ids()
    dispatcher = consumer.event_dispatcher
    send = dispatcher.send if dispatcher is not None and dispatcher.enabled and \
        task.send_events else None

    def run(message: TakenMessage, ack: Promise, reject: Promise) -> None:
        """In a pool thread: begin the job; it ends here, or in the service's finisher
        once its batch ran."""
        taken.began(message.queue)
        job_id = message.delivery.job_id
        ended = _ending(job_id, ack, reject, errors, send)
        try:
            if send is not None:
                send("task-started", uuid=job_id)
            start_job(service, message.delivery, ended)
        except BaseException:  # the pool drops what a job raises: say it, at least
            logger.exception("job %s: its run raised", job_id)
            raise

    def on_message(message: Any, _body: Any, ack: Promise, reject: Promise,
                   _callbacks: Any) -> None:
        taken_message = TakenMessage.of(message)
        if send is not None:
            send("task-received", **taken_message.received_event())
        if taken_message.delivery.job_id in revoked:
            _end_revoked(service, taken_message, ack, errors, send)
            return
        service.job_taken(taken_message.queue, count_samples(taken_message.delivery.kwargs,
                                                             stored_apart=True))
        pool.apply_async(run, args=(taken_message, ack, reject), callback=_ignore)

    return on_message


def _ending(job_id: str, ack: Promise, reject: Promise,
            errors: tuple[type[BaseException], ...], send: Callable[..., Any] | None
            ) -> Callable[[Summary | ResultNotStoredError], None]:
    """What a job's end does to its message and events: ack and `task-succeeded` once its
    result is stored, else a requeue and `task-rejected`."""
    started = time.monotonic()

    def ended(ending: Summary | ResultNotStoredError) -> None:
        if isinstance(ending, ResultNotStoredError):
            reject(logger, errors, True)
            if send is not None:
                send("task-rejected", uuid=job_id, requeue=True)
            return
        ack(logger, errors)
        if send is not None:
            send("task-succeeded", uuid=job_id, result=repr(ending),
                 runtime=time.monotonic() - started)

    return ended


def _end_revoked(service: InferenceService, message: TakenMessage, ack: Promise,
                 errors: tuple[type[BaseException], ...],
                 send: Callable[..., Any] | None) -> None:
    """A job revoked before it ran (`celery control revoke`): ended `failed` with code
    `revoked`, never computed, and acked (left for a later delivery if Redis fails)."""
    try:
        service.revoke(message.delivery)
    except redis.RedisError as exc:
        logger.warning("revoked job %s: its result could not be stored (%s); it stays "
                       "queued", message.delivery.job_id, exc)
        return
    ack(logger, errors)
    if send is not None:
        send("task-revoked", uuid=message.delivery.job_id, terminated=False, signum=None,
             expired=False)


def _ignore(_result: object) -> None:
    """The pool's callback: the run acked and reported its job itself."""


def install_revoke_command() -> None:
    """Replace Celery's `revoke` remote control command in this process with one that
    only flags the ids, so that the job ends as every inferfleet job does.

    Celery's own also stores a `REVOKED` result of Celery's format under the job's result
    key at once. Results are write-once, so the job's own result could never be stored,
    and `Client.result` found a record that is not a job result. Here the worker that
    takes the message stores the job's `failed` result with code `revoked` (with its
    samples, session and notify list); a running job is not stopped (the threads pool
    cannot stop a thread, as with Celery's own `terminate`).
    """

    @control_command(variadic="task_id", signature="[id1 [id2 [... [idN]]]]",
                     name="revoke")
    def revoke(_state: Any, task_id: Any, terminate: bool = False, signal: Any = None,
               **_: Any) -> dict[str, str]:
        task_ids = {str(one) for one in maybe_list(task_id) or []}
        upstream.revoked_job_ids().update(task_ids)
        return ok(f"tasks {task_ids} flagged as revoked")  # type: ignore[no-any-return]
