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


def _model_with_external_weights(folder: Path, location: str) -> Path:
    """An Add model whose 4 float weights live in the external file `location`."""
    import onnx
    from onnx import TensorProto, helper

    weights = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[4],
                          data_location=TensorProto.EXTERNAL)
    for key, value in {"location": location, "offset": "0", "length": "16"}.items():
        entry = weights.external_data.add()
        entry.key, entry.value = key, value
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "w"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 4])],
        initializer=[weights])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    (folder / "model").mkdir(parents=True)
    onnx.save(model, str(folder / "model" / "model.onnx"))
    return folder / "model"


@pytest.mark.parametrize("where", ["../secret.bin", "/tmp/secret.bin", "link.bin"])
def test_a_model_whose_external_data_lies_outside_its_folder_is_refused(
        tmp_path: Path, where: str) -> None:
    from inferfleet.errors import ModelLoadError

    secret = tmp_path / "secret.bin"
    secret.write_bytes(np.arange(4, dtype=np.float32).tobytes())
    folder = _model_with_external_weights(tmp_path, where)
    (folder / "link.bin").symlink_to(secret)
    with pytest.raises(ModelLoadError, match="outside the model's folder"):
        OnnxModel(Registry(tmp_path).entry("model"), intra_op_threads=1)


def test_external_data_inside_the_folder_is_read(tmp_path: Path) -> None:
    folder = _model_with_external_weights(tmp_path, "weights.bin")
    (folder / "weights.bin").write_bytes(np.arange(4, dtype=np.float32).tobytes())
    model = OnnxModel(Registry(tmp_path).entry("model"), intra_op_threads=1)
    out = model.run({"x": np.ones((2, 4), np.float32)})
    np.testing.assert_array_equal(next(iter(out.values())), [[1, 2, 3, 4]] * 2)


def test_execution_providers_fall_back_to_cpu_with_a_warning_naming_what_is_missing(
        caplog: pytest.LogCaptureFixture) -> None:
    from inferfleet.errors import ConfigurationError
    from inferfleet.models.runtime import choose_providers

    has_cuda = "CUDAExecutionProvider" in ort.get_available_providers()
    assert choose_providers() == (["CUDAExecutionProvider"] if has_cuda else []) + [
        "CPUExecutionProvider"]
    assert not caplog.records  # the default choice is not a problem
    choose_providers(["TensorrtExecutionProvider", "CPUExecutionProvider"])
    assert "TensorrtExecutionProvider" in caplog.text and "onnxruntime-gpu" in caplog.text
    with pytest.raises(ConfigurationError, match="unknown providers \\['CUDAProvider'\\]"):
        choose_providers(["CUDAProvider"])
