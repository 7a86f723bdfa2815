"""What inferfleet leans on of Celery and kombu beyond their documented API, in one place.

The worker hooks into both libraries where they offer no public hook: kombu's Redis
channel takes, acks and restores messages the fleet's way (`inferfleet.transport`), Celery's
consumer batches task events and survives any message (`worker.consumer`), a task
`Strategy` bypasses Celery's per-task Request (`worker.intake`), and Celery's threads pool
waits for the finisher (`worker.threads`). Every point where inferfleet overrides, calls,
reads or sets something of theirs is a `Reliance` in `RELIANCES`:

- a worker checks them all as it starts (`check`), and refuses to start on a Celery or
  kombu that lacks one or gives it other parameters, naming each and where inferfleet
  uses it, instead of misbehaving at its first message;
- the private reads and calls go through the functions at the end of this module, so
  that no other module touches a private name of theirs;
- a test holds that every method inferfleet's subclasses override is listed here.

Upgrading Celery or kombu is therefore a review of this file and of the overrides it
names, then a full test run; pyproject.toml pins kombu below its next minor release,
and the worker's refusal quotes the pins (`pins`).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from inferfleet.errors import ConfigurationError


@dataclass(frozen=True)
class Reliance:
    """One thing of Celery's or kombu's that inferfleet uses and their documentation
    does not promise.

    `target` is "module:Qualified.name". `params`, for a callable, are the leading
    parameter names inferfleet calls it with or overrides it with. An attribute set on
    instances only has no class attribute to find: `evidence` then names the code that
    sets or reads it ("module:Qualified.name") and the text its source must contain.
    """

    target: str
    use: str
    params: tuple[str, ...] | None = None
    evidence: tuple[str, str] | None = None

    def problem(self) -> str | None:
        """What is wrong with this reliance in the installed libraries, or None."""
        if self.evidence is not None:
            where, text = self.evidence
            try:
                source = inspect.getsource(_resolve(where))
            except (ImportError, AttributeError) as exc:
                return f"{where} is gone ({exc}), which shows {self.target}"
            except (OSError, TypeError):  # no source installed (a frozen build): unknown
                return None
            return None if text in source else f"{where} no longer mentions {text!r}"
        try:
            found = _resolve(self.target)
        except (ImportError, AttributeError) as exc:
            return f"{self.target} is gone ({exc})"
        if self.params is None:
            return None
        try:
            names = tuple(inspect.signature(found).parameters)
        except (TypeError, ValueError):
            return f"{self.target} is no longer a function"
        if names[:len(self.params)] != self.params:
            return (f"{self.target} takes ({', '.join(names)}), not "
                    f"({', '.join(self.params)}, ...)")
        return None


def _resolve(target: str) -> Any:
    module_name, _, qualified = target.partition(":")
    found: Any = importlib.import_module(module_name)
    for part in qualified.split(".") if qualified else ():
        found = getattr(found, part)
    return found


_KOMBU_REDIS = "kombu.transport.redis"
_VIRTUAL = "kombu.transport.virtual.base"
_CONSUMER = "celery.worker.consumer.consumer:Consumer"

RELIANCES: tuple[Reliance, ...] = (
    # kombu's message: the transport hands Celery the body admission decoded already.
    Reliance(f"{_VIRTUAL}:Message.__init__", "transport.Message overrides it",
             ("self", "payload", "channel")),
    Reliance("kombu.message:Message._decoded_cache", "set by transport.Message (decode "
             "reads it instead of decoding the body again)",
             evidence=("kombu.message:Message.decode", "self._decoded_cache")),
    Reliance("kombu.message:Message.ack_log_error", "the ack promise worker.intake calls",
             ("self", "logger", "errors")),
    Reliance("kombu.message:Message.reject_log_error",
             "the reject promise worker.intake calls", ("self", "logger", "errors",
                                                        "requeue")),
    # kombu's Redis QoS: the take records unacked; acks ride with the next take.
    Reliance(f"{_KOMBU_REDIS}:QoS.append", "transport.QoS overrides it",
             ("self", "message", "delivery_tag")),
    Reliance(f"{_KOMBU_REDIS}:QoS.ack", "transport.QoS overrides it", ("self", "delivery_tag")),
    Reliance(f"{_KOMBU_REDIS}:QoS.restore_unacked", "transport.QoS overrides it",
             ("self", "client")),
    Reliance(f"{_KOMBU_REDIS}:QoS.restore_by_tag", "transport.QoS overrides it",
             ("self", "tag", "client", "leftmost")),
    Reliance(f"{_KOMBU_REDIS}:QoS._remove_from_indices", "forget_unacked calls it",
             ("self", "delivery_tag", "pipe")),
    Reliance(f"{_KOMBU_REDIS}:QoS.unacked_key", "transport.QoS reads it"),
    Reliance(f"{_KOMBU_REDIS}:QoS.can_consume_max_estimate",
             "transport.Channel._brpop_start calls it", ("self",)),
    Reliance(f"{_VIRTUAL}:QoS.append", "transport.QoS calls it (recording nothing)",
             ("self", "message", "delivery_tag")),
    Reliance(f"{_VIRTUAL}:QoS.ack", "transport.QoS calls it", ("self", "delivery_tag")),
    Reliance(f"{_VIRTUAL}:QoS._delivered", "delivered_unacked reads it"),
    # kombu's Redis channel: the take instead of BRPOP, and the shared client.
    Reliance(f"{_KOMBU_REDIS}:Channel.QoS", "transport.Channel replaces it"),
    Reliance(f"{_KOMBU_REDIS}:Channel.Message", "transport.Channel replaces it"),
    Reliance(f"{_KOMBU_REDIS}:Channel.from_transport_options",
             "transport.Channel extends it (its options come from the worker)"),
    Reliance(f"{_VIRTUAL}:Channel.basic_consume", "transport.Channel overrides it",
             ("self", "queue", "no_ack")),
    Reliance(f"{_KOMBU_REDIS}:Channel._put", "transport.Channel overrides it",
             ("self", "queue", "message")),
    Reliance(f"{_KOMBU_REDIS}:Channel._brpop_start", "transport.Channel overrides it "
             "(kombu's event loop calls it to start a read)", ("self", "timeout")),
    Reliance(f"{_KOMBU_REDIS}:Channel._brpop_read", "transport.Channel overrides it "
             "(kombu's event loop calls it when the read's reply is ready)",
             ("self",)),
    Reliance(f"{_KOMBU_REDIS}:Channel.close", "transport.Channel overrides it", ("self",)),
    Reliance(f"{_KOMBU_REDIS}:Channel.conn_or_acquire", "transport.Channel overrides it",
             ("self", "client")),
    Reliance(f"{_KOMBU_REDIS}:Channel._create_client", "new_client calls it", ("self",)),
    Reliance(f"{_KOMBU_REDIS}:Channel._queue_cycle", "queues_in_turn and rotate_queues "
             "use it", evidence=(f"{_KOMBU_REDIS}:Channel.__init__", "self._queue_cycle")),
    Reliance(f"{_KOMBU_REDIS}:Channel._q_for_pri", "priority_list calls it",
             ("self", "queue", "pri")),
    Reliance(f"{_KOMBU_REDIS}:Channel.priority_steps", "transport.Channel reads it"),
    Reliance(f"{_KOMBU_REDIS}:Channel._in_poll", "take_sent and take_read set it (kombu's "
             "poller reads it)", evidence=(f"{_KOMBU_REDIS}:MultiChannelPoller",
                                           "channel._in_poll")),
    Reliance(f"{_KOMBU_REDIS}:Channel._brpop_sent_at", "take_sent sets it (kombu's poller "
             "reads it)", evidence=(f"{_KOMBU_REDIS}:MultiChannelPoller",
                                    "channel._brpop_sent_at")),
    Reliance(f"{_KOMBU_REDIS}:Channel._flush_brpop_reauth", "take_read calls it",
             ("self",)),
    Reliance(f"{_KOMBU_REDIS}:Channel.unacked_key", "the take records there"),
    Reliance(f"{_KOMBU_REDIS}:Channel.unacked_index_key", "the take records there"),
    Reliance(f"{_KOMBU_REDIS}:Channel.connection_errors", "transport.Channel reads it",
             evidence=(f"{_KOMBU_REDIS}:Channel.__init__", "self.connection_errors")),
    Reliance(f"{_KOMBU_REDIS}:SentinelChannel.from_transport_options",
             "transport.SentinelChannel extends it"),
    # kombu's transport: delivery to consumers, and what comes for no consumer.
    Reliance(f"{_VIRTUAL}:Transport._deliver", "deliver calls it", ("self", "message",
                                                                     "queue")),
    Reliance(f"{_VIRTUAL}:Transport._reject_inbound_message",
             "transport._UnconsumedGoBackUncounted overrides it", ("self", "raw_message")),
    Reliance(f"{_VIRTUAL}:Transport.channels", "transport._UnconsumedGoBackUncounted reads "
             "it", evidence=(f"{_VIRTUAL}:Transport.__init__", "self.channels")),
    Reliance(f"{_KOMBU_REDIS}:Transport.Channel", "transport.Transport replaces it"),
    Reliance(f"{_KOMBU_REDIS}:SentinelTransport.Channel",
             "transport.SentinelTransport replaces it"),
    # kombu's event loop: a timer that wakes it (a held take, a timed event flush).
    Reliance("kombu.asynchronous:get_event_loop", "transport.Channel finds the worker's "
             "event loop with it", ()),
    Reliance("kombu.asynchronous.hub:Hub.call_later", "transport.Channel and "
             "worker.consumer set timers with it", ("self", "delay", "callback")),
    # Celery's consumer: task events in batches, and no message that stops it.
    Reliance(f"{_CONSUMER}.update_strategies", "worker.consumer overrides it", ("self",)),
    Reliance(f"{_CONSUMER}.create_task_handler", "worker.consumer overrides it", ("self",)),
    Reliance(f"{_CONSUMER}.create_task_handler", "worker.intake's strategy gets the ack "
             "and reject promises from it",
             evidence=(f"{_CONSUMER}.create_task_handler", "message.ack_log_error")),
    Reliance(f"{_CONSUMER}._flush_events", "worker.consumer overrides and calls it",
             ("self",)),
    Reliance(f"{_CONSUMER}.on_send_event_buffered", "worker.consumer overrides it "
             "(the dispatcher calls it for each event buffered)", ("self",)),
    Reliance("celery.events.dispatcher:EventDispatcher.send", "worker.consumer relies on "
             "it calling on_send_buffered after buffering an event",
             evidence=("celery.events.dispatcher:EventDispatcher.send",
                       "self.on_send_buffered()")),
    Reliance(f"{_CONSUMER}.stop", "worker.consumer overrides it", ("self",)),
    Reliance(f"{_CONSUMER}.shutdown", "worker.consumer overrides it", ("self",)),
    Reliance(f"{_CONSUMER}.hub", "worker.consumer reads it",
             evidence=(f"{_CONSUMER}.__init__", "self.hub")),
    Reliance(f"{_CONSUMER}.connection_errors", "worker.consumer and worker.intake read it",
             evidence=(f"{_CONSUMER}.__init__", "self.connection_errors")),
    Reliance(f"{_CONSUMER}.event_dispatcher", "worker.consumer and worker.intake read it",
             evidence=("celery.worker.consumer.events:Events.start", "c.event_dispatcher")),
    Reliance(f"{_CONSUMER}.call_soon", "worker.discovery calls it", ("self", "p")),
    Reliance(f"{_CONSUMER}.add_task_queue", "worker.discovery calls it", ("self", "queue")),
    Reliance("celery.events.dispatcher:EventDispatcher.buffer_limit", "worker.consumer "
             "sets it", evidence=("celery.events.dispatcher:EventDispatcher.__init__",
                                  "self.buffer_limit")),
    # Celery's task strategy, revokes and pool.
    Reliance("celery.app.task:Task.Strategy", "worker.intake's strategy replaces it"),
    Reliance("celery.worker.strategy:default", "worker.intake.strategy takes its place",
             ("task", "app", "consumer")),
    Reliance("celery.worker.state:revoked", "revoked_job_ids reads it"),
    Reliance("celery.worker.control:control_command", "worker.intake registers `revoke` "
             "with it"),
    Reliance("celery.concurrency.thread:TaskPool.on_stop", "worker.threads overrides it",
             ("self",)),
)


def problems(reliances: Iterable[Reliance] = RELIANCES) -> list[str]:
    """What the installed Celery and kombu lack of `reliances`, one line each."""
    return [f"{problem} (inferfleet: {reliance.use})" for reliance in reliances
            if (problem := reliance.problem()) is not None]


def check(reliances: Iterable[Reliance] = RELIANCES) -> None:
    """Refuse to run a worker on a Celery or kombu it does not fit.

    Raises:
        ConfigurationError: naming every reliance the installed versions break.
    """
    found = problems(reliances)
    if found:
        version = importlib.metadata.version
        raise ConfigurationError(
            f"the installed kombu {version('kombu')} and Celery {version('celery')} lack "
            f"what inferfleet's worker hooks into:\n  " + "\n  ".join(found) +
            f"\ninferfleet requires {pins()}: install those (pip install -e .) or adapt "
            f"inferfleet/upstream.py and the overrides it lists")


def pins() -> str:
    """The Celery and kombu versions inferfleet's package requires (pyproject.toml)."""
    try:
        required = importlib.metadata.requires("inferfleet") or []
    except importlib.metadata.PackageNotFoundError:  # run from a source tree
        return "the Celery and kombu versions pyproject.toml pins"
    return " and ".join(r for r in required if r.startswith(("celery", "kombu"))
                        and "extra ==" not in r)


