"""Snapshot: an immutable snapshot of the model that request handlers read without locks.

The trainer publishes a new `ModelSnapshot` after each trained batch by replacing one
reference (`SnapshotHolder.publish`), so a request sees either the old model or the new one,
never a half-updated one, and never waits for training. Two forward paths:
- Dense-only models (the built-ins, and any chain of Dense and Dropout layers): a NumPy
  forward pass over the snapshot's layers (Dropout is the identity at inference), no
  TensorFlow on the request path, and none in the predictor role;
- every other model: its Keras config run by a `KerasRunner` with the snapshot's weights.
Both take raw features; standardization (when the service does it) happens here.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

import numpy as np

from service.checkpoints import Checkpoint
from service.model.inputs import Batch, InputSpec
from service.model.task import Task
from service.online_stats import RunningStandardizer
from service.serving.keras_forward import KerasRunner, runner_for

Activation = Callable[[np.ndarray], np.ndarray]


def _relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0.0, out=x)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    # Numerically stable for large |x|.
    return np.exp(-np.logaddexp(0.0, -x))


def _linear(x: np.ndarray) -> np.ndarray:
    return x


def _softmax(x: np.ndarray) -> np.ndarray:
    shifted = np.exp(x - x.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


ACTIVATIONS: dict[str, Activation] = {
    "relu": _relu,
    "sigmoid": _sigmoid,
    "linear": _linear,
    "tanh": np.tanh,
    "softmax": _softmax,
}


@dataclass(frozen=True)
class DenseLayer:
    kernel: np.ndarray
    bias: np.ndarray
    activation: str


@dataclass(frozen=True)
class ModelSnapshot:
    """Everything needed to predict: the model's weights, the standardizer, what task and
    inputs it has, and what version this is."""

    version: int
    layers: tuple[DenseLayer, ...]  # the Dense-only path; empty when `runner` serves
    mean: np.ndarray
    std: np.ndarray
    samples_trained: int
    batches_trained: int
    updated_at: float = field(default_factory=time.time)
    task: Task = field(default_factory=Task)
    inputs: InputSpec | None = None
    runner: KerasRunner | None = None
    weights: tuple[np.ndarray, ...] = ()  # the runner's weights
    spec: str = "mlp"  # what STREAMFIT_MODEL named

    @property
    def num_features(self) -> int:
        return self.input_spec.width

    @property
    def input_spec(self) -> InputSpec:
        return self.inputs or InputSpec.positional(int(self.mean.shape[0]))

    @property
    def standardizes(self) -> bool:
        return bool(self.mean.shape[0])

    def outputs(self, x: Batch) -> np.ndarray:
        """Model outputs [n, K] for raw features (a matrix [n, F], or columns by name)."""
        if isinstance(x, dict):
            assert self.runner is not None
            return self.runner.run(self.weights, x)
        h = np.asarray(x, dtype=np.float32)
        if self.standardizes:
            # In float64, as the learner does: features can be large (e.g. 1e5 +- 1).
            h = ((np.asarray(x, dtype=np.float64) - self.mean) / self.std).astype(np.float32)
        if self.runner is not None:
            return self.runner.run(self.weights, h)
        for layer in self.layers:
            h = ACTIVATIONS[layer.activation](h @ layer.kernel + layer.bias)
        return h

    def predict(self, x: Batch) -> np.ndarray:
        """Predictions: probabilities of the positive class [n] (binary), the K class
        probabilities [n, K] (multiclass), or the values [n] (regression)."""
        outputs = self.outputs(x)
        return outputs if self.task.kind == "multiclass" else outputs[:, 0]


def _frozen(array: Any, dtype: type = np.float32) -> np.ndarray:
    frozen: np.ndarray = np.array(array, dtype=dtype)  # a private copy: callers may reuse theirs
    frozen.setflags(write=False)
    return frozen


def build_snapshot(
    weights: list[Any],
    activations: list[str] | None,
    mean: np.ndarray,
    std: np.ndarray,
    version: int,
    samples_trained: int,
    batches_trained: int,
    task: Task | None = None,
    inputs: InputSpec | None = None,
    config: str | None = None,
    spec: str = "mlp",
) -> ModelSnapshot:
    """Freeze weights into a snapshot: Dense weights [kernel0, bias0, kernel1, ...] with
    their activations (the NumPy path), or any model's weights with its Keras `config`."""
    snapshot = partial(  # what both forward paths' snapshots hold
        ModelSnapshot,
        version=version,
        mean=_frozen(mean, np.float64),
        std=_frozen(std, np.float64),
        samples_trained=samples_trained,
        batches_trained=batches_trained,
        task=task or Task(),
        inputs=inputs,
        spec=spec,
    )
    if activations is None:
        if config is None or inputs is None:
            raise TypeError("a model that is not Dense-only needs its Keras config to be served")
        return snapshot(
            layers=(),
            runner=runner_for(config, inputs),
            weights=tuple(_frozen(w, np.asarray(w).dtype.type) for w in weights),
        )
    if len(weights) != 2 * len(activations):
        raise TypeError("serving supports models of Dense (and Dropout) layers only")
    for activation in activations:
        if activation not in ACTIVATIONS:
            raise TypeError(f"serving does not support activation {activation!r}")
    layers = tuple(
        DenseLayer(_frozen(weights[2 * i]), _frozen(weights[2 * i + 1]), activation)
        for i, activation in enumerate(activations)
    )
    return snapshot(layers=layers)


