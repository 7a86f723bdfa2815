"""The inferfleet worker: a Celery worker whose threads share one micro-batcher per model.

Each job is its own Celery task (own events, own late ack, own result), taken by the lean
path (`intake`) without Celery's per-task Request and tracer; a pool thread decodes and
checks a job and hands it to the batcher, and the jobs of a batch end together in one
finisher thread (results stored in one round trip, then each job acked and reported).
ONNX Runtime releases the GIL while it computes.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import os
import socket
from typing import Any

import redis
from celery import Celery, Task
from celery.exceptions import Reject
from celery.signals import setup_logging, worker_ready, worker_shutdown
from celery.utils.nodenames import host_format

from inferfleet import keys, logs, upstream
from inferfleet.celery_app import make_app
from inferfleet.connections import redis_client
from inferfleet.health import announce
from inferfleet.settings import Settings, mask_url
from inferfleet.worker.consumer import CONSUMER_PATH
from inferfleet.worker.delivery import Delivery
from inferfleet.worker.discovery import ModelDiscovery
from inferfleet.worker.intake import (
    STRATEGY_PATH,
    ResultNotStoredError,
    install_revoke_command,
    run_job,
)
from inferfleet.worker.metrics import WorkerMetrics
from inferfleet.worker.service import InferenceService
from inferfleet.worker.threads import POOL_PATH

logger = logging.getLogger(__name__)

__all__ = ["create_worker_app", "run_worker"]


def create_worker_app(settings: Settings) -> tuple[Celery, InferenceService]:
    """The Celery app with `inferfleet.predict` bound to a fresh `InferenceService`.

    Raises:
        ConfigurationError: if the visibility timeout is shorter than the longest hold,
            or the installed Celery or kombu lacks what the worker hooks into
            (`upstream.check`).
    """
    settings.check_visibility_timeout()
    upstream.check()
    app = make_app(settings)
    app.conf.worker_consumer = CONSUMER_PATH
    app.conf.worker_pool = POOL_PATH  # Celery's threads pool, see `worker.threads`
    client = redis_client(settings)
    service = InferenceService(settings, client)
    app.conf.broker_transport_options = {**app.conf.broker_transport_options,
                                         "take_budget": service.messages_wanted,
                                         "accepted_tasks": frozenset({keys.TASK_NAME}),
                                         "heartbeats": service.heartbeats,
                                         "job_began": service.job_began}

    @app.task(name=keys.TASK_NAME, bind=True, typing=False, ignore_result=True,
              Strategy=STRATEGY_PATH)
    def predict(task: Task[Any, Any], *args: Any, **kwargs: Any) -> dict[str, Any]:
        # Run this way only when called in-process (`apply`): a worker's messages take
        # the lean path (`intake.strategy`), which runs `run_job` in its pool itself.
        try:
            return run_job(service, _delivery_of(task, args, kwargs))
        except ResultNotStoredError as exc:
            raise Reject(str(exc), requeue=True) from exc

    predict.service = service  # type: ignore[attr-defined]  # what the strategy serves
    install_revoke_command()
    return app, service


def _delivery_of(task: Task[Any, Any], args: tuple[Any, ...],
                 kwargs: dict[str, Any]) -> Delivery:
    request = task.request
    return Delivery.of(str(request.id), args, kwargs,
                       properties=getattr(request, "properties", None) or {},
                       delivery_info=request.delivery_info,
                       headers=getattr(request, "headers", None))


def run_worker(settings: Settings, *, models: list[str] | None = None,
               hostname: str | None = None, loglevel: str = "INFO") -> None:
    """Warm up the models, then run a Celery worker consuming their queues until stopped
    (with Prometheus metrics on `settings.metrics_port` unless it is 0)."""
    _cap_malloc_arenas()
    app, service = create_worker_app(settings)

    @setup_logging.connect(weak=False)
    def _logging(**_: Any) -> None:  # instead of Celery's own setup
        logs.configure(loglevel, json_lines=settings.log_format == "json")

    logs.configure(loglevel, json_lines=settings.log_format == "json")
    names = models or service.pool.registry.names()
    served = service.warm_up(names)
    if models is None:  # every model in the folder: also those added from now on
        service.discovery = ModelDiscovery(service.pool.registry, served, service.warm_up)
        service.housekeeping.every(ModelDiscovery.CHECK_S, service.discovery.check,
                                   name="model discovery")
    node = hostname or f"inferfleet-{os.getpid()}@{socket.gethostname()}"

    def serving() -> list[str]:
        return sorted(service.discovery.served) if service.discovery else served

    service.housekeeping.every(settings.heartbeat_interval_s,
                               lambda: announce(service.client, host_format(node), serving()),
                               name="announce")
    if settings.metrics_port:
        service.metrics = WorkerMetrics(service.client, served)
        service.metrics.serve(settings.metrics_port,
                              not_ready=lambda: _not_ready(service, serving()))
    service.start()
    worker_ready.connect(lambda **_: freeze_startup_objects(), weak=False)
    worker_shutdown.connect(lambda **_: service.stop(), weak=False)
    queues = [keys.DEFAULT_QUEUE, *(keys.model_queue(name) for name in served)]
    app.worker_main([
        # --quiet (no banner) is Celery's global option: it comes before the command.
        *(["--quiet"] if settings.log_format == "json" else []),
        # No --pool: Celery's command line accepts only its own names, and its default
        # stands for the app's `worker_pool` (`worker.threads`).
        "worker", f"--concurrency={settings.worker_concurrency}",
        f"--queues={','.join(queues)}", "--events", "--without-gossip", "--without-mingle",
        f"--hostname={node}", f"--loglevel={loglevel}",
    ])


def _not_ready(service: InferenceService, serving: list[str]) -> str | None:
    """Why this worker cannot take jobs (its `/readyz`), or None."""
    if not serving:
        return "no model loaded: none in the models folder loads (see the worker's log)"
    try:
        service.client.ping()
    except redis.RedisError as exc:
        return f"redis {mask_url(service.settings.redis_url)} does not answer: {exc}"
    return None


def freeze_startup_objects() -> None:
    """Keep the objects made while the worker started out of every later garbage
    collection (`gc.freeze`), once it is ready to consume.

    Celery, kombu, pydantic, ONNX Runtime's bindings and the models leave ~110,000
    objects, all alive until the worker stops. Jobs make container objects fast enough
    that the collector's oldest generation ran every few seconds, each pass walking all
    of them: 5 passes of ~60 ms in a drain of 800,000 bulk samples, 11% of the worker's
    CPU, every pass holding the GIL (a 60 ms stall for every job in flight). Frozen,
    the same passes cost under 1 ms each.

    Frozen objects are still freed by reference counting: a model replaced by a new
    version is (a test holds it). Only reference cycles among them would wait for the
    process to end.
    """
    gc.collect()
    gc.freeze()
    logger.debug("froze %d objects made at start out of garbage collection",
                 gc.get_freeze_count())


def _cap_malloc_arenas(arenas: int = 2) -> None:
    """Let glibc's malloc use at most `arenas` arenas in this process.

    By default each thread that allocates may get its own (up to 8 per core): with 32 pool
    threads a worker's RSS kept growing for millions of samples (+10%, +6%, +1% over
    three successive 1M-sample runs; capped at 2: +6.5%, +1%, +1%, and 20 MiB smaller).
    The threads take turns under the GIL anyway. Nothing to do on other C libraries.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    m_arena_max = -8  # from glibc's malloc.h
    libc.mallopt(m_arena_max, arenas)
