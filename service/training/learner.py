"""Learner: the Keras model, online standardization and prequential (test-then-train) metrics.

`Learner.learn(x, y)` scores a batch with the model as it is, then trains on it once; both
happen in one compiled TensorFlow function with a fixed input signature, so variable batch
sizes never retrace. The learner is not thread-safe: one worker thread owns it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from service.online_stats import (
    EPSILON,
    LearningHistory,
    PrequentialWindow,
    RunningStandardizer,
)
from service.settings import Settings
from service.training.tf_runtime import keras, tf


def learner_for(settings: Settings) -> Learner:
    """The Learner the settings describe: `serve`, `fit` and the benchmarks build it here."""
    return Learner(
        settings.num_features,
        settings.model_arch,
        settings.learning_rate,
        settings.seed,
        threads=settings.tf_threads,
    )


def use_threads(threads: int) -> None:
    """TensorFlow's CPU thread pools, set before its runtime starts (later calls are no-ops).

    One thread is fastest for this small model (measured: 39.9k against 29.2k records/s with
    TensorFlow's default pools on 2 cores) and leaves the other core to the event loop, which
    fetches, decodes and serves HTTP while the worker thread learns.
    """
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError:  # the runtime is already running: keep its pools
        pass


def build_model(num_features: int, arch: str = "mlp") -> keras.Model:
    """The tutorial's MLP (or a logistic regression, for comparison), ending in a sigmoid."""
    layers: list[keras.layers.Layer]
    if arch == "mlp":
        layers = [
            keras.layers.Dense(128, activation="relu"),
            keras.layers.Dropout(0.2),
            keras.layers.Dense(256, activation="relu"),
            keras.layers.Dropout(0.4),
            keras.layers.Dense(128, activation="relu"),
            keras.layers.Dropout(0.4),
            keras.layers.Dense(1, activation="sigmoid"),
        ]
    elif arch == "linear":
        layers = [keras.layers.Dense(1, activation="sigmoid")]
    else:
        raise ValueError(f"unknown model architecture {arch!r}")
    return keras.Sequential([keras.Input((num_features,)), *layers], name=f"streamfit_{arch}")


def _scale(count: tf.Tensor, m2: tf.Tensor) -> tf.Tensor:
    """RunningStandardizer.std() in the graph: ones until two samples, no zero divisors."""
    std = tf.sqrt(tf.math.divide_no_nan(m2, count))
    std = tf.where(std > 1e-12, std, tf.ones_like(std))
    return tf.where(count < 2, tf.ones_like(std), std)


@dataclass(frozen=True)
class BatchResult:
    """What one `learn` call did: prequential probabilities and the training loss."""

    probabilities: np.ndarray
    loss: float
    samples: int
    prequential_loss: float  # mean log-loss of the test (before training) probabilities


class Learner:
    """Owns the model, its optimizer, the standardizer and the prequential metrics."""

    def __init__(
        self,
        num_features: int,
        arch: str = "mlp",
        learning_rate: float = 1e-3,
        seed: int = 0,
        window: int = 10_000,
        threads: int = 1,
    ) -> None:
        use_threads(threads)
        keras.utils.set_random_seed(seed)
        self.num_features = num_features
        self.arch = arch
        self.model = build_model(num_features, arch)
        self.optimizer = keras.optimizers.Adam(learning_rate=learning_rate)
        self.optimizer.build(self.model.trainable_variables)
        self.standardizer = RunningStandardizer(num_features)
        self.prequential = PrequentialWindow(window)
        self.history = LearningHistory()
        self._weights_after_step: list[Any] | None = None
        self._activations = [
            layer.get_config()["activation"]
            for layer in self.model.layers
            if isinstance(layer, keras.layers.Dense)
        ]
        self.samples_trained = 0
        self.batches_trained = 0
        self.last_loss: float | None = None
        spec = [
            tf.TensorSpec([None, num_features], tf.float32),  # raw features
            tf.TensorSpec([None], tf.float32),  # labels
            tf.TensorSpec([], tf.float64),  # standardizer: count
            tf.TensorSpec([num_features], tf.float64),  # mean
            tf.TensorSpec([num_features], tf.float64),  # m2
        ]
        self._step = tf.function(self._test_then_train, input_signature=spec)

    def _test_then_train(
        self, x: tf.Tensor, y: tf.Tensor, count: tf.Tensor, mean: tf.Tensor, m2: tf.Tensor
    ) -> tuple[tf.Tensor, ...]:
        """Standardize, score, update the standardizer, standardize again, train: one call.

        The standardizer's statistics go in and come out as tensors (the Python
        `RunningStandardizer` stays the owner), so a whole batch is a single hand-off to
        TensorFlow: the worker thread takes the GIL back once per batch, not once per NumPy
        operation, which matters while the event loop holds it decoding the next batch.
        """
        x64 = tf.cast(x, tf.float64)
        n = tf.cast(tf.shape(x64)[0], tf.float64)
        x_before = tf.cast((x64 - mean) / _scale(count, m2), tf.float32)
        # Chan et al. parallel update, as RunningStandardizer.update does it.
        batch_mean = tf.math.divide_no_nan(tf.reduce_sum(x64, axis=0), n)
        batch_m2 = tf.reduce_sum(tf.square(x64 - batch_mean), axis=0)
        total = count + n
        delta = batch_mean - mean
        mean = mean + delta * tf.math.divide_no_nan(n, total)
        m2 = m2 + batch_m2 + tf.square(delta) * tf.math.divide_no_nan(count * n, total)
        x_after = tf.cast((x64 - mean) / _scale(total, m2), tf.float32)

        probabilities = self.model(x_before, training=False)[:, 0]
        with tf.GradientTape() as tape:
            predicted = self.model(x_after, training=True)[:, 0]
            predicted = tf.clip_by_value(predicted, EPSILON, 1 - EPSILON)
            loss = -tf.reduce_mean(
                y * tf.math.log(predicted) + (1 - y) * tf.math.log(1 - predicted)
            )
        variables = self.model.trainable_variables
        gradients = tape.gradient(loss, variables)
        self.optimizer.apply_gradients(zip(gradients, variables, strict=True))
        # The updated weights, read in the same graph call (ordered after the update by
        # automatic control dependencies): far cheaper than get_weights() afterwards.
        weights = [tf.identity(w) for w in self.model.weights]
        # The prequential sums (PrequentialWindow.add's arithmetic), here rather than in NumPy.
        p = tf.clip_by_value(tf.cast(probabilities, tf.float64), EPSILON, 1 - EPSILON)
        y64 = tf.cast(y, tf.float64)
        correct = tf.reduce_sum(tf.cast(tf.equal(p >= 0.5, y64 >= 0.5), tf.float64))
        log_loss = -tf.reduce_sum(y64 * tf.math.log(p) + (1 - y64) * tf.math.log(1 - p))
        return probabilities, loss, weights, total, mean, m2, correct, log_loss

    def learn(self, x: np.ndarray, y: np.ndarray) -> BatchResult:
        """Score the batch with the current model (test), then train on it once (train)."""
        s = self.standardizer
        n = int(y.shape[0])
        outputs = self._step(
            x.astype(np.float32, copy=False),
            y.astype(np.float32, copy=False),
            s.count,
            s.mean,
            s.m2,
        )
        probabilities, loss, self._weights_after_step, count, mean, m2, correct, log_loss = outputs
        s.count, s.mean, s.m2 = int(count), mean.numpy(), m2.numpy()
        self.prequential.add_totals(n, float(correct), float(log_loss))
        self.history.observe(self.samples_trained + n, self.prequential)
        self.samples_trained += n
        self.batches_trained += 1
        self.last_loss = float(loss)
        return BatchResult(probabilities.numpy(), self.last_loss, n, float(log_loss) / max(n, 1))

    def reset_optimizer(self) -> None:
        """Zero the optimizer's moments and step count (keeping its learning rate): after a
        drift, the next steps follow the new concept's gradients at full size."""
        for variable in self.optimizer.variables:
            if not variable.path.endswith("learning_rate"):
                variable.assign(variable.numpy() * 0)

    def evaluate_probabilities(self, x: np.ndarray) -> np.ndarray:
        """Probabilities for raw features with the current model (no training)."""
        return np.asarray(self.model(self.standardizer.transform(x), training=False))[:, 0]

    def weights(self) -> list[np.ndarray]:
        """The model's weights as NumPy copies, in `model.get_weights()` order."""
        if self._weights_after_step is not None:
            return [tensor.numpy() for tensor in self._weights_after_step]
        return [np.asarray(w) for w in self.model.get_weights()]

    def activations(self) -> list[str]:
        """Activation of each Dense layer, in order (what a NumPy forward pass needs)."""
        return list(self._activations)

    # -- state for checkpoints ------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """A copy of everything a checkpoint must hold to resume learning exactly."""
        return {
            "weights": [np.array(w) for w in self.model.get_weights()],
            "optimizer": [v.numpy() for v in self.optimizer.variables],
            # Dropout's random-generator state: restoring it continues training exactly.
            "model_state": [v.numpy() for v in self.model.non_trainable_variables],
            "standardizer": self.standardizer.state(),
            "samples_trained": self.samples_trained,
            "batches_trained": self.batches_trained,
            "prequential": self.prequential.state(),
            "history": self.history.state(),
            "last_loss": self.last_loss,
            "num_features": self.num_features,
            "arch": self.arch,
            "activations": self.activations(),
        }

    def restore(self, state: dict[str, Any]) -> None:
        """Load a state produced by `state()` (possibly by another process)."""
        if state["num_features"] != self.num_features or state["arch"] != self.arch:
            raise ValueError(
                f"checkpoint is for {state['arch']} with {state['num_features']} features, "
                f"the service is configured for {self.arch} with {self.num_features}"
            )
        self.model.set_weights(state["weights"])
        self._weights_after_step = None
        variables = self.optimizer.variables
        if len(variables) != len(state["optimizer"]):
            raise ValueError("checkpoint optimizer state does not match the model")
        for variable, value in zip(variables, state["optimizer"], strict=True):
            variable.assign(value)
        model_state = state.get("model_state")  # absent in older checkpoints
        if model_state is not None and len(model_state) == len(self.model.non_trainable_variables):
            for variable, value in zip(
                self.model.non_trainable_variables, model_state, strict=True
            ):
                variable.assign(value)
        self.standardizer = RunningStandardizer.from_state(state["standardizer"])
        self.samples_trained = int(state["samples_trained"])
        self.batches_trained = int(state["batches_trained"])
        self.prequential.restore(state["prequential"])
        self.history = LearningHistory.from_state(state.get("history", {}))
        loss = state.get("last_loss")
        self.last_loss = None if loss is None or math.isnan(loss) else float(loss)
