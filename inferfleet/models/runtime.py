"""ONNX Runtime sessions: the only module that imports onnxruntime.

Sessions are built per process (after any fork) and per model, with intra-op threads set
by the caller so that worker processes x threads fit the cores.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from inferfleet.errors import ConfigurationError, ModelLoadError
from inferfleet.models.checks import check_external_data, uses_external_data_anywhere
from inferfleet.models.classifier import unzip_probabilities
from inferfleet.models.config import ModelSignature, PostprocessConfig, TensorSpec
from inferfleet.models.registry import ModelEntry, signature_with_config

logger = logging.getLogger(__name__)

Column = npt.NDArray[Any] | list[Any]

#: ONNX element types that have a numpy dtype we accept on the wire.
_ONNX_DTYPES = {
    "tensor(float)": "float32", "tensor(double)": "float64", "tensor(float16)": "float16",
    "tensor(int8)": "int8", "tensor(int16)": "int16", "tensor(int32)": "int32",
    "tensor(int64)": "int64", "tensor(uint8)": "uint8", "tensor(uint16)": "uint16",
    "tensor(uint32)": "uint32", "tensor(uint64)": "uint64", "tensor(bool)": "bool",
    "tensor(string)": "str",
}


#: Output dtypes a postprocess can read as scores.
_SCORE_DTYPES = {"float16", "float32", "float64"}

#: What a worker asks for when the settings name no providers.
DEFAULT_PROVIDERS = ("CUDAExecutionProvider", "CPUExecutionProvider")
CPU = "CPUExecutionProvider"


def choose_providers(requested: Sequence[str] = ()) -> list[str]:
    """The execution providers to give ONNX Runtime, best first: those `requested`
    (default: CUDA, then CPU) that this onnxruntime build has, with CPU always last.

    A requested provider the build lacks (CUDA needs `onnxruntime-gpu`) is left out with
    a warning, unless nothing was requested (then CPU alone is the expected default).

    Raises:
        ConfigurationError: naming a provider that onnxruntime does not know at all.
    """
    unknown = [name for name in requested if name not in ort.get_all_providers()]
    if unknown:
        raise ConfigurationError(f"execution_providers names unknown providers {unknown}; "
                                 f"onnxruntime knows {ort.get_all_providers()}")
    available = ort.get_available_providers()
    wanted = list(requested) or list(DEFAULT_PROVIDERS)
    chosen = [name for name in wanted if name in available and name != CPU] + [CPU]
    missing = [name for name in wanted if name not in available]
    if missing and requested:
        logger.warning("execution providers %s were asked for, but this onnxruntime build "
                       "has only %s (CUDA needs onnxruntime-gpu and a GPU): using %s",
                       missing, available, chosen)
    return chosen


class OnnxModel:
    """One model's InferenceSession, run on batches whose first axis is the samples."""

    def __init__(self, entry: ModelEntry, *, intra_op_threads: int,
                 providers: Sequence[str] = ()) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = 1
        # The cores are shared with Redis and Celery's consumer thread: spinning
        # intra-op threads would steal their time between batches.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        graph = check_external_data(entry.path, name=entry.name)
        self.config = entry.config
        # A classifier exported with skl2onnx's default ZipMap is served with tensor
        # probabilities (see classifier.py); not one that keeps external data, whose
        # graph must be read from its file.
        unzipped = None if uses_external_data_anywhere(graph) else unzip_probabilities(graph)
        chosen = choose_providers(providers)
        try:
            self.session = ort.InferenceSession(
                unzipped.graph if unzipped else str(entry.path), sess_options=options,
                providers=chosen)
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise ModelLoadError(f"cannot load model {entry.name!r}: {exc}") from exc
        self.providers: list[str] = self.session.get_providers()
        if self.providers == [CPU]:
            level = logging.WARNING if chosen != [CPU] else logging.INFO
            logger.log(level, "model %s runs on CPU (asked for %s; onnxruntime %s has %s)",
                       entry.name, chosen, ort.__version__, ort.get_available_providers())
        graph_signature = self._onnx_signature(entry)
        _check_config_inputs(entry, graph_signature)
        signature = signature_with_config(graph_signature, entry.config)
        _check_features(entry, signature)
        if unzipped is not None and signature.labels is None:
            signature = signature.model_copy(update={"labels": unzipped.labels})
        #: Turns a score output into label and score: the config's, else a classifier's
        #: probabilities.
        self.postprocess = entry.config.postprocess or (
            PostprocessConfig(source=unzipped.probabilities) if unzipped else None)
        self.output_names = self._output_names(entry, signature)
        self.signature = signature.model_copy(update={
            "scores": self.postprocess.source if self.postprocess else None})
        self._check_postprocess(entry)

    def _onnx_signature(self, entry: ModelEntry) -> ModelSignature:
        inputs = [_tensor_spec(arg) for arg in self.session.get_inputs()]
        outputs = [_tensor_spec(arg) for arg in self.session.get_outputs()]
        first_dims = {arg.shape[0] for arg in self.session.get_inputs() if arg.shape}
        fixed = next((d for d in first_dims if isinstance(d, int) and d > 0), None)
        return ModelSignature(name=entry.name, version="1", inputs=inputs, outputs=outputs,
                              fixed_batch_size=fixed)

    def _output_names(self, entry: ModelEntry, signature: ModelSignature) -> list[str]:
        known = [spec.name for spec in signature.outputs]
        chosen = entry.config.outputs or known
        missing = sorted(set(chosen) - set(known))
        if missing:
            raise ModelLoadError(f"model {entry.name!r} config names outputs {missing} that "
                                 f"the graph lacks; it has {known}")
        return chosen

    def _check_postprocess(self, entry: ModelEntry) -> None:
        """Raises: ModelLoadError: if the postprocess source cannot give label and score."""
        if self.postprocess is None:
            return
        source = self.postprocess.source
        specs = {spec.name: spec for spec in self.signature.outputs}
        where = f"model {entry.name!r} config: postprocess source {source!r}"
        if source not in self.output_names:
            raise ModelLoadError(f"{where} is not among the outputs served, "
                                 f"{self.output_names}; name one of them")
        spec = specs[source]
        if spec.dtype not in _SCORE_DTYPES or len(spec.shape) != 1:
            raise ModelLoadError(
                f"{where} must be a 2-D score output (samples, classes) of floats, but it "
                f"is {spec.dtype} with per-sample shape {spec.shape}; name another output, "
                "or remove postprocess from the config")
        labels, classes = self.signature.labels, spec.shape[0]
        if labels is not None and classes is not None and len(labels) != classes:
            raise ModelLoadError(f"model {entry.name!r} config gives {len(labels)} labels "
                                 f"for the {classes} classes of output {source!r}")

    def run(self, inputs: Mapping[str, npt.NDArray[Any]]) -> dict[str, Column]:
        """Outputs for a batch: every column has one row per input row.

        Models with a fixed batch size are run in chunks of that size, the last one
        padded by repeating its final row.
        """
        fixed = self.signature.fixed_batch_size
        if fixed is None:
            return self._run_once(inputs)
        rows = len(next(iter(inputs.values())))
        chunks = [self._run_padded(inputs, start, min(start + fixed, rows), fixed)
                  for start in range(0, rows, fixed)]
        return {name: _concat([chunk[name] for chunk in chunks]) for name in self.output_names}

    def _run_once(self, inputs: Mapping[str, npt.NDArray[Any]]) -> dict[str, Column]:
        values = self.session.run(self.output_names, dict(inputs))
        return dict(zip(self.output_names, values, strict=True))

    def _run_padded(self, inputs: Mapping[str, npt.NDArray[Any]], start: int, stop: int,
                    size: int) -> dict[str, Column]:
        pad = size - (stop - start)
        chunk = {name: np.concatenate([x[start:stop]] + [x[stop - 1:stop]] * pad)
                 if pad else x[start:stop] for name, x in inputs.items()}
        out = self._run_once(chunk)
        return {name: column[: stop - start] for name, column in out.items()}


