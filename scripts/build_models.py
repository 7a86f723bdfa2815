"""Build the shipped models reproducibly from scikit-learn's digits data set.

    python scripts/build_models.py [--out models]

Writes, for each model, `<out>/<name>/model.onnx` and `config.json` (with its accuracy on
the held-out split), and `<out>/digits/holdout.npz`: the held-out rows and labels that the
demo pushes through the fleet. Needs the `build` extra (scikit-learn, skl2onnx, onnx).
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
from skl2onnx import to_onnx
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier

SEED = 0
TARGET_OPSET = {"": 17, "ai.onnx.ml": 3}
LABELS = [str(d) for d in range(10)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "models")
    out = parser.parse_args().out
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)  # pixels 0..16 scaled to 0..1
    x_train, x_test, y_train, y_test = train_test_split(
        x, digits.target, test_size=0.3, random_state=SEED, stratify=digits.target)
    small = LogisticRegression(max_iter=5000, random_state=SEED)
    heavy = MLPClassifier(hidden_layer_sizes=(1024, 1024), max_iter=60, random_state=SEED)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        small.fit(x_train, y_train)
        heavy.fit(x_train, y_train)
    write_model(out / "digits", small, x_test, y_test,
                "Logistic regression on 8x8 digits (64 pixels scaled to 0..1)")
    write_model(out / "digits_mlp", heavy, x_test, y_test,
                "Dense network 64-1024-1024-10 (ReLU) on 8x8 digits")
    np.savez_compressed(out / "digits" / "holdout.npz", x=x_test, y=y_test.astype(np.int64))


def write_model(folder: Path, estimator: object, x_test: np.ndarray, y_test: np.ndarray,
                description: str) -> None:
    """Convert, check the ONNX graph against scikit-learn, and record held-out accuracy."""
    folder.mkdir(parents=True, exist_ok=True)
    onx = to_onnx(estimator, x_test[:1], target_opset=TARGET_OPSET,
                  options={id(estimator): {"zipmap": False}})
    onx.graph.input[0].name = "pixels"  # a name users can read in signatures
    for node in onx.graph.node:
        node.input[:] = ["pixels" if name == "X" else name for name in node.input]
    path = folder / "model.onnx"
    path.write_bytes(onx.SerializeToString())
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    probabilities = session.run(["probabilities"], {"pixels": x_test})[0]
    onnx_accuracy = float((probabilities.argmax(axis=1) == y_test).mean())
    sklearn_accuracy = float(estimator.score(x_test, y_test))  # type: ignore[attr-defined]
    config = {
        "version": "1",
        "description": description,
        "outputs": ["probabilities"],
        "labels": LABELS,
        "postprocess": {"source": "probabilities", "top_k": 3},
        "metrics": {"holdout_accuracy": round(onnx_accuracy, 4),
                    "sklearn_holdout_accuracy": round(sklearn_accuracy, 4),
                    "holdout_rows": len(y_test), "split": "digits 70/30, stratified, seed 0"},
    }
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    print(f"{folder.name}: held-out accuracy {onnx_accuracy:.4f} (scikit-learn "
          f"{sklearn_accuracy:.4f}), {path.stat().st_size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
