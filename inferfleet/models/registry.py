"""The model repository: a folder of `<name>/model.onnx` (+ optional config), allow-listed.

A model is addressed by name only. A name must match `MODEL_NAME_PATTERN` and resolve to a
folder directly inside the models folder, so no request can make the worker open a path of
its choosing.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from pathlib import Path

from inferfleet.errors import UnknownModelError
from inferfleet.models.config import CONFIG_NAMES, ModelConfig, ModelSignature, read_config
from inferfleet.schemas import MODEL_NAME_PATTERN

MODEL_FILE = "model.onnx"
_NAME = re.compile(MODEL_NAME_PATTERN)


@dataclass(frozen=True)
class ModelEntry:
    """A model folder that passed the allow-list: where its files are and its config."""

    name: str
    folder: Path
    config: ModelConfig

    @property
    def path(self) -> Path:
        return self.folder / MODEL_FILE


class Registry:
    """Finds models by name in one folder; safe to share between threads."""

    def __init__(self, models_dir: Path) -> None:
        self.models_dir = models_dir.resolve()
        self._lock = threading.Lock()
        self._entries: dict[str, ModelEntry] = {}

    def names(self) -> list[str]:
        """Every servable model name in the folder, sorted."""
        if not self.models_dir.is_dir():
            return []
        return sorted(
            child.name for child in self.models_dir.iterdir()
            if _NAME.match(child.name) and (child / MODEL_FILE).is_file()
        )

    def entry(self, name: str) -> ModelEntry:
        """The model folder for `name`.

        Raises:
            UnknownModelError: if the name is not allow-listed or has no model file.
            ModelLoadError: if its config is invalid.
        """
        with self._lock:
            cached = self._entries.get(name)
            if cached is None:
                cached = self._entries[name] = self._find(name)
            return cached

    def forget(self, name: str) -> None:
        """Read `name`'s folder and config afresh on its next `entry`."""
        with self._lock:
            self._entries.pop(name, None)

    def stamp(self, name: str) -> tuple[object, ...]:
        """What changes when `name`'s model or config file does: (mtime, size) of each
        (None for a missing one)."""
        folder = self.models_dir / name
        stamps: list[object] = []
        for file in (MODEL_FILE, *CONFIG_NAMES):
            try:
                info = (folder / file).stat()
            except OSError:
                stamps.append(None)
            else:
                stamps.append((info.st_mtime_ns, info.st_size))
        return tuple(stamps)

    def _find(self, name: str) -> ModelEntry:
        if not isinstance(name, str) or not _NAME.match(name):
            raise UnknownModelError(str(name), f"names must match {MODEL_NAME_PATTERN}")
        folder = (self.models_dir / name).resolve()
        if folder.parent != self.models_dir:
            raise UnknownModelError(name, "it resolves outside the models folder")
        if not (folder / MODEL_FILE).is_file():
            raise UnknownModelError(name, f"no {MODEL_FILE} in {self.models_dir}/{name}")
        return ModelEntry(name=name, folder=folder, config=read_config(folder))


def signature_with_config(signature: ModelSignature, config: ModelConfig) -> ModelSignature:
    """The ONNX signature with the config's statements (shapes, dtypes, labels) applied."""
    inputs = []
    for spec in signature.inputs:
        override = config.inputs.get(spec.name)
        if override is not None:
            spec = spec.model_copy(update={
                k: v for k, v in (("shape", override.shape), ("dtype", override.dtype))
                if v is not None
            })
        inputs.append(spec)
    return signature.model_copy(update={
        "version": config.version, "inputs": inputs, "labels": config.labels,
        "features": config.features, "metrics": config.metrics,
    })
