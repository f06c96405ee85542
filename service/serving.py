"""Serving: an immutable snapshot of the model that request handlers read without locks.

The trainer publishes a new `ModelSnapshot` after each trained batch by replacing one
reference (`SnapshotHolder.publish`), so a request sees either the old model or the new one,
never a half-updated one, and never waits for training. Predictions run a NumPy forward pass
over the snapshot's Dense layers (Dropout is the identity at inference): no per-request
`model.predict`, no TensorFlow dispatch on the request path.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from service.online_stats import RunningStandardizer

Activation = Callable[[np.ndarray], np.ndarray]


def _relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0.0, out=x)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    # Numerically stable for large |x|.
    return np.exp(-np.logaddexp(0.0, -x))


def _linear(x: np.ndarray) -> np.ndarray:
    return x


ACTIVATIONS: dict[str, Activation] = {
    "relu": _relu,
    "sigmoid": _sigmoid,
    "linear": _linear,
    "tanh": np.tanh,
}


@dataclass(frozen=True)
class DenseLayer:
    kernel: np.ndarray
    bias: np.ndarray
    activation: str


@dataclass(frozen=True)
class ModelSnapshot:
    """Everything needed to predict: layers, standardizer, and what version this is."""

    version: int
    layers: tuple[DenseLayer, ...]
    mean: np.ndarray
    std: np.ndarray
    samples_trained: int
    batches_trained: int
    updated_at: float = field(default_factory=time.time)

    @property
    def num_features(self) -> int:
        return int(self.mean.shape[0])

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Probabilities [n] for raw features [n, num_features]."""
        h = (np.asarray(x, dtype=np.float32) - self.mean) / self.std
        for layer in self.layers:
            h = ACTIVATIONS[layer.activation](h @ layer.kernel + layer.bias)
        return h[:, 0]


def _frozen(array: Any) -> np.ndarray:
    frozen = np.array(array, dtype=np.float32)
    frozen.setflags(write=False)
    return frozen


def build_snapshot(
    weights: list[Any],
    activations: list[str],
    mean: np.ndarray,
    std: np.ndarray,
    version: int,
    samples_trained: int,
    batches_trained: int,
) -> ModelSnapshot:
    """Freeze Dense weights [kernel0, bias0, kernel1, ...] into a snapshot."""
    if len(weights) != 2 * len(activations):
        raise TypeError("serving supports models of Dense (and Dropout) layers only")
    for activation in activations:
        if activation not in ACTIVATIONS:
            raise TypeError(f"serving does not support activation {activation!r}")
    layers = tuple(
        DenseLayer(_frozen(weights[2 * i]), _frozen(weights[2 * i + 1]), activation)
        for i, activation in enumerate(activations)
    )
    return ModelSnapshot(
        version=version,
        layers=layers,
        mean=_frozen(mean),
        std=_frozen(std),
        samples_trained=samples_trained,
        batches_trained=batches_trained,
    )


def snapshot_from_learner(learner: Any, version: int) -> ModelSnapshot:
    """Freeze the learner's current model and standardizer (call on the training thread)."""
    return build_snapshot(
        learner.model.get_weights(),
        learner.activations(),
        learner.standardizer.mean,
        learner.standardizer.std(),
        version,
        learner.samples_trained,
        learner.batches_trained,
    )


def snapshot_from_state(state: dict[str, Any], version: int) -> ModelSnapshot:
    """A snapshot straight from checkpoint state, without TensorFlow (predictor role)."""
    standardizer = RunningStandardizer.from_state(state["standardizer"])
    return build_snapshot(
        list(state["weights"]),
        list(state["activations"]),
        standardizer.mean,
        standardizer.std(),
        version,
        int(state["samples_trained"]),
        int(state["batches_trained"]),
    )


class SnapshotHolder:
    """The one reference to the served snapshot; replaced, never mutated."""

    def __init__(self) -> None:
        self._snapshot: ModelSnapshot | None = None

    def publish(self, snapshot: ModelSnapshot) -> None:
        self._snapshot = snapshot

    @property
    def current(self) -> ModelSnapshot | None:
        return self._snapshot
