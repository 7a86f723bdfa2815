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
from inferfleet.models.checks import check_external_data
from inferfleet.models.config import ModelSignature, TensorSpec
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
        check_external_data(entry.path, name=entry.name)
        self.config = entry.config
        chosen = choose_providers(providers)
        try:
            self.session = ort.InferenceSession(
                str(entry.path), sess_options=options, providers=chosen)
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise ModelLoadError(f"cannot load model {entry.name!r}: {exc}") from exc
        self.providers: list[str] = self.session.get_providers()
        if self.providers == [CPU]:
            level = logging.WARNING if chosen != [CPU] else logging.INFO
            logger.log(level, "model %s runs on CPU (asked for %s; onnxruntime %s has %s)",
                       entry.name, chosen, ort.__version__, ort.get_available_providers())
        self.signature = signature_with_config(self._onnx_signature(entry), entry.config)
        self.output_names = self._output_names(entry)

    def _onnx_signature(self, entry: ModelEntry) -> ModelSignature:
        inputs = [_tensor_spec(arg) for arg in self.session.get_inputs()]
        outputs = [_tensor_spec(arg) for arg in self.session.get_outputs()]
        first_dims = {arg.shape[0] for arg in self.session.get_inputs() if arg.shape}
        fixed = next((d for d in first_dims if isinstance(d, int) and d > 0), None)
        return ModelSignature(name=entry.name, version="1", inputs=inputs, outputs=outputs,
                              fixed_batch_size=fixed)

    def _output_names(self, entry: ModelEntry) -> list[str]:
        known = [spec.name for spec in self.signature.outputs]
        chosen = entry.config.outputs or known
        missing = sorted(set(chosen) - set(known))
        if missing:
            raise ModelLoadError(f"model {entry.name!r} config names outputs {missing} that "
                                 f"the graph lacks; it has {known}")
        return chosen

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
