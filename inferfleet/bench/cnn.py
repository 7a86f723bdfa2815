"""The bench's convolutional network on image-sized inputs, built with `onnx.helper`.

A real conv stack on 3x32x32 float32 samples (12 KiB each, CIFAR-sized), shaped like a
small VGG: three stages of two 3x3 convolutions with ReLU (64, 128, 256 channels), each
stage closed by 2x2 max pooling, then global average pooling and a dense layer to 10
classes, softmax: ~300 MFLOP a sample, so that, as with real image models, computing a
sample costs far more than moving its bytes (a first, three-convolution version ran
11k samples/s in-process, faster than Redis could move its messages). Its weights are drawn from
a seeded normal distribution (He initialisation), not trained: the bench measures how
fast samples go through, and no prediction of it means anything. Built in a folder of
the bench's own at run time, so that it is never served as a model one could trust.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

NAME = "cnn"
SAMPLE_SHAPE = (3, 32, 32)
CHANNELS = (64, 128, 256)
CONVS_PER_STAGE = 2
CLASSES = 10


def build_cnn(folder: Path, *, seed: int = 0) -> Path:
    """Write `<folder>/cnn/model.onnx` and its config; the model's folder."""
    rng = np.random.default_rng(seed)
    nodes, weights = [], []
    current, depth = "pixels", SAMPLE_SHAPE[0]
    for stage, channels in enumerate(CHANNELS):
        for layer in range(CONVS_PER_STAGE):
            name = f"s{stage}c{layer}"
            kernel = rng.normal(0, np.sqrt(2 / (depth * 9)), (channels, depth, 3, 3))
            weights += [_tensor(f"{name}w", kernel), _tensor(f"{name}b", np.zeros(channels))]
            nodes += [helper.make_node("Conv", [current, f"{name}w", f"{name}b"],
                                       [f"{name}conv"], pads=[1, 1, 1, 1]),
                      helper.make_node("Relu", [f"{name}conv"], [f"{name}relu"])]
            current, depth = f"{name}relu", channels
        nodes.append(helper.make_node("MaxPool", [current], [f"s{stage}pool"],
                                      kernel_shape=[2, 2], strides=[2, 2]))
        current = f"s{stage}pool"
    dense = rng.normal(0, np.sqrt(2 / depth), (depth, CLASSES))
    weights += [_tensor("dense", dense), _tensor("dense_b", np.zeros(CLASSES))]
    nodes += [
        helper.make_node("GlobalAveragePool", [current], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["features"]),
        helper.make_node("Gemm", ["features", "dense", "dense_b"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
    ]
    graph = helper.make_graph(
        nodes, NAME,
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["batch", *SAMPLE_SHAPE])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", CLASSES])],
        initializer=weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    target = folder / NAME
    target.mkdir(parents=True, exist_ok=True)
    (target / "model.onnx").write_bytes(model.SerializeToString())
    (target / "config.json").write_text(json.dumps({
        "version": "1",
        "description": "VGG-like: 2 x (conv 3x3 + ReLU) per stage (64, 128, 256), max-pool, "
                       "global average pool, dense to 10, softmax, on 3x32x32; untrained "
                       "(seeded He weights), for the bench only",
        "outputs": ["probabilities"],
    }, indent=2) + "\n")
    return target


def cnn_rows(n: int, *, seed: int = 0) -> np.ndarray:
    """`n` image-sized samples, values in [0, 1)."""
    return np.random.default_rng(seed).random((n, *SAMPLE_SHAPE), dtype=np.float32)


def _tensor(name: str, values: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(values.astype(np.float32), name)