def _check_config_inputs(entry: ModelEntry, signature: ModelSignature) -> None:
    """Raises: ModelLoadError: if the config states inputs the graph does not have."""
    known = [spec.name for spec in signature.inputs]
    unknown = sorted(set(entry.config.inputs) - set(known))
    if unknown:
        raise ModelLoadError(f"model {entry.name!r} config states inputs {unknown} that the "
                             f"graph lacks; its inputs are {known}")


def _check_features(entry: ModelEntry, signature: ModelSignature) -> None:
    """Raises: ModelLoadError: for feature names that do not fit the model's one input."""
    features = entry.config.features
    if features is None:
        return
    widths = [spec.shape for spec in signature.inputs]
    if len(widths) != 1 or len(widths[0]) != 1 or widths[0][0] not in (None, len(features)):
        raise ModelLoadError(
            f"model {entry.name!r} config names {len(features)} features, but its inputs "
            f"are {[(s.name, s.shape) for s in signature.inputs]}: feature names fit a model "
            "with one input of one row of that many values per sample")
    if len(set(features)) != len(features):
        raise ModelLoadError(f"model {entry.name!r} config names a feature twice: {features}")


def _tensor_spec(arg: Any) -> TensorSpec:
    dtype = _ONNX_DTYPES.get(arg.type, arg.type)
    dims = list(arg.shape or [])[1:]
    return TensorSpec(name=arg.name, dtype=dtype,
                      shape=[d if isinstance(d, int) and d >= 0 else None for d in dims])


def _concat(columns: list[Column]) -> Column:
    if all(isinstance(c, np.ndarray) for c in columns):
        return np.concatenate(columns)
    return [row for column in columns for row in column]


def zeros_for(model: OnnxModel) -> dict[str, npt.NDArray[Any]]:
    """One all-zero sample for each of the model's inputs (a warm-up run)."""
    return {spec.name: np.zeros((1, *[d or 1 for d in spec.shape]), dtype=spec.dtype)
            for spec in model.signature.inputs}
