"""The one place that builds the Celery app, for producers and workers alike."""

from __future__ import annotations

from celery import Celery

from inferfleet import keys
from inferfleet.connections import plain_url, tls_options
from inferfleet.settings import Settings
from inferfleet.transport import SENTINEL_TRANSPORT_PATH, TRANSPORT_PATH


def make_app(settings: Settings) -> Celery:
    """A Celery app on `settings.redis_url` (broker and result backend), JSON only."""
    # A Sentinel list stays as kombu and Celery read it: "sentinel://a;sentinel://b/0".
    url = settings.redis_url if settings.uses_sentinel else plain_url(settings.redis_url)
    tls = tls_options(settings.redis_url)
    app = Celery("inferfleet", broker=url, backend=url, set_as_current=False)
    if tls is not None:  # rediss://: certificate checks on unless the URL says otherwise
        app.conf.update(broker_use_ssl=tls, redis_backend_use_ssl=tls)
    sentinel = {"master_name": settings.sentinel_master} if settings.uses_sentinel else {}
    socket = {"socket_timeout": settings.socket_timeout_s,
              "socket_connect_timeout": settings.socket_timeout_s}
    app.conf.update(
        broker_transport=SENTINEL_TRANSPORT_PATH if sentinel else TRANSPORT_PATH,
        # JSON only: pickle is never accepted, in either direction.
        task_serializer="json", result_serializer="json", accept_content=["json"],
        result_accept_content=["json"],
        task_default_queue=keys.DEFAULT_QUEUE,
        # Late acks: a job whose worker dies is delivered again, not lost.
        task_acks_late=True, task_reject_on_worker_lost=True,
        task_acks_on_failure_or_timeout=True,
        task_time_limit=settings.job_time_limit_s,
        worker_prefetch_multiplier=settings.prefetch_multiplier,
        worker_concurrency=settings.worker_concurrency,
        # Every job keeps its own events, so Flower shows it even when batched.
        worker_send_task_events=True, task_send_sent_event=False,
        result_expires=settings.result_ttl_s,
        broker_connection_retry_on_startup=True,
        broker_transport_options={
            "visibility_timeout": settings.visibility_timeout_s,
            # kombu sweeps every interval * throttle seconds (100 s by default).
            "unacked_restore_interval": settings.restore_sweep_s,
            "unacked_restore_throttle": 1,
            # One worker sweeps at a time, under a lock that expires after this long. A
            # worker killed while it held kombu's default (300 s) stopped every restore
            # for five minutes; seen in the kill tests.
            "unacked_mutex_expire": max(5.0, 2 * settings.restore_sweep_s),
            # Bodies stay JSON text inside kombu's envelope: the arrays in them are
            # base64 already, and kombu's default would base64 the whole body again.
            "body_encoding": None,
            # Read by inferfleet.transport: bigger messages are dead-lettered unread.
            "max_message_bytes": settings.max_message_bytes,
            **socket, **sentinel,
        },
        result_backend_transport_options={**socket, **sentinel},
        redis_socket_timeout=settings.socket_timeout_s,
        redis_socket_connect_timeout=settings.socket_timeout_s,
        worker_hijack_root_logger=False,
    )
    return app
