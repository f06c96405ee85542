"""Task: binary, multiclass or regression; labels, output shapes and prequential metrics.

A `Task` is pure data (no TensorFlow): the codec parses labels with it, the learner picks
its loss from it, the serving paths turn model outputs [n, K] into each protocol's answer,
and the prequential window names its two metrics after it.

>>> t = Task.from_settings("multiclass", classes=("cat", "dog", "owl"))
>>> t.label("dog"), t.label(2), t.label("emu")
(1.0, 2.0, LabelError(reason='unknown_class', detail="'emu' is not one of cat, dog, owl"))
>>> Task.from_settings("regression").label(True)
LabelError(reason='bad_type', detail='regression label True is not a number')
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

TaskKind = Literal["binary", "multiclass", "regression"]
EPSILON = 1e-7  # probabilities are clipped to [EPSILON, 1 - EPSILON] in every log-loss


@dataclass(frozen=True)
class LabelError:
    """A label that cannot be trained on: the dead-letter reason and a readable detail."""

    reason: str
    detail: str


@dataclass(frozen=True)
class Task:
    """The learning task. `classes` names the classes in output order (classification)."""

    kind: TaskKind = "binary"
    classes: tuple[str, ...] = ("0", "1")

    @classmethod
    def from_settings(
        cls,
        kind: str = "binary",
        classes: tuple[str, ...] | None = None,
        num_classes: int | None = None,
    ) -> Task:
        """The task the settings describe; ValueError (one line) when they disagree."""
        if kind == "regression":
            if classes or num_classes:
                raise ValueError("regression has no classes: unset CLASSES and NUM_CLASSES")
            return cls("regression", ())
        if kind not in ("binary", "multiclass"):
            raise ValueError(f"unknown task {kind!r}: binary, multiclass or regression")
        if classes and num_classes and len(classes) != num_classes:
            raise ValueError(
                f"CLASSES names {len(classes)} classes but NUM_CLASSES is {num_classes}"
            )
        if classes and len(set(classes)) != len(classes):
            raise ValueError("CLASSES has a name twice")
        if kind == "multiclass" and not classes and not num_classes:
            raise ValueError("multiclass needs STREAMFIT_CLASSES or STREAMFIT_NUM_CLASSES")
        names = tuple(classes) if classes else tuple(str(i) for i in range(num_classes or 2))
        if kind == "binary" and len(names) != 2:
            raise ValueError(f"binary takes 2 classes (negative,positive), got {len(names)}")
        if kind == "multiclass" and len(names) < 2:
            raise ValueError("multiclass needs at least 2 classes: set CLASSES or NUM_CLASSES")
        return cls(kind, names)  # type: ignore[arg-type]

    @classmethod
    def of(cls, settings: Any) -> Task:
        """The task `Settings` describe (ValueError naming the setting when they disagree)."""
        try:
            return cls.from_settings(settings.task, settings.classes or None, settings.num_classes)
        except ValueError as exc:
            raise ValueError(f"STREAMFIT_TASK={settings.task}: {exc}") from None

    @classmethod
    def from_state(cls, state: dict[str, Any] | None) -> Task:
        """The task a checkpoint recorded (binary for checkpoints older than tasks)."""
        if not state:
            return cls()
        return cls(state["kind"], tuple(state.get("classes", ())))

    def state(self) -> dict[str, Any]:
        return {"kind": self.kind, "classes": list(self.classes)}

    # -- shapes ------------------------------------------------------------------------------

    @property
    def classification(self) -> bool:
        return self.kind != "regression"

    @property
    def outputs(self) -> int:
        """Width of the model's output: K for multiclass, else 1."""
        return len(self.classes) if self.kind == "multiclass" else 1

    @property
    def output_name(self) -> str:
        """The Open Inference output (and the scored record's field) that carries predictions."""
        return {"binary": "probability", "multiclass": "probabilities"}.get(self.kind, "prediction")

    @property
    def metric_names(self) -> tuple[str, str]:
        """The two prequential metrics: accuracy and log-loss, or MAE and RMSE."""
        return ("accuracy", "loss") if self.classification else ("mae", "rmse")

    def predictions(self, outputs: np.ndarray) -> list[Any]:
        """Model outputs [n, K] as each instance's prediction: a probability of the positive
        class (binary), the K probabilities in class order (multiclass), or the value."""
        if self.kind == "multiclass":
            return np.asarray(outputs).tolist()
        return np.asarray(outputs)[:, 0].tolist()

    def predicted_class(self, outputs: np.ndarray) -> np.ndarray:
        """Index of the predicted class per row (classification)."""
        if self.kind == "binary":
            return (np.asarray(outputs)[:, 0] >= 0.5).astype(np.int64)
        return np.asarray(outputs).argmax(axis=1)

    # -- labels ------------------------------------------------------------------------------

    def label(self, value: Any) -> float | LabelError:
        """A JSON/Avro label value as the float the learner takes (a class index, or the
        target), or why it cannot be one. A class name wins over an index."""
        if self.kind == "regression":
            if isinstance(value, bool) or not isinstance(value, int | float):
                return LabelError("bad_type", f"regression label {value!r:.40} is not a number")
            if not math.isfinite(value):
                return LabelError("non_finite", "label is not finite")
            return float(value)
        if isinstance(value, bool):
            if self.kind == "binary":
                return float(value)
            return LabelError("bad_label", f"label {value!r} is not a class of a multiclass task")
        if isinstance(value, str):
            if value in self.classes:
                return float(self.classes.index(value))
            return LabelError(
                "unknown_class", f"{value[:40]!r} is not one of {', '.join(self.classes)[:200]}"
            )
        if isinstance(value, int) and 0 <= value < len(self.classes):
            return float(value)
        if isinstance(value, float) and value.is_integer() and 0 <= value < len(self.classes):
            return float(value)
        if isinstance(value, int | float):
            return LabelError(
                "unknown_class" if self.kind == "multiclass" else "bad_label",
                f"label {value!r:.40} is not a class index 0..{len(self.classes) - 1}",
            )
        return LabelError("bad_label", f"label {value!r:.40} is not a class name or index")

    def key_label(self, key: bytes) -> float | LabelError:
        """A CSV key (text) as a label: a class name or index, or a decimal target."""
        try:
            text = key.decode("utf-8").strip()
        except UnicodeDecodeError:
            return LabelError("bad_label", "label key is not UTF-8")
        if self.kind == "regression":
            try:
                value = float(text)
            except ValueError:
                return LabelError("bad_label", f"label {text[:32]!r} is not a number")
            return self.label(value)
        if text in self.classes:
            return float(self.classes.index(text))
        if text.isdigit():
            return self.label(int(text))
        if self.kind == "binary" and text.lower() in ("true", "false"):
            return float(text.lower() == "true")
        return LabelError(
            "unknown_class" if self.kind == "multiclass" else "bad_label",
            f"label {key[:32]!r} is not " + ("0 or 1" if self.is_default_binary else "a class"),
        )

    @property
    def is_default_binary(self) -> bool:
        """Binary with classes 0 and 1: the tutorial's flow, which has a faster CSV path."""
        return self.kind == "binary" and self.classes == ("0", "1")

    # -- metrics (NumPy; the learner computes the same sums in its compiled step) -------------

    def batch_totals(self, outputs: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
        """The prequential sums of a batch: (correct, log-loss) for classification, (absolute
        error, squared error) for regression."""
        out = np.asarray(outputs, dtype=np.float64)
        y = np.asarray(labels, dtype=np.float64)
        if self.kind == "regression":
            error = out[:, 0] - y
            return float(np.abs(error).sum()), float((error**2).sum())
        correct = float((self.predicted_class(out) == y.astype(np.int64)).sum())
        return correct, float(self.losses(out, y).sum())

    def losses(self, outputs: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """Per-sample loss, float64: log-loss (classification) or squared error (regression).

        >>> Task().losses(np.array([[0.9], [0.2]]), np.array([1, 1])).round(4).tolist()
        [0.1054, 1.6094]
        """
        out = np.asarray(outputs, dtype=np.float64)
        y = np.asarray(labels, dtype=np.float64)
        if self.kind == "regression":
            return (out[:, 0] - y) ** 2
        if self.kind == "binary":
            p = np.clip(out[:, 0], EPSILON, 1 - EPSILON)
            return -(y * np.log(p) + (1 - y) * np.log(1 - p))
        picked = out[np.arange(len(y)), y.astype(np.int64)]
        return -np.log(np.clip(picked, EPSILON, 1.0))

    def summary(self, n: int, first: float, second: float) -> dict[str, float | None]:
        """Window sums as the task's two named metrics."""
        a, b = self.metric_names
        if not n:
            return {a: None, b: None}
        if self.classification:
            return {a: first / n, b: second / n}
        return {a: first / n, b: math.sqrt(second / n)}
