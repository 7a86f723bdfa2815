"""A worker process's ONNX Runtime sessions, and how a new model version reaches them.

Sessions are built on first use (warmed up with one run before any job sees them) and
rebuilt after a fork. A model whose files change on disk (`inferfleet models add`, or a
file dropped in) is loaded again within `RELOAD_CHECK_S`, without a restart: the next
jobs run on the new version, while batches already formed finish on the old one. A new
version that fails to load is logged and the old one kept.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from inferfleet.errors import InferfleetError, ModelLoadError
from inferfleet.models.registry import Registry
from inferfleet.models.runtime import OnnxModel, zeros_for

logger = logging.getLogger(__name__)


@dataclass
class _Loaded:
    model: OnnxModel
    stamp: tuple[object, ...]  # the files' (mtime, size) when they were read
    next_check: float


class ModelPool:
    """Loaded models by name; safe to share between threads."""

    #: How often a served model's files are looked at for a new version.
    RELOAD_CHECK_S = 1.0

    def __init__(self, registry: Registry, *, intra_op_threads: int,
                 providers: Sequence[str] = (),
                 on_load: Callable[[OnnxModel], None] | None = None) -> None:
        self.registry = registry
        self.intra_op_threads = intra_op_threads
        self.providers = list(providers)
        self.on_load = on_load
        self._lock = threading.Lock()
        self._models: dict[str, _Loaded] = {}
        self._pid = os.getpid()

    def get(self, name: str) -> OnnxModel:
        """The current version of model `name`, loaded and warmed up.

        Raises:
            UnknownModelError: if the registry does not serve it.
            ModelLoadError: if its files cannot be loaded (on first use).
        """
        with self._lock:
            if self._pid != os.getpid():  # sessions must not cross a fork
                self._models, self._pid = {}, os.getpid()
            loaded = self._models.get(name)
            now = time.monotonic()
            if loaded is None:
                loaded = self._models[name] = self._load(name)
            elif now >= loaded.next_check:
                loaded.next_check = now + self.RELOAD_CHECK_S
                stamp = self.registry.stamp(name)
                if stamp != loaded.stamp:
                    loaded = self._reload(name, loaded, stamp)
            return loaded.model

    def _load(self, name: str) -> _Loaded:
        self.registry.forget(name)
        stamp = self.registry.stamp(name)  # before reading: a change during it is seen
        model = OnnxModel(self.registry.entry(name), intra_op_threads=self.intra_op_threads,
                          providers=self.providers)
        try:
            model.run(zeros_for(model))
        except Exception as exc:  # onnxruntime's own errors: the model cannot serve
            raise ModelLoadError(f"model {name!r} failed its warm-up run: {exc}") from exc
        if self.on_load is not None:
            self.on_load(model)
        logger.info("model %s version %s loaded (providers %s)", name,
                    model.signature.version, model.providers)
        return _Loaded(model, stamp, time.monotonic() + self.RELOAD_CHECK_S)

    def _reload(self, name: str, old: _Loaded, stamp: tuple[object, ...]) -> _Loaded:
        try:
            self._models[name] = self._load(name)
        except InferfleetError as exc:
            logger.error("model %s: its files changed but do not load (%s); still serving "
                         "version %s", name, exc, old.model.signature.version)
            old.stamp = stamp  # not tried again until they change again
            return old
        return self._models[name]
