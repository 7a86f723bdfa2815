import gc
import weakref
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


def test_a_model_let_go_is_freed_without_the_cyclic_collector(models_dir: Path) -> None:
    # A worker freezes what it loaded at start out of garbage collection (gc.freeze): a
    # model replaced by a new version must still be freed, by reference counting alone.
    model = load(models_dir, "digits")
    x = np.zeros((2, 64), dtype=np.float32)
    outputs = postprocess(model.run({"pixels": x}), model.postprocess, model.signature.labels)
    gone, session_gone = weakref.ref(model), weakref.ref(model.session)
    gc.disable()
    try:
        del model, outputs
        assert gone() is None and session_gone() is None
    finally:
        gc.enable()


def test_a_bare_model_is_served_from_its_onnx_signature_alone(models_dir: Path) -> None:
    model = load(models_dir, "bare_digits")
    assert [(s.name, s.dtype, s.shape) for s in model.signature.inputs] == \
        [("pixels", "float32", [64])]
    assert model.output_names == ["label", "probabilities"]


def test_a_zipmap_classifier_gives_probabilities_as_an_array_with_label_and_score(
        models_dir: Path) -> None:
    model = load(models_dir, "iris_zipmap")
    x = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 2.8, 4.3, 1.3]],
                 np.float32)
    out = postprocess(model.run({"X": x}), model.postprocess, model.signature.labels)
    # What the export gives unchanged: one {class: probability} dict per sample.
    session = ort.InferenceSession(str(models_dir / "iris_zipmap" / "model.onnx"))
    labels, maps = session.run(None, {"X": x})
    expected = np.array([[row[k] for k in (0, 1, 2)] for row in maps], np.float32)
    np.testing.assert_allclose(out["output_probability"], expected, rtol=1e-6)
    assert model.signature.labels == ["0", "1", "2"]
    assert model.signature.scores == "output_probability"
    assert out["label"] == [str(label) for label in labels]
    np.testing.assert_allclose(out["score"], expected.max(axis=1), rtol=1e-6)


def test_string_class_labels_of_a_zipmap_export_become_the_labels(tmp_path: Path) -> None:
    from skl2onnx import to_onnx
    from sklearn.linear_model import LogisticRegression

    x = np.array([[0.0], [1.0], [2.0], [3.0]], np.float32)
    classifier = LogisticRegression().fit(x, ["low", "low", "high", "high"])
    (tmp_path / "grades").mkdir()
    (tmp_path / "grades" / "model.onnx").write_bytes(
        to_onnx(classifier, x[:1], target_opset={"": 17, "ai.onnx.ml": 3}).SerializeToString())
    model = load(tmp_path, "grades")
    out = postprocess(model.run({"X": x}), model.postprocess, model.signature.labels)
    assert model.signature.labels == ["high", "low"]  # the classifier's classes_, sorted
    assert out["label"] == list(classifier.predict(x))


@pytest.mark.parametrize(("config", "refusal"), [
    ({"postprocess": {"source": "output_label"}}, "must be a 2-D score output"),
    ({"postprocess": {"source": "nope"}}, "is not among the outputs served"),
    ({"outputs": ["output_label"], "postprocess": {"source": "output_probability"}},
     "is not among the outputs served"),
    ({"labels": ["a", "b"]}, "gives 2 labels for the 3 classes"),
])
def test_a_postprocess_that_cannot_work_is_refused_at_load(
        models_dir: Path, tmp_path: Path, config: dict[str, object], refusal: str) -> None:
    import json
    import shutil

    from inferfleet.errors import ModelLoadError

    shutil.copytree(models_dir / "iris_zipmap", tmp_path / "iris")
    (tmp_path / "iris" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match=refusal):
        load(tmp_path, "iris")


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


def test_a_config_stating_inputs_the_graph_lacks_is_refused(models_dir: Path,
                                                            tmp_path: Path) -> None:
    import shutil

    from inferfleet.errors import ModelLoadError

    shutil.copytree(models_dir / "iris_zipmap", tmp_path / "iris")
    (tmp_path / "iris" / "config.json").write_text('{"inputs": {"pixels": {"shape": [64]}}}')
    with pytest.raises(ModelLoadError, match=r"states inputs \['pixels'\] that the graph lacks"):
        load(tmp_path, "iris")


def test_feature_names_given_at_models_add_are_published_and_checked(
        models_dir: Path, tmp_path: Path) -> None:
    from inferfleet.errors import ModelLoadError
    from inferfleet.features import feature_layout
    from inferfleet.models.adding import add_model

    source = models_dir / "iris_zipmap" / "model.onnx"
    names = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
    model = add_model(tmp_path, source, "iris", features=names)
    assert model.signature.features == names
    layout = feature_layout(load(tmp_path, "iris").signature)  # read back from its config
    assert layout is not None and not layout.per_column and layout.names == names
    with pytest.raises(ModelLoadError, match="config names 3 features, but its inputs"):
        add_model(tmp_path, source, "iris", features=names[:3])
    assert load(tmp_path, "iris").signature.version == "1"  # the refused add changed nothing
