"""Online statistics: running standardization and the prequential (test-then-train) window.

Pure NumPy, no TensorFlow, so the predictor role can use them without loading a model runtime.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any

import numpy as np

from service.model.task import EPSILON, Task


def log_losses(probabilities: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per-sample log-loss of predicted probabilities of class 1 against 0/1 labels, float64.

    Probabilities are clipped to [EPSILON, 1 - EPSILON], so a confident mistake costs about 16,
    not infinity. The learner's compiled step computes the same sum in TensorFlow.

    >>> log_losses(np.array([0.9, 0.2]), np.array([1, 1])).round(4).tolist()
    [0.1054, 1.6094]
    """
    p = np.clip(np.asarray(probabilities, dtype=np.float64), EPSILON, 1 - EPSILON)
    y = np.asarray(labels, dtype=np.float64)
    return -(y * np.log(p) + (1 - y) * np.log(1 - p))


class RunningStandardizer:
    """Running mean and variance per feature (Chan et al. parallel update), float64.

    >>> s = RunningStandardizer(2)
    >>> s.update(np.array([[1.0, 10.0], [3.0, 30.0]]))
    >>> s.mean.tolist(), s.std().tolist()
    ([2.0, 20.0], [1.0, 10.0])
    """

    def __init__(self, num_features: int) -> None:
        self.count = 0
        self.mean = np.zeros(num_features)
        self.m2 = np.zeros(num_features)

    def update(self, x: np.ndarray) -> None:
        n = x.shape[0]
        if n == 0:
            return
        batch_mean = x.mean(axis=0, dtype=np.float64)
        batch_m2 = ((x - batch_mean) ** 2).sum(axis=0, dtype=np.float64)
        total = self.count + n
        delta = batch_mean - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + batch_m2 + delta**2 * (self.count * n / total)
        self.count = total

    def std(self) -> np.ndarray:
        if self.count < 2:
            return np.ones_like(self.mean)
        std = np.sqrt(self.m2 / self.count)
        return np.where(std > 1e-12, std, 1.0)

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> RunningStandardizer:
        """Rebuild from the `{"count", "mean", "m2"}` dict a checkpoint holds."""
        mean = np.asarray(state["mean"], dtype=np.float64)
        standardizer = cls(int(mean.shape[0]))
        standardizer.count = int(state["count"])
        standardizer.mean = mean
        standardizer.m2 = np.asarray(state["m2"], dtype=np.float64)
        return standardizer

    def state(self) -> dict[str, Any]:
        return {"count": self.count, "mean": self.mean.copy(), "m2": self.m2.copy()}

    def transform(self, x: np.ndarray) -> np.ndarray:
        return ((x - self.mean) / self.std()).astype(np.float32)


class PrequentialWindow:
    """The task's two prequential metrics over the last `window` test-then-train samples:
    accuracy and log-loss (classification), or MAE and RMSE (regression). Each batch is kept
    as its size and two sums (`Task.batch_totals`)."""

    def __init__(self, window: int = 10_000, task: Task | None = None) -> None:
        self.window = window
        self.task = task or Task()
        self._batches: deque[tuple[int, float, float]] = deque()
        self._count = 0
        self._correct = 0.0
        self._loss = 0.0

    def add(self, outputs: np.ndarray, labels: np.ndarray) -> None:
        """Add a batch of model outputs [n, K] (or binary probabilities [n]) and labels."""
        n = int(labels.shape[0])
        if n == 0:
            return
        out = np.asarray(outputs)
        self.add_totals(n, *self.task.batch_totals(out.reshape(n, -1), labels))

    def add_totals(self, n: int, correct: float, loss: float) -> None:
        """Add a batch by its size and its two sums (as `Task.batch_totals` computes them)."""
        if n == 0:
            return
        self._batches.append((n, correct, loss))
        self._count += n
        self._correct += correct
        self._loss += loss
        while self._batches and self._count - self._batches[0][0] >= self.window:
            old_n, old_correct, old_loss = self._batches.popleft()
            self._count -= old_n
            self._correct -= old_correct
            self._loss -= old_loss

    @classmethod
    def of_checkpoint(cls, state: dict[str, Any]) -> PrequentialWindow:
        """The window a checkpoint state recorded, with the task it recorded (binary for
        checkpoints older than tasks).

        >>> PrequentialWindow.of_checkpoint({"prequential": [[4, 3, 2.0]]}).metrics()
        {'accuracy': 0.75, 'loss': 0.5}
        """
        window = cls(task=Task.from_state((state.get("model") or {}).get("task")))
        window.restore(state.get("prequential", []))
        return window

    def metrics_over_last(self, samples: int) -> tuple[dict[str, float | None], int]:
        """The two metrics over the newest whole batches that hold at least `samples` samples
        (all of the window if it holds fewer), and how many samples that was.

        >>> w = PrequentialWindow()
        >>> w.add_totals(100, 90, 10.0); w.add_totals(100, 50, 70.0)
        >>> w.metrics_over_last(100)
        ({'accuracy': 0.5, 'loss': 0.7}, 100)
        """
        n = correct = loss = 0.0
        for size, first, second in reversed(self._batches):
            if n >= samples:
                break
            n, correct, loss = n + size, correct + first, loss + second
        return self.task.summary(int(n), correct, loss), int(n)

    @property
    def count(self) -> int:
        return self._count

    def metrics(self) -> dict[str, float | None]:
        """The task's two metrics by name (`accuracy`/`loss`, or `mae`/`rmse`)."""
        return self.task.summary(self._count, self._correct, self._loss)

    @property
    def accuracy(self) -> float | None:
        return self.metrics().get("accuracy")

    @property
    def loss(self) -> float | None:
        return self.metrics().get("loss")

    def state(self) -> list[list[float]]:
        return [list(b) for b in self._batches]

    def restore(self, state: list[list[float]]) -> None:
        self.__init__(self.window, self.task)  # type: ignore[misc]
        for n, correct, loss in state:
            self._batches.append((int(n), correct, loss))
            self._count += int(n)
            self._correct += correct
            self._loss += loss


