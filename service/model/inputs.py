"""Inputs: the features a model takes, by name and kind, and every form they arrive in.

A model takes either one float matrix [n, F] ("positional": CSV rows, `{"features": [...]}`,
v1 rows, one v2 tensor), or one input per named feature ("named": a functional model whose
inputs are a dict, e.g. a numeric `amount` and a string `country`). Named-field records
(JSON objects, Avro) and object-shaped instances fit both: their fields are read by name.

`Batch` is what the learner and the serving paths take: an ndarray [n, F] for a positional
model, or a dict of one column per input ([n] or [n, 1], float32 or str objects).

>>> spec = InputSpec(("amount", "country"), ("number", "string"), named=True)
>>> cols, errors = spec.from_objects([{"amount": 2, "country": "FR"}, {"amount": "x"}])
>>> cols["amount"].tolist(), cols["country"].tolist(), errors
([[2.0]], [['FR']], {1: ('bad_type', "field 'amount' must be a number, got str")})
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Union

import numpy as np

Kind = Literal["number", "string"]
DEFAULT_WIDTH = 18  # the tutorial's SUSY features
Batch = Union[np.ndarray, dict[str, np.ndarray]]  # noqa: UP007 (a runtime alias)


@dataclass(frozen=True)
class InputSpec:
    """Feature names (possibly empty for a positional model), their kinds, and the model's form.

    `ranks` gives, for a named model, each input's rank (1: [n], 2: [n, 1]).
    """

    names: tuple[str, ...]
    kinds: tuple[Kind, ...]
    named: bool = False
    ranks: tuple[int, ...] = ()

    @classmethod
    def positional(cls, width: int, names: Sequence[str] = ()) -> InputSpec:
        number: Kind = "number"
        return cls(tuple(names), (number,) * width)

    @classmethod
    def from_state(cls, state: dict[str, Any] | None, width: int) -> InputSpec:
        """The inputs a checkpoint recorded (positional `width` before named inputs existed)."""
        if not state:
            return cls.positional(width)
        kinds: tuple[Kind, ...] = tuple(state["kinds"])
        return cls(
            tuple(state["names"]),
            kinds,
            bool(state["named"]),
            tuple(state.get("ranks", ())),
        )

    def state(self) -> dict[str, Any]:
        return {
            "names": list(self.names),
            "kinds": list(self.kinds),
            "named": self.named,
            "ranks": list(self.ranks),
        }

    @property
    def width(self) -> int:
        return len(self.kinds)

    @property
    def has_names(self) -> bool:
        return bool(self.names)

    @property
    def numeric(self) -> bool:
        return all(kind == "number" for kind in self.kinds)

    def probe(self) -> Batch:
        """One instance of zeros and empty strings (the readiness check's input)."""
        if not self.named:
            return np.zeros((1, self.width), np.float32)
        return {
            name: self._column(
                np.array(
                    [0.0 if kind == "number" else ""], np.float32 if kind == "number" else object
                ),
                i,
            )
            for i, (name, kind) in enumerate(zip(self.names, self.kinds, strict=True))
        }

    # -- building batches --------------------------------------------------------------------

    def from_matrix(self, x: np.ndarray) -> Batch:
        """A float matrix [n, F] in feature order as the model's input."""
        if not self.named:
            return x
        return {name: self._column(x[:, i], i) for i, name in enumerate(self.names)}

    def _column(self, values: np.ndarray, index: int) -> np.ndarray:
        rank = self.ranks[index] if self.ranks else 2
        return values.reshape(-1, 1) if rank == 2 else values.reshape(-1)

    def from_objects(
        self, objects: Sequence[dict[str, Any]]
    ) -> tuple[Batch, dict[int, tuple[str, str]]]:
        """Objects keyed by feature name as a batch of the good ones, and per bad object its
        index -> (reason, detail). Extra fields are ignored; a bool is a number (0/1)."""
        errors: dict[int, tuple[str, str]] = {}
        columns: list[list[Any]] = [[] for _ in self.names]
        for index, obj in enumerate(objects):
            row: list[Any] = []
            for name, kind in zip(self.names, self.kinds, strict=True):
                if name not in obj or obj[name] is None:
                    errors[index] = ("missing_field", f"field {name!r} is missing")
                    break
                value = obj[name]
                problem = _check(name, kind, value)
                if problem is not None:
                    errors[index] = problem
                    break
                row.append(float(value) if kind == "number" else value)
            else:
                for column, value in zip(columns, row, strict=True):
                    column.append(value)
        n = len(objects) - len(errors)
        if not self.named:
            matrix = np.array(columns, dtype=np.float32).T.reshape(n, self.width)
            return matrix, errors
        batch = {
            name: self._column(
                np.array(column, dtype=np.float32 if kind == "number" else object), i
            )
            for i, (name, kind, column) in enumerate(
                zip(self.names, self.kinds, columns, strict=True)
            )
        }
        return batch, errors

    def from_rows(self, rows: Sequence[Sequence[Any]]) -> Batch:
        """Rows in feature order (numbers, or strings for string inputs) as a batch;
        ValueError naming the first problem."""
        widths = {len(row) for row in rows}
        if len(widths) > 1:
            raise ValueError("all instances must have the same number of features")
        if widths != {self.width}:
            what = "numbers" if self.numeric else "values"
            raise ValueError(f"each instance needs {self.width} {what}, got {widths.pop()}")
        if self.numeric:
            return self.from_matrix(_float_matrix(rows))
        objects = [dict(zip(self.names, row, strict=True)) for row in rows]
        batch, errors = self.from_objects(objects)
        if errors:
            index, (_, detail) = min(errors.items())
            raise ValueError(f"instance {index}: {detail}")
        return batch


def settings_width(settings: Any) -> int:
    """Features the settings name: FEATURES, an explicit NUM_FEATURES, or the tutorial's 18
    (ValueError when FEATURES and an explicit NUM_FEATURES disagree)."""
    explicit = "num_features" in settings.model_fields_set
    if settings.features:
        if explicit and settings.num_features != len(settings.features):
            raise ValueError(
                f"STREAMFIT_NUM_FEATURES={settings.num_features} but STREAMFIT_FEATURES names "
                f"{len(settings.features)}: unset NUM_FEATURES"
            )
        return len(settings.features)
    return int(settings.num_features) if explicit else DEFAULT_WIDTH


def declared_inputs(settings: Any) -> InputSpec:
    """The inputs the settings alone describe (a positional model: the built-ins)."""
    return InputSpec.positional(settings_width(settings), settings.features)


def _check(name: str, kind: Kind, value: Any) -> tuple[str, str] | None:
    if kind == "string":
        if isinstance(value, str):
            return None
        return ("bad_type", f"field {name!r} must be a string, got {type(value).__name__}")
    if isinstance(value, bool):
        return None
    if not isinstance(value, int | float):
        return ("bad_type", f"field {name!r} must be a number, got {type(value).__name__}")
    if not math.isfinite(value) or abs(value) > 3.4e38:
        return ("non_finite", f"field {name!r} is not finite in float32")
    return None


def _float_matrix(rows: Sequence[Sequence[Any]]) -> np.ndarray:
    try:
        wide = np.asarray(rows)
    except ValueError:
        raise ValueError("instances must be rows of numbers") from None
    if wide.dtype.kind not in "fiub" or wide.ndim != 2:
        raise ValueError("features must be numbers")
    with np.errstate(over="ignore"):
        x = wide.astype(np.float32)
    if not np.isfinite(x).all():
        raise ValueError("features must be finite (float32 range)")
    return x


# -- batches of either form ------------------------------------------------------------------


def batch_rows(batch: Batch) -> int:
    """Number of rows of a batch."""
    if isinstance(batch, dict):
        return int(next(iter(batch.values())).shape[0])
    return int(batch.shape[0])


def concat(batches: Sequence[Batch]) -> Batch:
    """Batches of one form, one after the other."""
    if len(batches) == 1:
        return batches[0]
    first = batches[0]
    if isinstance(first, dict):
        return {name: np.concatenate([b[name] for b in batches]) for name in first}
    return np.concatenate(list(batches))


def take(batch: Batch, index: Any) -> Batch:
    """Rows `index` (a slice, mask or index array) of a batch."""
    if isinstance(batch, dict):
        return {name: column[index] for name, column in batch.items()}
    return batch[index]
