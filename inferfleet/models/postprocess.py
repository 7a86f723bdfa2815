"""Vectorised postprocessing of a score output into `label` and `score` columns."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from inferfleet.errors import ModelLoadError
from inferfleet.models.config import PostprocessConfig

Column = npt.NDArray[Any] | list[Any]


def postprocess(outputs: dict[str, Column], config: PostprocessConfig | None,
                labels: list[str] | None) -> dict[str, Column]:
    """`outputs` plus `label`/`score` (and `top_k_labels`/`top_k_scores` when k > 1).

    Raises:
        ModelLoadError: if the source output is missing or is not a 2-D score array.
    """
    if config is None:
        return outputs
    scores = outputs.get(config.source)
    if not isinstance(scores, np.ndarray) or scores.ndim != 2:
        raise ModelLoadError(f"postprocess source {config.source!r} must be a 2-D score "
                             f"output; outputs are {sorted(outputs)}")
    if config.softmax:
        scores = softmax(scores)
    k = min(config.top_k, scores.shape[1])
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k] if k > 1 else \
        scores.argmax(axis=1)[:, None]
    top_scores = np.take_along_axis(scores, top, axis=1).astype(np.float32)
    result = dict(outputs)
    result["label"] = _labels_of(top[:, 0], labels)
    result["score"] = top_scores[:, 0]
    if k > 1:
        result["top_k_labels"] = _labels_of(top, labels)
        result["top_k_scores"] = top_scores
    return result


def softmax(scores: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """Row-wise softmax, shifted by the row maximum for stability."""
    shifted = np.exp(scores - scores.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)  # type: ignore[no-any-return]


def _labels_of(indices: npt.NDArray[Any], labels: list[str] | None) -> Column:
    """Label names for class indices (any shape), as nested lists; the indices when the
    model has no label names."""
    if labels is None:
        return indices.astype(np.int64)
    return np.asarray(labels, dtype=object)[indices].tolist()  # type: ignore[no-any-return]
