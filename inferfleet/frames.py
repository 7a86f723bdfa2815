"""Job results as one pandas DataFrame: a row per sample, indexed by sample id, with its
status, label, score, a probability column per class, and its error.

pandas is optional (the `frames` extra); only these functions import it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from inferfleet.models.config import ModelSignature
from inferfleet.schemas import JobResult

#: The prefix of the per-class probability columns: `prob_<class>`.
PROBABILITY_PREFIX = "prob_"


def results_frame(results: Sequence[JobResult], *, signature: ModelSignature | None = None,
                  index_name: str = "id") -> Any:
    """The samples of `results`, in order, as one DataFrame.

    With the model's `signature`, its class scores (`signature.scores`) become one
    `prob_<class>` column per class, named by its labels.

    Raises:
        ConfigurationError: if pandas is not installed.
    """
    from inferfleet.producer.tables import pandas

    pd = pandas()
    parts = [_columns(result, signature) for result in results]
    data: dict[str, Any] = {name: np.concatenate([part[name] for part in parts]) if parts else []
            for name in (parts[0] if parts else _columns_of_nothing(signature))}
    ids = [sample_id for result in results for sample_id in result.sample_ids]
    return pd.DataFrame(data, index=pd.Index(ids, name=index_name))


def class_columns(signature: ModelSignature | None) -> list[str]:
    """The `prob_<class>` column names the model's results have, in class order."""
    if signature is None or signature.scores is None or not signature.labels:
        return []
    return [f"{PROBABILITY_PREFIX}{label}" for label in signature.labels]


def _columns(result: JobResult, signature: ModelSignature | None
             ) -> dict[str, npt.NDArray[Any]]:
    n = len(result.sample_ids)
    ok = np.array([status.value == "success" for status in result.sample_status], bool)
    errors = {error.index: error for error in result.errors}
    codes = np.full(n, None, dtype=object)
    messages = np.full(n, None, dtype=object)
    for index in np.flatnonzero(~ok):
        error = errors.get(int(index)) or result.error
        if error is not None:
            codes[index], messages[index] = error.code.value, error.message
    columns: dict[str, npt.NDArray[Any]] = {
        "status": np.array([status.value for status in result.sample_status], dtype=object),
        "label": _masked(_output(result, "label"), ok, n, text=True),
        "score": _masked(_output(result, "score"), ok, n, text=False),
    }
    names = class_columns(signature)
    scores = _output(result, signature.scores) if signature and signature.scores else None
    for j, name in enumerate(names):
        column = None if scores is None else np.asarray(scores, dtype=np.float64)[:, j]
        columns[name] = _masked(column, ok, n, text=False)
    columns["error_code"], columns["error_message"] = codes, messages
    return columns


def _columns_of_nothing(signature: ModelSignature | None) -> list[str]:
    return ["status", "label", "score", *class_columns(signature), "error_code",
            "error_message"]


def _output(result: JobResult, name: str) -> Any:
    try:
        return result.column(name)
    except KeyError:  # a model without postprocessing has no label or score
        return None


def _masked(column: Any, ok: npt.NDArray[np.bool_], n: int, *, text: bool
            ) -> npt.NDArray[Any]:
    """The column with failed samples' rows blank (None or NaN): theirs are filler."""
    if text:
        out = np.full(n, None, dtype=object)
        if column is not None:
            values = [None if v is None else str(v) for v in list(column)]
            out[ok] = np.asarray(values, dtype=object)[ok]
        return out
    out = np.full(n, np.nan, dtype=np.float64)
    if column is not None:
        out[ok] = np.asarray(column, dtype=np.float64)[ok]
    return out