def _standardization(standardizer: RunningStandardizer, on: bool) -> tuple[np.ndarray, np.ndarray]:
    """(mean, std) the snapshot applies; empty when the model takes its inputs raw."""
    if not on:
        return np.empty(0), np.empty(0)
    return standardizer.mean, standardizer.std()


def snapshot_from_learner(learner: Any, version: int) -> ModelSnapshot:
    """Freeze the learner's current model and standardizer (call on the training thread)."""
    mean, std = _standardization(learner.standardizer, learner.plan.standardize)
    activations = learner.activations()
    return build_snapshot(
        learner.weights(),
        activations,
        mean,
        std,
        version,
        learner.samples_trained,
        learner.batches_trained,
        learner.task,
        learner.inputs,
        None if activations is not None else learner.config(),
        learner.plan.spec,
    )


def portable(snapshot: ModelSnapshot) -> dict[str, Any]:
    """The snapshot as plain data (NumPy arrays, numbers, strings) for another process to
    rebuild with `snapshot_from_portable` (the trainer's HTTP workers)."""
    if snapshot.runner is not None:
        weights, activations = list(snapshot.weights), None
    else:
        weights = [w for layer in snapshot.layers for w in (layer.kernel, layer.bias)]
        activations = [layer.activation for layer in snapshot.layers]
    return {
        "weights": weights,
        "activations": activations,
        "mean": snapshot.mean,
        "std": snapshot.std,
        "version": snapshot.version,
        "samples_trained": snapshot.samples_trained,
        "batches_trained": snapshot.batches_trained,
        "updated_at": snapshot.updated_at,
        "task": snapshot.task.state(),
        "inputs": snapshot.input_spec.state(),
        "config": snapshot.runner.config if snapshot.runner is not None else None,
        "spec": snapshot.spec,
    }


def snapshot_from_portable(data: dict[str, Any]) -> ModelSnapshot:
    """The snapshot `portable` described (a Keras runner is built here for non-Dense models)."""
    width = int(np.asarray(data["mean"]).shape[0])
    inputs = InputSpec.from_state(data["inputs"], width)
    snapshot = build_snapshot(
        data["weights"],
        data["activations"],
        data["mean"],
        data["std"],
        data["version"],
        data["samples_trained"],
        data["batches_trained"],
        Task.from_state(data["task"]),
        inputs,
        data["config"],
        data["spec"],
    )
    return replace(snapshot, updated_at=data["updated_at"])


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
    """A snapshot straight from checkpoint state (predictor role, `score`): without
    TensorFlow for a Dense-only model."""
    standardizer = RunningStandardizer.from_state(state["standardizer"])
    described = state.get("model") or {}  # absent before STREAMFIT_MODEL: built-in, binary
    width = int(state.get("num_features", standardizer.mean.shape[0]))
    mean, std = _standardization(standardizer, bool(described.get("standardize", True)))
    activations = state.get("activations")
    return build_snapshot(
        list(state["weights"]),
        None if activations is None else list(activations),
        mean,
        std,
        version,
        int(state["samples_trained"]),
        int(state["batches_trained"]),
        Task.from_state(described.get("task")),
        InputSpec.from_state(described.get("inputs"), width),
        described.get("config"),
        str(described.get("spec", state.get("arch", "mlp"))),
    )


class SnapshotHolder:
    """The one reference to a snapshot; replaced, never mutated.

    A trainer has two: the live one its learner publishes to, and the served one predictions
    read, which follows the live one (serve policy `latest`) or holds a stored version
    (`gated`, `pinned`, a pin).
    """

    def __init__(self) -> None:
        self._snapshot: ModelSnapshot | None = None
        self._follows: SnapshotHolder | None = None
        self._lock = threading.Lock()

    def follow(self, other: SnapshotHolder) -> None:
        """From now on, answer whatever `other` holds."""
        self._follows = other

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

    def serve(self, snapshot: ModelSnapshot) -> None:
        """Serve exactly `snapshot`, whatever its version (a serve policy's choice: a pinned
        or gated version may be older than the one served before)."""
        with self._lock:
            self._snapshot = snapshot
            self._follows = None

    def set_version(self, version: int) -> None:
        """Serve the current model under `version` (a checkpoint now holds it)."""
        with self._lock:
            current = self._snapshot
            if current is not None and version > current.version:
                self._snapshot = replace(current, version=version)

    @property
    def current(self) -> ModelSnapshot | None:
        follows = self._follows
        return follows.current if follows is not None else self._snapshot

    @property
    def version(self) -> int:
        """The held version (0 before any model is held)."""
        snapshot = self.current
        return 0 if snapshot is None else snapshot.version
