"""Every Redis key and queue name inferfleet uses, in one place.

Celery's own keys are named here too, because inferfleet writes job results where
Celery's Redis result backend keeps them: then `AsyncResult(id).get()` from any Celery
client reads exactly what `Client.result` reads.
"""

from __future__ import annotations

PREFIX = "inferfleet"

#: The task every job is a message of; part of the wire schema.
TASK_NAME = "inferfleet.predict"
#: The queue a job goes to when it names no model queue (plain Celery clients).
DEFAULT_QUEUE = PREFIX
#: Messages no worker could take (not JSON, not an envelope, pickle) and jobs delivered
#: too often, newest first; each entry names the key that holds its whole message.
DEAD_LETTERS = f"{PREFIX}:dead"


def dead_message(letter_id: str) -> str:
    """The whole message of one dead letter (to replay it)."""
    return f"{PREFIX}:dead:message:{letter_id}"
#: Jobs that have a deadline, scored by it, for the reaper (see `ledger.Ledger.reap`).
DEADLINES = f"{PREFIX}:deadlines"
#: Published model signatures, a hash of model name -> JSON (read by producers).
MODELS_HASH = f"{PREFIX}:models"
#: kombu's Redis transport's record of taken, unacked messages (delivery tag -> the
#: message and its route back) and its index by take time (kombu's own names).
UNACKED = "unacked"
UNACKED_INDEX = "unacked_index"
#: Holders of taken messages (worker channels) by their last heartbeat, in Redis time
#: (see `liveness`), and the lapsed ones whose messages are owed back to their queues.
HOLDERS = f"{PREFIX}:holders"
#: Each worker's node name -> JSON of the models it serves (see `inferfleet.health`).
WORKERS = f"{PREFIX}:workers"
#: Each worker's node name, scored by when it last announced itself (Redis's clock).
WORKERS_SEEN = f"{PREFIX}:workers:seen"
LAPSED_HOLDERS = f"{PREFIX}:holders:lapsed"


def holder_lapsed(holder_id: str) -> str:
    """Set once a holder's heartbeat lapsed: its takes refuse from then on."""
    return f"{PREFIX}:holder:lapsed:{holder_id}"


def holder_giving_back(holder_id: str) -> str:
    """The lock of the one worker giving a lapsed holder's messages back."""
    return f"{PREFIX}:holder:giving-back:{holder_id}"


#: Celery's Redis result backend key prefix (celery.backends.base.KeyValueStoreBackend).
CELERY_RESULT_PREFIX = "celery-task-meta-"


def model_queue(model: str) -> str:
    """The queue that carries jobs for one model, so that workers can specialise."""
    return f"{PREFIX}.{model}"


#: A job's priority levels, the first taken first (with a share of takes for the others:
#: see `inferfleet.take.take_order`).
PRIORITIES = ("high", "normal", "low")


def priority_list(queue: str, priority: str) -> str:
    """The Redis list of `queue`'s jobs of one priority: the queue itself for `normal`
    (where plain Celery clients push), `<queue>:high` and `<queue>:low` for the others
    (no model name holds a colon); part of the wire schema."""
    return queue if priority == "normal" else f"{queue}:{priority}"


def list_priority(list_key: str) -> tuple[str, str]:
    """The queue and priority of a list `priority_list` names; (the key itself, `normal`)
    for any other list (a queue itself, or one of kombu's priority lists of it)."""
    queue, colon, level = list_key.rpartition(":")
    if colon and level in PRIORITIES and level != "normal" and queue.startswith(PREFIX):
        return queue, level
    return list_key, "normal"


def queue_lists(queue: str) -> list[str]:
    """Every priority's list of `queue`, first taken first."""
    return [priority_list(queue, priority) for priority in PRIORITIES]


def queue_bell(queue: str) -> str:
    """Where producers ring when they push to `queue`: idle workers wait on the bells of
    their queues instead of popping the queues themselves (see `inferfleet.transport`)."""
    return f"{PREFIX}:bell:{queue}"


def result(job_id: str) -> str:
    """Where a job's terminal result lives (Celery's backend format, JSON)."""
    return f"{CELERY_RESULT_PREFIX}{job_id}"


def job(job_id: str) -> str:
    """A hash of a job's ledger: state, model, session, sample count, timestamps."""
    return f"{PREFIX}:job:{job_id}"


def job_inputs(job_id: str) -> str:
    """The raw bytes of a big job's input arrays, kept beside its message
    (`inferfleet.stored_inputs`) until its result is stored."""
    return f"{PREFIX}:inputs:{job_id}"


#: Prefix of the lists producers name in a job's `notify` field; the worker pushes the job
#: id there once its result is stored. Other keys are refused, so a message cannot make a
#: worker write where it likes.
NOTIFY_PREFIX = f"{PREFIX}:notify:"


def notify_list(owner: str) -> str:
    """The completion list of one producer (a `Client`)."""
    return f"{NOTIFY_PREFIX}{owner}"


def session_stats(session_id: str) -> str:
    """A hash of a session's counters: submitted and done by status and model, a latency
    histogram, first submit and last finish (see `sessions`)."""
    return f"{PREFIX}:session:{session_id}:stats"


def session_stream(session_id: str) -> str:
    """A stream of a session's finished jobs, one entry per job, in arrival order."""
    return f"{PREFIX}:session:{session_id}:stream"


def doorbell(job_id: str) -> str:
    """A short list pushed once the result is stored, so that one waiter can BLPOP it."""
    return f"{PREFIX}:done:{job_id}"


def cache_buckets_of(model: str, version: str) -> str:
    """What the keys of one model version's result cache buckets start with."""
    return f"{PREFIX}:cache:{model}:{version}:"


def cache_bucket(model: str, version: str, bucket: int) -> str:
    """The result cache's entries for one model version written in one time bucket (a
    hash of sample digest -> outputs; see `inferfleet.cache`)."""
    return f"{cache_buckets_of(model, version)}{bucket}"


def cache_bytes(bucket: int) -> str:
    """The bytes the result cache wrote in one time bucket, all models together."""
    return f"{PREFIX}:cache-bytes:{bucket}"


def cache_index(model: str) -> str:
    """The set of a model's cache buckets (to delete an old version's)."""
    return f"{PREFIX}:cache-index:{model}"
