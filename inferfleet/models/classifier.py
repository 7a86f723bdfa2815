"""scikit-learn classifiers as skl2onnx exports them by default: probabilities as a tensor.

skl2onnx's default classifier export ends in a ZipMap node: its probability output is a
sequence of {class: probability} maps, one Python dict per sample out of ONNX Runtime,
that no score postprocessing can read (users saw `"success","",nan` for every row). The
ZipMap only rearranges its input, a (samples, classes) float tensor, with the class labels
in an attribute. So a graph whose output comes from a ZipMap is served with that node
replaced by an Identity of its input: the output keeps its name and holds the
probabilities as a 2-D array, the class labels become the model's labels, and the output
is the default postprocess source (label, score). This is what `zipmap=False` at export
time would have given; the graph is changed in memory only, never on disk.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx
from onnx import TensorProto, helper

ZIPMAP = "ZipMap"
_LABEL_ATTRIBUTES = ("classlabels_strings", "classlabels_int64s")


@dataclass(frozen=True)
class UnzippedClassifier:
    """A graph whose ZipMap outputs were made plain probability tensors."""

    graph: bytes  # the serialised model, for ONNX Runtime
    probabilities: str  # the output that now holds (samples, classes) probabilities
    labels: list[str]  # the class of each column, as the ZipMap named them


def unzip_probabilities(model: onnx.ModelProto) -> UnzippedClassifier | None:
    """The model with each ZipMap that feeds a graph output replaced by an Identity; None
    when it has none. `model` is not changed."""
    outputs = {output.name for output in model.graph.output}
    zipmaps = [node for node in model.graph.node
               if node.op_type == ZIPMAP and node.output[0] in outputs]
    if not zipmaps:
        return None
    changed = onnx.ModelProto()
    changed.CopyFrom(model)
    labels: list[str] = []
    for node in changed.graph.node:
        if node.op_type != ZIPMAP or node.output[0] not in outputs:
            continue
        labels = _class_labels(node)
        source, target = node.input[0], node.output[0]
        node.Clear()
        node.CopyFrom(helper.make_node("Identity", [source], [target],
                                       name=f"{target}_unzipped"))
        _retype_output(changed.graph, target, n_classes=len(labels))
    return UnzippedClassifier(changed.SerializeToString(), zipmaps[-1].output[0], labels)


def _class_labels(node: onnx.NodeProto) -> list[str]:
    for attribute in node.attribute:
        if attribute.name == "classlabels_strings":
            return [value.decode("utf-8") for value in attribute.strings]
        if attribute.name == "classlabels_int64s":
            return [str(value) for value in attribute.ints]
    return []


def _retype_output(graph: onnx.GraphProto, name: str, *, n_classes: int) -> None:
    for index, output in enumerate(graph.output):
        if output.name == name:
            graph.output.remove(output)
            graph.output.insert(index, helper.make_tensor_value_info(
                name, TensorProto.FLOAT, ["N", n_classes or None]))
            return
