"""Keras forward: serves any model that is not Dense-only, from its Keras config and weights.

A model with preprocessing layers (StringLookup, Hashing, Discretization, Normalization) or
named inputs is rebuilt once per process from the config its checkpoint holds (the user's
code is not needed when its layers are Keras' own), and run as a compiled TensorFlow function
whose input signature fixes the batch's form, so request sizes never retrace. A snapshot
carries its weights; the runner loads them when a newer snapshot is used. TensorFlow loads
here, in the predictor role only for such models.
"""

from __future__ import annotations

import hashlib
import threading
from typing import Any

import numpy as np

from service.model.inputs import Batch, InputSpec

_RUNNERS: dict[str, KerasRunner] = {}
_RUNNERS_LOCK = threading.Lock()


class KerasRunner:
    """One Keras model built from `config`, run with whichever weights a snapshot brings."""

    def __init__(self, config: str, inputs: InputSpec) -> None:
        from service.training.tf_runtime import keras, tf

        self.config = config
        self.inputs = inputs
        self.model = keras.models.model_from_json(config)
        self._loaded: tuple[np.ndarray, ...] | None = None
        self._lock = threading.Lock()
        self._fn = tf.function(
            lambda x: self.model(x, training=False), input_signature=[input_signature(inputs)]
        )

    def run(self, weights: tuple[np.ndarray, ...], x: Batch) -> np.ndarray:
        """Outputs [n, K] of the model with `weights` for the batch `x`."""
        with self._lock:
            if weights is not self._loaded:
                self.model.set_weights(list(weights))
                self._loaded = weights
            return np.asarray(self._fn(x))


def input_signature(inputs: InputSpec) -> Any:
    """The batch's form as TensorSpecs: one float32 [None, F] matrix, or per named input its
    column ([None] or [None, 1], float32 or string), as the model takes it."""
    from service.training.tf_runtime import tf

    if not inputs.named:
        return tf.TensorSpec([None, inputs.width], tf.float32)
    ranks = inputs.ranks or (2,) * inputs.width
    return {
        name: tf.TensorSpec(
            [None, 1] if rank == 2 else [None], tf.string if kind == "string" else tf.float32
        )
        for name, kind, rank in zip(inputs.names, inputs.kinds, ranks, strict=True)
    }


def runner_for(config: str, inputs: InputSpec) -> KerasRunner:
    """The process's runner for this model config (built on first use, then shared)."""
    key = hashlib.sha256(config.encode()).hexdigest()
    with _RUNNERS_LOCK:
        runner = _RUNNERS.get(key)
        if runner is None:
            runner = _RUNNERS[key] = KerasRunner(config, inputs)
        return runner
