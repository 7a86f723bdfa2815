"""What a model is: its optional config file and the signature clients validate against."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from inferfleet.errors import ModelLoadError

CONFIG_NAMES = ("config.json", "config.toml")


class TensorSpec(BaseModel):
    """One input or output: its name, dtype and per-sample shape (None: any length)."""

    model_config = ConfigDict(frozen=True)

    name: str
    dtype: str
    shape: list[int | None]


class PostprocessConfig(BaseModel):
    """Turn a score output into `label` and `score` (and `top_k_*` when k > 1)."""

    model_config = ConfigDict(extra="forbid")

    source: str
    softmax: bool = False
    top_k: int = Field(1, ge=1)


class InputOverride(BaseModel):
    """A config's statement of an input's per-sample shape and dtype."""

    model_config = ConfigDict(extra="forbid")

    shape: list[int | None] | None = None
    dtype: str | None = None


class ModelConfig(BaseModel):
    """`models/<name>/config.json` (or `.toml`); every field is optional."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    version: str = "1"
    description: str = ""
    inputs: dict[str, InputOverride] = Field(default_factory=dict)
    outputs: list[str] | None = None
    labels: list[str] | None = None
    #: The names of the columns of a one-input model, in the model's order (see
    #: `inferfleet.features`).
    features: list[str] | None = None
    postprocess: PostprocessConfig | None = None
    metrics: dict[str, Any] = Field(default_factory=dict)
    #: Answer repeated samples from the fleet-wide result cache unless a submit says
    #: `cache=False` (see `inferfleet.cache`).
    cache: bool = False


class ModelSignature(BaseModel):
    """What a served model takes and gives; published to Redis for producers."""

    name: str
    version: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    #: None when the first axis is dynamic; else the fixed batch size of the ONNX graph.
    fixed_batch_size: int | None = None
    labels: list[str] | None = None
    #: The column names of a one-input model's features, in its order (config).
    features: list[str] | None = None
    metrics: dict[str, Any] = Field(default_factory=dict)
    #: The output holding per-class scores (the postprocess source), one column per
    #: label; None when the model gives no class scores.
    scores: str | None = None
    #: ONNX Runtime execution providers the serving worker uses, best first.
    providers: list[str] = Field(default_factory=list)


def read_config(folder: Path) -> ModelConfig:
    """The folder's config, or defaults when it has none.

    Raises:
        ModelLoadError: if a config exists but is unreadable or has unknown fields.
    """
    for name in CONFIG_NAMES:
        path = folder / name
        if path.is_file():
            return _parse_config(path)
    return ModelConfig()


def _parse_config(path: Path) -> ModelConfig:
    try:
        text = path.read_text(encoding="utf-8")
        raw = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
        return ModelConfig.model_validate(raw)
    except (OSError, ValueError, ValidationError) as exc:
        raise ModelLoadError(f"cannot read model config {path}: {exc}") from exc
