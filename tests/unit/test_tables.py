"""Tables into a model by feature name, and results out as a DataFrame (no Redis)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from model_factory import CREDIT_FEATURES, credit_table

from inferfleet.errors import BadArgumentError
from inferfleet.features import feature_layout
from inferfleet.models.config import ModelSignature, TensorSpec
from inferfleet.models.registry import Registry
from inferfleet.models.runtime import OnnxModel
from inferfleet.producer.tables import frame_inputs, is_feature_records, records_inputs


def credit_signature(models_dir: Path) -> ModelSignature:
    return OnnxModel(Registry(models_dir).entry("credit"), intra_op_threads=1).signature


def one_input_signature(features: list[str] | None) -> ModelSignature:
    return ModelSignature(name="m", version="1", features=features, outputs=[],
                          inputs=[TensorSpec(name="X", dtype="float32", shape=[3])])


def test_a_dataframe_export_has_its_columns_as_feature_names(models_dir: Path) -> None:
    layout = feature_layout(credit_signature(models_dir))
    assert layout is not None and layout.per_column
    assert layout.names == CREDIT_FEATURES


@settings(max_examples=30, deadline=None)
@given(st.permutations(CREDIT_FEATURES))
def test_columns_in_any_order_feed_the_same_inputs(models_dir: Path,
                                                   order: list[str]) -> None:
    table = credit_table(7).set_index("user_id")
    signature = credit_signature(models_dir)
    inputs, ids = frame_inputs(table[order], signature)
    assert ids == list(table.index)
    for name in CREDIT_FEATURES:
        np.testing.assert_array_equal(inputs[name], table[[name]].to_numpy())
        assert inputs[name].dtype == np.float32 and inputs[name].shape == (7, 1)
    # The same inputs ONNX Runtime gets from the table in-process.
    session = ort.InferenceSession(str(models_dir / "credit" / "model.onnx"))
    direct = session.run(["output_label"], {c: table[[c]].to_numpy() for c in CREDIT_FEATURES})
    np.testing.assert_array_equal(session.run(["output_label"], inputs)[0], direct[0])


@pytest.mark.parametrize(("drop", "add", "named"), [
    (["debt"], [], "has missing columns ['debt']"),
    ([], ["user_id"], "has columns that are not features of the model ['user_id'] (a column "
                      "of ids"),
    (["age"], ["zip"], "missing columns ['age'] and columns that are not features of the "
                       "model ['zip']"),
])
def test_a_missing_or_extra_column_is_refused_with_its_name(
        models_dir: Path, drop: list[str], add: list[str], named: str) -> None:
    table = credit_table(3).drop(columns=["risk", *drop])
    if "user_id" not in add:
        table = table.set_index("user_id")
    for column in add:
        if column not in table:
            table[column] = 1.0
    with pytest.raises(BadArgumentError, match=re.escape(named)):
        frame_inputs(table, credit_signature(models_dir))


def test_a_text_cell_fails_its_row_and_a_column_of_text_is_refused(models_dir: Path) -> None:
    table = credit_table(3).set_index("user_id").drop(columns=["risk"])
    table["income"] = table["income"].astype(object)
    table.loc[table.index[1], "income"] = "unknown"
    inputs, _ = frame_inputs(table, credit_signature(models_dir))
    assert np.isnan(inputs["income"][1, 0]) and not np.isnan(inputs["income"][[0, 2]]).any()
    table["income"] = ["a", "b", "c"]
    with pytest.raises(BadArgumentError, match=r"column 'income' holds no numbers"):
        frame_inputs(table, credit_signature(models_dir))


def test_a_model_without_feature_names_takes_no_table() -> None:
    frame = pd.DataFrame(np.ones((2, 3), np.float32), columns=["a", "b", "c"])
    with pytest.raises(BadArgumentError, match=r"has no feature names.*--features"):
        frame_inputs(frame, one_input_signature(None))


def test_feature_names_of_a_one_input_model_order_its_columns() -> None:
    signature = one_input_signature(["a", "b", "c"])
    frame = pd.DataFrame({"c": [3.0, 6.0], "a": [1.0, 4.0], "b": [2.0, 5.0]})
    inputs, _ = frame_inputs(frame, signature)
    np.testing.assert_array_equal(inputs["X"], [[1, 2, 3], [4, 5, 6]])
    records = [{"b": 2, "c": 3, "a": 1}, {"c": 6, "a": 4, "b": 5}]
    assert is_feature_records(records, signature)
    np.testing.assert_array_equal(records_inputs(records, signature)["X"], [[1, 2, 3], [4, 5, 6]])
    assert not is_feature_records([{"X": [1, 2, 3]}], signature)  # a dict of inputs


def test_a_record_with_a_missing_key_is_refused_naming_it(models_dir: Path) -> None:
    signature = credit_signature(models_dir)
    good = dict.fromkeys(CREDIT_FEATURES, 1.0)
    records = [good, {k: v for k, v in good.items() if k != "income"}]
    with pytest.raises(BadArgumentError, match=r"sample 1: .*missing columns \['income'\]"):
        records_inputs(records, signature)
