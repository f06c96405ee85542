"""Snapshot: an immutable snapshot of the model that request handlers read without locks.

The trainer publishes a new `ModelSnapshot` after each trained batch by replacing one
reference (`SnapshotHolder.publish`), so a request sees either the old model or the new one,
never a half-updated one, and never waits for training. Predictions run a NumPy forward pass
over the snapshot's Dense layers (Dropout is the identity at inference): no per-request
`model.predict`, no TensorFlow dispatch on the request path.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from service.checkpoints import Checkpoint
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
        # Standardize in float64, as the learner does: features can be large (e.g. 1e5 +- 1).
        h = ((np.asarray(x, dtype=np.float64) - self.mean) / self.std).astype(np.float32)
        for layer in self.layers:
            h = ACTIVATIONS[layer.activation](h @ layer.kernel + layer.bias)
        return h[:, 0]


def _frozen(array: Any, dtype: type = np.float32) -> np.ndarray:
    frozen: np.ndarray = np.array(array, dtype=dtype)  # a private copy: callers may reuse theirs
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
        mean=_frozen(mean, np.float64),
        std=_frozen(std, np.float64),
        samples_trained=samples_trained,
        batches_trained=batches_trained,
    )


def snapshot_from_learner(learner: Any, version: int) -> ModelSnapshot:
    """Freeze the learner's current model and standardizer (call on the training thread)."""
    return build_snapshot(
        learner.weights(),
        learner.activations(),
        learner.standardizer.mean,
        learner.standardizer.std(),
        version,
        learner.samples_trained,
        learner.batches_trained,
    )


class SnapshotError(Exception):
    """A checkpoint cannot be served (its state lacks what a snapshot needs)."""


def snapshot_from_checkpoint(checkpoint: Checkpoint) -> ModelSnapshot:
    """The served form of a stored checkpoint, without TensorFlow (predictor role, `score`).

    Raises SnapshotError if the checkpoint's state cannot be served.
    """
    try:
        return snapshot_from_state(checkpoint.state, checkpoint.version)
    except (KeyError, TypeError, ValueError) as exc:
        raise SnapshotError(f"checkpoint {checkpoint.version} cannot be served: {exc}") from exc


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
        self._lock = threading.Lock()

    def publish(self, snapshot: ModelSnapshot) -> None:
        """Serve `snapshot` from now on. The served version never goes back.

        The learner thread publishes with the version it read, and a checkpoint publishes its
        new version from the event loop; when the learner's snapshot lands second it carries
        weights newer than that checkpoint (the learner thread took the checkpoint's state
        before building it), so it is served under the checkpoint's version.
        """
        with self._lock:
            current = self._snapshot
            if current is not None and snapshot.version < current.version:
                snapshot = replace(snapshot, version=current.version)
            self._snapshot = snapshot

    def set_version(self, version: int) -> None:
        """Serve the current model under `version` (a checkpoint now holds it)."""
        with self._lock:
            current = self._snapshot
            if current is not None and version > current.version:
                self._snapshot = replace(current, version=version)

    @property
    def current(self) -> ModelSnapshot | None:
        return self._snapshot

    @property
    def version(self) -> int:
        """The served version (0 before any model is served)."""
        snapshot = self._snapshot
        return 0 if snapshot is None else snapshot.version