# The private reads and calls, each listed in RELIANCES above.

def set_decoded_body(message: Any, body: Any) -> None:
    """Give a kombu message its decoded body, so that `decode()` returns it as it is."""
    message._decoded_cache = body


def queues_in_turn(channel: Any, count: int) -> list[str]:
    """The channel's next `count` queues in kombu's round-robin order."""
    return channel._queue_cycle.consume(count)  # type: ignore[no-any-return]


def rotate_queues(channel: Any, served: str) -> None:
    """Move `served` to the back of the channel's round-robin (it just gave messages)."""
    channel._queue_cycle.rotate(served)


def priority_list(channel: Any, queue: str, priority: int) -> str:
    """The list kombu keeps `queue`'s messages of a kombu `priority` in."""
    return channel._q_for_pri(queue, priority)  # type: ignore[no-any-return]


def new_client(channel: Any) -> Any:
    """A redis-py client as the channel's own connection settings make it."""
    return channel._create_client()


def forget_unacked(qos: Any, tag: str, pipe: Any) -> Any:
    """Queue on `pipe` the removal of `tag`'s unacked record; the pipe, to execute."""
    return qos._remove_from_indices(tag, pipe)


def delivered_unacked(qos: Any) -> dict[str, Any]:
    """The messages delivered to this process's consumers and not yet acked, by tag."""
    return qos._delivered or {}


def take_sent(channel: Any, connection: Any) -> None:
    """Tell kombu's poller a read is in flight on `connection` (as its BRPOP does)."""
    channel._in_poll = connection
    channel._brpop_sent_at = time.monotonic()


def take_read(channel: Any) -> None:
    """Tell kombu's poller the read's reply was read, and let it re-authenticate."""
    channel._in_poll = None
    flush = getattr(channel, "_flush_brpop_reauth", None)
    if flush is not None:
        flush()


def deliver(channel: Any, message: dict[str, Any], queue: str) -> None:
    """Hand a message to the consumer of `queue`, as kombu's own read does."""
    channel.connection._deliver(message, queue)


def revoked_job_ids() -> Any:
    """The ids this worker process holds revoked (Celery's `LimitedSet`)."""
    from celery.worker import state

    return state.revoked
