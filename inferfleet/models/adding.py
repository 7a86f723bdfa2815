"""`inferfleet models add`: copy an ONNX file into the repository as a model's new version,
only once it has loaded and run.

The file is staged in a hidden folder of the repository (never a servable name), opened
with the model's config and run once on zeros; only then do the config (with the new
version) and the file replace the served ones, each with an atomic rename. Running
workers see the change within `ModelPool.RELOAD_CHECK_S`.
"""

from __future__ import annotations

import json
import re
import shutil
import uuid
from pathlib import Path

from inferfleet.errors import BadArgumentError, InferfleetError, ModelLoadError
from inferfleet.models.config import CONFIG_NAMES, ModelConfig, read_config
from inferfleet.models.registry import MODEL_FILE, ModelEntry
from inferfleet.models.runtime import OnnxModel, zeros_for
from inferfleet.schemas import MODEL_NAME_PATTERN


def add_model(models_dir: Path, source: Path, name: str, *, version: str | None = None,
              description: str | None = None, fresh_config: bool = False,
              features: list[str] | None = None) -> OnnxModel:
    """Install `source` as model `name` (a new model, or the next version of one).

    The version is `version`, else the current one plus one when it is a number, else 1.
    The current config (labels, postprocess, ...) is kept unless `fresh_config`, and must
    suit the new graph: a kept config that names outputs the graph lacks, or a
    postprocess source that is no score output, refuses the add. `features` names the
    columns of a one-input model (see `inferfleet.features`).

    Raises:
        BadArgumentError: for a bad name or a missing source file.
        ModelLoadError: if the file does not load or run, or does not suit the kept
            config (nothing is changed).
    """
    if not re.fullmatch(MODEL_NAME_PATTERN, name):
        raise BadArgumentError(f"model name {name!r} must match {MODEL_NAME_PATTERN}")
    if not source.is_file():
        raise BadArgumentError(f"{source} is not a file")
    folder = models_dir.resolve() / name
    current = read_config(folder) if folder.is_dir() else ModelConfig()
    keeps_config = not fresh_config and kept_config_file(folder) is not None
    config = (ModelConfig() if fresh_config else current).model_copy(update={
        "version": version or _next_version(current.version if folder.is_dir() else None),
        "metrics": {},  # measured on an earlier graph, if any: not on this one
        **({"description": description} if description is not None else {}),
        **({"features": features} if features is not None else {})})
    stage = models_dir.resolve() / f".{name}.adding-{uuid.uuid4().hex[:8]}"
    stage.mkdir(parents=True)
    try:
        shutil.copyfile(source, stage / MODEL_FILE)
        _write_config(stage, config)
        try:
            model = _checked(ModelEntry(name=name, folder=stage, config=config))
        except ModelLoadError as exc:
            if not keeps_config:
                raise
            raise ModelLoadError(
                f"{exc}. That config is {name}'s current one, kept for the new version: "
                f"edit {kept_config_file(folder)} to suit the new graph, or add with "
                "--fresh-config to start the new version without it") from exc
        folder.mkdir(exist_ok=True)
        (folder / "config.toml").unlink(missing_ok=True)  # one config: the new JSON one
        (stage / "config.json").replace(folder / "config.json")
        (stage / MODEL_FILE).replace(folder / MODEL_FILE)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return model


def kept_config_file(folder: Path) -> Path | None:
    """The config file a new version of the model in `folder` would keep, if any."""
    return next((folder / n for n in CONFIG_NAMES if (folder / n).is_file()), None)


def _checked(entry: ModelEntry) -> OnnxModel:
    """The staged model, loaded and run once, or the reason it cannot serve."""
    try:
        model = OnnxModel(entry, intra_op_threads=1)
        model.run(zeros_for(model))
    except InferfleetError:
        raise
    except Exception as exc:  # onnxruntime's own errors
        raise ModelLoadError(f"model {entry.name!r} does not run: {exc}") from exc
    return model


def _next_version(current: str | None) -> str:
    if current is None:
        return "1"
    if not current.isdigit():
        raise BadArgumentError(f"the current version {current!r} is not a number: give the "
                               "new one with --version")
    return str(int(current) + 1)


def _write_config(folder: Path, config: ModelConfig) -> None:
    text = json.dumps(config.model_dump(exclude_none=True), indent=2)
    (folder / "config.json").write_text(text + "\n", encoding="utf-8")