class LearningHistory:
    """Prequential accuracy and loss sampled along the stream, kept with the checkpoints.

    One point every `every` samples: {"samples", <the task's two metrics>, "time"} (accuracy
    and loss, or mae and rmse); events (drift,
    checkpoint versions, rollbacks) as {"samples", "kind", ...}. When points exceed
    `max_points` every other one is dropped and `every` doubles, so the curve keeps its
    shape over any stream length in bounded memory.
    """

    def __init__(self, every: int = 1000, max_points: int = 2000) -> None:
        self.every = every
        self.max_points = max_points
        self.points: list[dict[str, float | None]] = []
        self.events: list[dict[str, Any]] = []
        self._next = every

    def observe(self, samples: int, window: PrequentialWindow) -> None:
        if samples < self._next or not window.count:
            return
        self.points.append({"samples": samples, **window.metrics(), "time": time.time()})
        self._next = (samples // self.every + 1) * self.every
        if len(self.points) > self.max_points:
            self.points = self.points[1::2]
            self.every *= 2
            self._next = (samples // self.every + 1) * self.every

    def event(self, samples: int, kind: str, **detail: Any) -> None:
        self.events.append({"samples": samples, "kind": kind, "time": time.time(), **detail})
        del self.events[: -self.max_points]

    def take_events(self, other: LearningHistory) -> None:
        """Take over `other`'s events (the champion role's, at a promotion), leaving it none."""
        self.events, other.events = other.events, []

    def state(self) -> dict[str, Any]:
        return {"every": self.every, "points": list(self.points), "events": list(self.events)}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> LearningHistory:
        history = cls(every=int(state.get("every", 1000)))
        history.points = list(state.get("points", []))
        history.events = list(state.get("events", []))
        last = history.points[-1]["samples"] or 0 if history.points else 0
        history._next = (int(last) // history.every + 1) * history.every
        return history


def history_of_checkpoint(state: dict[str, Any]) -> dict[str, Any]:
    """The learning history a checkpoint state holds: the champion's curve and the service's
    events, and, with a challenger, its spec and curve under "challenger".

    >>> state = {"history": {"points": [], "events": []}, "model": {"spec": "linear"},
    ...          "challenger": {"history": {"points": [{"samples": 1}]}, "model": {"spec": "mlp"}}}
    >>> history_of_checkpoint(state)["challenger"]
    {'model': 'mlp', 'points': [{'samples': 1}]}
    """
    history = dict(state.get("history") or {"every": None, "points": [], "events": []})
    challenger = state.get("challenger")
    if challenger is not None:
        history["model"] = (state.get("model") or {}).get("spec")
        history["challenger"] = {
            "model": (challenger.get("model") or {}).get("spec"),
            "points": list((challenger.get("history") or {}).get("points", [])),
        }
    return history
