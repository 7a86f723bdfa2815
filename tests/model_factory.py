"""Real ONNX models for the shapes of model the registry must serve, built in a folder.

- pair_sum:     two inputs (a sample is a dict of arrays), output a + b
- iris_zipmap:  skl2onnx classifier whose probabilities are a list of dicts (ZipMap)
- fixed_batch:  an input whose batch axis is fixed to 1 (samples run one by one)
- lookup:       Gather of int64 indices; ONNX Runtime raises on an out-of-range index
- bare_digits:  the shipped digits model with no config at all
- credit:       a scikit-learn pipeline trained on a DataFrame, exported as skl2onnx
                documents it (`to_onnx(pipeline, df[:1])`, default ZipMap): one input per
                column, named by it, string classes
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import pandas as pd
from onnx import TensorProto, helper, numpy_helper
from skl2onnx import to_onnx
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

REPO_MODELS = Path(__file__).resolve().parents[1] / "models"
OPSET = [helper.make_opsetid("", 17)]
LOOKUP_TABLE = np.arange(20, dtype=np.float32).reshape(10, 2)


def build_models_dir(target: Path) -> Path:
    """A models folder holding the shipped models and every test model."""
    target.mkdir(parents=True, exist_ok=True)
    for shipped in ("digits", "digits_mlp"):
        shutil.copytree(REPO_MODELS / shipped, target / shipped, dirs_exist_ok=True)
    _save(target / "pair_sum", _pair_sum())
    _save(target / "iris_zipmap", _iris_zipmap())
    _save(target / "fixed_batch", _fixed_batch())
    _save(target / "lookup", _lookup())
    _save(target / "credit", credit_model())
    (target / "bare_digits").mkdir(exist_ok=True)
    shutil.copy(REPO_MODELS / "digits" / "model.onnx", target / "bare_digits" / "model.onnx")
    return target


def _save(folder: Path, model: onnx.ModelProto) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(folder / "model.onnx"))


def _graph_model(nodes: list[onnx.NodeProto], inputs: list[onnx.ValueInfoProto],
                 outputs: list[onnx.ValueInfoProto], initializers: list[onnx.TensorProto],
                 name: str) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, name, inputs, outputs, initializer=initializers)
    model = helper.make_model(graph, opset_imports=OPSET)
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _pair_sum() -> onnx.ModelProto:
    a = helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", 3])
    b = helper.make_tensor_value_info("b", TensorProto.FLOAT, ["N", 3])
    out = helper.make_tensor_value_info("sum", TensorProto.FLOAT, ["N", 3])
    return _graph_model([helper.make_node("Add", ["a", "b"], ["sum"])], [a, b], [out], [],
                        "pair_sum")


def _fixed_batch() -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("doubled", TensorProto.FLOAT, [1, 4])
    two = numpy_helper.from_array(np.array(2.0, dtype=np.float32), "two")
    return _graph_model([helper.make_node("Mul", ["x", "two"], ["doubled"])], [x], [y], [two],
                        "fixed_batch")


def _lookup() -> onnx.ModelProto:
    index = helper.make_tensor_value_info("index", TensorProto.INT64, ["N", 1])
    rows = helper.make_tensor_value_info("rows", TensorProto.FLOAT, ["N", 1, 2])
    table = numpy_helper.from_array(LOOKUP_TABLE, "table")
    node = helper.make_node("Gather", ["table", "index"], ["rows"], axis=0)
    return _graph_model([node], [index], [rows], [table], "lookup")


def _iris_zipmap() -> onnx.ModelProto:
    iris = load_iris()
    x = iris.data.astype(np.float32)
    classifier = LogisticRegression(max_iter=1000, random_state=0).fit(x, iris.target)
    return to_onnx(classifier, x[:1], target_opset={"": 17, "ai.onnx.ml": 3})


CREDIT_FEATURES = ["age", "income", "debt", "years_employed"]


def credit_table(rows: int, *, seed: int = 0) -> pd.DataFrame:
    """A credit-scoring table: float32 features, a `user_id` column and the `risk` class."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({
        "user_id": [f"u{seed}-{i:05d}" for i in range(rows)],
        "age": rng.integers(18, 80, rows).astype(np.float32),
        "income": rng.lognormal(10, 0.5, rows).astype(np.float32),
        "debt": rng.lognormal(9, 1.0, rows).astype(np.float32),
        "years_employed": rng.integers(0, 40, rows).astype(np.float32),
    })
    score = frame["income"] / 20000 - frame["debt"] / 8000 + frame["years_employed"] / 20
    frame["risk"] = np.where(score + rng.normal(0, 0.5, rows) > 1.0, "low", "high")
    return frame


def credit_model() -> onnx.ModelProto:
    frame = credit_table(2000)
    features = frame[CREDIT_FEATURES]
    pipeline = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    pipeline.fit(features, frame["risk"])
    return to_onnx(pipeline, features[:1], target_opset={"": 17, "ai.onnx.ml": 3})
