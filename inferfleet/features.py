"""Named features: how the columns of a table (a DataFrame, a CSV, a list of dicts) feed a
model, by name and in any order.

A model knows its feature names in one of two ways:

- **one input per feature**, each a single value per sample: what skl2onnx's documented
  export of a model trained on a DataFrame gives (`to_onnx(model, df[:1])`). The input
  names are the column names, and no config is needed;
- **one input of width k** with `features` (k names, in the model's order) in its config,
  or given at `inferfleet models add --features`.

A model with neither takes arrays only: its columns cannot be matched by name, and a
shuffled table would give confident garbage.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from inferfleet.errors import BadArgumentError
from inferfleet.models.config import ModelSignature


@dataclass(frozen=True)
class FeatureLayout:
    """A model's feature names, and how a (samples, features) matrix becomes its inputs."""

    model: str
    names: list[str]  # in the model's order
    #: The input each feature feeds: one per feature, or one input for all (None).
    per_column: bool
    input_name: str  # the one input (when not per column)
    dtypes: dict[str, str]  # each input's dtype
    flat: frozenset[str] = frozenset()  # per-column inputs of one value, no feature axis

    def order(self, columns: Sequence[str], *, id_column: str | None = None) -> list[int]:
        """The position in `columns` of each feature, in the model's order.

        Raises:
            BadArgumentError: naming the missing and the extra columns.
        """
        given = [c for c in columns if c != id_column]
        missing = [name for name in self.names if name not in given]
        extra = [c for c in given if c not in self.names]
        if missing or extra:
            parts = ([f"missing columns {missing}"] if missing else []) + \
                    ([f"columns that are not features of the model {extra}"] if extra else [])
            hint = (" (a column of ids is not a feature: name it as the id column, with "
                    "--id-column or as the DataFrame's index)") if extra else ""
            raise BadArgumentError(f"model {self.model!r} takes the features {self.names}; "
                                   f"the table has {' and '.join(parts)}{hint}")
        return [list(columns).index(name) for name in self.names]

    def inputs(self, matrix: npt.NDArray[Any]) -> dict[str, npt.NDArray[Any]]:
        """The model's inputs from a (samples, features) matrix in the model's order."""
        if not self.per_column:
            return {self.input_name: matrix}
        return {name: np.ascontiguousarray(
                    matrix[:, j] if name in self.flat else matrix[:, j:j + 1],
                    dtype=self.dtypes[name])
                for j, name in enumerate(self.names)}

    def matrix_dtype(self) -> np.dtype[Any]:
        """One dtype that holds every feature's values without loss."""
        return np.result_type(*[np.dtype(d) for d in self.dtypes.values()])


def feature_layout(signature: ModelSignature) -> FeatureLayout | None:
    """How named columns feed the model, or None when it has no feature names."""
    dtypes = {spec.name: spec.dtype for spec in signature.inputs}
    if signature.features:
        [spec] = signature.inputs
        return FeatureLayout(signature.name, list(signature.features), per_column=False,
                             input_name=spec.name, dtypes=dtypes)
    if signature.inputs and all(spec.shape in ([1], []) for spec in signature.inputs):
        return FeatureLayout(signature.name, [spec.name for spec in signature.inputs],
                             per_column=True, input_name="", dtypes=dtypes,
                             flat=frozenset(s.name for s in signature.inputs if not s.shape))
    return None


def no_names_error(signature: ModelSignature) -> BadArgumentError:
    """Why a table cannot feed a model that has no feature names, and what to do."""
    return BadArgumentError(
        f"model {signature.name!r} has no feature names, so a table's columns cannot be "
        "matched to its inputs by name: pass an array (columns in the model's order), or "
        "give the names with `inferfleet models add FILE --name NAME --features a,b,...` "
        "(or `features` in its config)")
