from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from inferfleet.models.postprocess import postprocess, softmax
from inferfleet.models.registry import Registry
from inferfleet.models.runtime import OnnxModel


def load(models_dir: Path, name: str) -> OnnxModel:
    return OnnxModel(Registry(models_dir).entry(name), intra_op_threads=1)


def test_a_model_with_a_fixed_batch_axis_runs_its_samples_one_by_one(models_dir: Path) -> None:
    model = load(models_dir, "fixed_batch")
    assert model.signature.fixed_batch_size == 1
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    np.testing.assert_array_equal(model.run({"x": x})["doubled"], x * 2)


def test_a_bare_model_is_served_from_its_onnx_signature_alone(models_dir: Path) -> None:
    model = load(models_dir, "bare_digits")
    assert [(s.name, s.dtype, s.shape) for s in model.signature.inputs] == \
        [("pixels", "float32", [64])]
    assert model.output_names == ["label", "probabilities"]


def test_zipmap_outputs_come_back_as_one_dict_per_sample(models_dir: Path) -> None:
    out = load(models_dir, "iris_zipmap").run({"X": np.ones((2, 4), np.float32)})
    assert isinstance(out["output_probability"], list)
    assert len(out["output_probability"]) == 2
    assert set(out["output_probability"][0]) == {0, 1, 2}


def test_postprocess_matches_argmax_of_in_process_onnx_runtime(models_dir: Path) -> None:
    model = load(models_dir, "digits")
    x = np.load(models_dir / "digits" / "holdout.npz")["x"][:50]
    session = ort.InferenceSession(str(models_dir / "digits" / "model.onnx"))
    expected = session.run(["probabilities"], {"pixels": x})[0]
    config = Registry(models_dir).entry("digits").config
    out = postprocess(model.run({"pixels": x}), config.postprocess, model.signature.labels)
    assert out["label"] == [str(i) for i in expected.argmax(axis=1)]
    np.testing.assert_allclose(out["score"], expected.max(axis=1), rtol=1e-6)
    assert len(out["top_k_labels"][0]) == 3


def test_softmax_rows_sum_to_one_even_for_large_scores() -> None:
    probabilities = softmax(np.array([[1000.0, 1000.0], [0.0, 1.0]]))
    np.testing.assert_allclose(probabilities.sum(axis=1), [1, 1])
    assert pytest.approx(probabilities[0, 0]) == 0.5
