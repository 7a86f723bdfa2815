"""Job results as columns, a row per sample: status, label, score, a probability column
per class, and the error. `result_columns` builds them with numpy alone (`submit FILE`
writes them); `results_frame` makes them one pandas DataFrame indexed by sample id.

pandas is optional (the `frames` extra); only `results_frame` imports it.
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
    names = class_columns(signature)
    scores = signature.scores if signature is not None else None
    parts = [result_columns(result, scores, len(names), blank=None) for result in results]
    joined = {name: np.concatenate([part[name] for part in parts]) if parts else
              np.empty((0, len(names)) if name == "probabilities" else 0)
              for name in RESULT_COLUMNS}
    probabilities = joined.pop("probabilities")
    data = {name: joined[name] for name in ("status", "label", "score")}
    data.update({name: probabilities[:, j] for j, name in enumerate(names)})
    data.update({name: joined[name] for name in ("error_code", "error_message")})
    ids = [sample_id for result in results for sample_id in result.sample_ids]
    return pd.DataFrame(data, index=pd.Index(ids, name=index_name))


def class_columns(signature: ModelSignature | None) -> list[str]:
    """The `prob_<class>` column names the model's results have, in class order."""
    if signature is None or signature.scores is None or not signature.labels:
        return []
    return [f"{PROBABILITY_PREFIX}{label}" for label in signature.labels]


#: The columns `result_columns` gives.
RESULT_COLUMNS = ("status", "label", "score", "probabilities", "error_code", "error_message")


def result_columns(result: JobResult, scores_output: str | None, classes: int, *,
                   blank: object) -> dict[str, npt.NDArray[Any]]:
    """A job's results as columns, one row per sample (no pandas): status, label, score,
    the last `classes` columns of the class scores output `scores_output` (all of them,
    or a binary model's positive class), error code and message.

    A failed sample's label is `blank`, its score and probabilities NaN, its error given
    (a whole-job failure is each failed sample's error); a success's error is `blank`.
    """
    n = len(result.sample_ids)
    status = np.array([s.value for s in result.sample_status], dtype=object)
    ok = status == "success"
    label_column = _output(result, "label")
    labels = np.full(n, blank, dtype=object)
    if label_column is not None:
        labels[ok] = np.array([blank if v is None else str(v) for v in label_column],
                              dtype=object)[ok]
    codes, messages = np.full(n, blank, dtype=object), np.full(n, blank, dtype=object)
    if result.error is not None:
        codes[~ok], messages[~ok] = result.error.code.value, result.error.message
    for error in result.errors:
        codes[error.index], messages[error.index] = error.code.value, error.message
    score = _output(result, "score")
    return {
        "status": status, "label": labels,
        "score": np.where(ok, np.nan if score is None else np.asarray(score, np.float32),
                          np.nan).astype(np.float32),
        "probabilities": np.where(ok[:, None], _probabilities(result, scores_output, classes,
                                                              n), np.nan).astype(np.float32),
        "error_code": codes, "error_message": messages}


def _probabilities(result: JobResult, scores_output: str | None, classes: int, n: int
                   ) -> npt.NDArray[np.float32]:
    if not classes or scores_output is None:
        return np.full((n, classes), np.nan, np.float32)
    scores = _output(result, scores_output)
    if scores is None:  # a job that failed as a whole has no outputs
        return np.full((n, classes), np.nan, np.float32)
    return np.asarray(scores, dtype=np.float32).reshape(n, -1)[:, -classes:]


def _output(result: JobResult, name: str) -> Any:
    try:
        return result.column(name)
    except KeyError:  # a model without postprocessing has no label or score
        return None
