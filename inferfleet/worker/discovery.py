"""Models added to the folder while a worker runs are served by it, without a restart.

A worker started without `--models` serves every model in the folder. Every
`CHECK_S` its housekeeping looks for model folders it does not serve yet (`inferfleet
models add`, or a file dropped in), loads and warms each up (which publishes its
signature, so `submit` accepts it), and only then starts consuming its queue. A new
model that does not load is logged once and tried again when its files change.

The queue is added through Celery's own `add_task_queue`, run in the consumer's event
loop (`consumer.call_soon`, which wakes that loop from any thread); a consumer that
reconnects later consumes it too, as Celery keeps it among the app's queues.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from inferfleet import keys
from inferfleet.models.registry import Registry

logger = logging.getLogger(__name__)


class ModelDiscovery:
    """Finds new models in the folder and has the worker serve them."""

    #: How often the models folder is looked at for new models.
    CHECK_S = 1.0

    def __init__(self, registry: Registry, served: list[str],
                 warm_up: Callable[[list[str]], list[str]]) -> None:
        self.registry = registry
        self.served = set(served)
        self._warm_up = warm_up
        self._consumer: Any = None  # Celery's consumer, once it runs
        self._lock = threading.Lock()
        self._failed: dict[str, tuple[object, ...]] = {}  # name -> files' stamp that failed
        self._unconsumed: list[str] = []  # served, its queue not consumed yet

    def attach(self, consumer: Any) -> None:
        """Called with Celery's consumer each time it (re)starts its task handling."""
        with self._lock:
            self._consumer = consumer

    def check(self) -> list[str]:
        """Serve every model that appeared since the last check; the names taken on."""
        found = []
        for name in self.registry.names():
            if name in self.served:
                continue
            stamp = self.registry.stamp(name)
            if self._failed.get(name) == stamp:
                continue  # failed as it is: tried again once its files change
            if self._warm_up([name]):
                self.served.add(name)
                self._unconsumed.append(name)
                self._failed.pop(name, None)
                found.append(name)
            else:
                self._failed[name] = stamp
        self._consume_new()
        return found

    def _consume_new(self) -> None:
        with self._lock:
            consumer = self._consumer
        if consumer is None or not self._unconsumed:
            return  # the consumer takes the rest once it has started
        for name in self._unconsumed:
            queue = keys.model_queue(name)
            consumer.call_soon(consumer.add_task_queue, queue)
            logger.info("model %s was added to the models folder: now serving it "
                        "(queue %s)", name, queue)
        self._unconsumed = []
