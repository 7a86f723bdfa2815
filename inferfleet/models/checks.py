"""Checks on a model file before ONNX Runtime opens it.

A model may keep its weights in external data files; their locations are written in the
model and could point anywhere (`../../etc/shadow`, an absolute path, a symlink out). Only
files inside the model's own folder are allowed, whatever ONNX Runtime's version checks.
"""

from __future__ import annotations

from pathlib import Path

import onnx
from onnx.external_data_helper import ExternalDataInfo, _get_all_tensors, uses_external_data

from inferfleet.errors import ModelLoadError


def check_external_data(model_path: Path, *, name: str) -> onnx.ModelProto:
    """The model's graph (without its external data), once its external data was found
    inside its folder.

    Raises:
        ModelLoadError: naming the tensor and the location.
    """
    folder = model_path.parent.resolve()
    try:
        model = onnx.load(str(model_path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError and friends
        raise ModelLoadError(f"model {name!r}: {model_path.name} is not an ONNX model: "
                             f"{exc}") from exc
    for tensor in _get_all_tensors(model):
        if not uses_external_data(tensor):
            continue
        location = ExternalDataInfo(tensor).location
        resolved = (folder / location).resolve()
        if Path(location).is_absolute() or not resolved.is_relative_to(folder):
            raise ModelLoadError(
                f"model {name!r}: tensor {tensor.name!r} keeps its data at {location!r}, "
                f"outside the model's folder; only files inside {folder} are read")
        if not resolved.is_file():
            raise ModelLoadError(f"model {name!r}: tensor {tensor.name!r} keeps its data in "
                                 f"{location!r}, which does not exist")
    return model


def uses_external_data_anywhere(model: onnx.ModelProto) -> bool:
    """Whether any tensor of the graph keeps its data in a file of its own."""
    return any(uses_external_data(tensor) for tensor in _get_all_tensors(model))
