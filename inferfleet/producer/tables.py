"""Tables into `submit`, results out as tables: pandas DataFrames and lists of feature dicts,
matched to a model's features by name (`inferfleet.features`).

pandas is optional (the `frames` extra): a DataFrame is recognised without importing it,
and only `JobResult.to_frame` and `Client.predict_frame` need it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from inferfleet.errors import BadArgumentError, ConfigurationError
from inferfleet.features import FeatureLayout, feature_layout, no_names_error
from inferfleet.models.config import ModelSignature


def is_data_frame(samples: Any) -> bool:
    """Whether `samples` is a pandas DataFrame (recognised without importing pandas)."""
    return type(samples).__name__ == "DataFrame" and hasattr(samples, "columns") and \
        hasattr(samples, "to_numpy")


def is_feature_records(samples: Any, signature: ModelSignature | None) -> bool:
    """Whether `samples` is a list of {feature: value} dicts for a model with feature names
    (rather than per-sample dicts of input arrays)."""
    if signature is None or not isinstance(samples, list | tuple) or not samples or \
            not isinstance(samples[0], Mapping):
        return False
    layout = feature_layout(signature)
    # {"X": row} for a one-input model is a dict of inputs; per-column inputs are features.
    return layout is not None and (layout.per_column or layout.input_name not in samples[0])


def frame_inputs(frame: Any, signature: ModelSignature
                 ) -> tuple[dict[str, npt.NDArray[Any]], list[str]]:
    """A DataFrame's columns as the model's inputs, matched by name; and its index, as the
    sample ids.

    Raises:
        BadArgumentError: naming missing, extra or non-numeric columns, or for a model
            without feature names.
    """
    layout = _layout(signature)
    columns = [str(c) for c in frame.columns]
    selected = _numeric(frame.iloc[:, layout.order(columns)], layout)
    return layout.inputs(selected.to_numpy(dtype=layout.matrix_dtype())), \
        [str(i) for i in frame.index]


def _numeric(frame: Any, layout: FeatureLayout) -> Any:
    """The frame with text cells of number columns as NaN (that row then fails alone, as
    `non_finite`, and the rest run).

    Raises:
        BadArgumentError: for a column none of whose cells is a number (an id column
            named as a feature, most likely).
    """
    pd = pandas()
    texts = [name for name, dtype in zip(frame.columns, frame.dtypes, strict=True)
             if getattr(dtype, "kind", "O") not in "biuf"]
    if not texts:
        return frame
    frame = frame.copy()
    for name in texts:
        numbers = pd.to_numeric(frame[name], errors="coerce")
        if len(frame) and numbers.isna().all() and frame[name].notna().any():
            raise BadArgumentError(f"model {layout.model!r}: column {str(name)!r} holds no "
                                   "numbers; only numbers feed the model")
        frame[name] = numbers
    return frame


def records_inputs(records: Sequence[Mapping[str, Any]], signature: ModelSignature
                   ) -> dict[str, npt.NDArray[Any]]:
    """A list of {feature: value} dicts as the model's inputs, matched by name.

    Raises:
        BadArgumentError: naming a record with missing or extra keys, or a value that is
            not a number.
    """
    layout = _layout(signature)
    wanted = set(layout.names)
    for index, record in enumerate(records):
        if set(record) != wanted:
            try:
                layout.order([str(k) for k in record])
            except BadArgumentError as exc:
                raise BadArgumentError(f"sample {index}: {exc}") from None
    try:
        matrix = np.array([[record[name] for name in layout.names] for record in records],
                          dtype=layout.matrix_dtype())
    except (TypeError, ValueError) as exc:
        raise BadArgumentError(f"feature values must be numbers: {exc}") from exc
    return layout.inputs(matrix)


def _layout(signature: ModelSignature) -> FeatureLayout:
    layout = feature_layout(signature)
    if layout is None:
        raise no_names_error(signature)
    return layout


def pandas() -> Any:
    """pandas, imported on first use.

    Raises:
        ConfigurationError: if it is not installed.
    """
    try:
        import pandas as pd
    except ImportError as exc:
        raise ConfigurationError("DataFrames need pandas: pip install "
                                 "'inferfleet[frames]'") from exc
    return pd
