"""Learner: the Keras model, online standardization and prequential (test-then-train) metrics.

`Learner.learn(x, y)` scores a batch with the model as it is, then trains on it once; both
happen in one compiled TensorFlow function with a fixed input signature, so variable batch
sizes never retrace. `Learner.learn_in_order(x, y, batch_size)` does the same for each
mini-batch of `batch_size` rows in turn, in one call of the same function (a loop in the
graph): the thread that calls it takes Python's interpreter lock once per call rather than once
per mini-batch. The model is whatever `STREAMFIT_MODEL` names (`service.model.resolve`),
for a binary, multiclass or regression task; its inputs are one matrix [n, F] or one column
per named input. The learner is not thread-safe: one worker thread owns it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from service.model.inputs import Batch
from service.model.resolve import (
    ModelMismatch,
    ModelPlan,
    dense_activations,
    portable_config,
    resolve_model,
)
from service.model.task import EPSILON
from service.online_stats import LearningHistory, PrequentialWindow, RunningStandardizer
from service.settings import Settings
from service.training.tf_runtime import keras, tf


def learner_for(settings: Settings) -> Learner:
    """The Learner the settings describe: `serve`, `fit` and the benchmarks build it here."""
    use_threads(settings.tf_threads)
    model, plan = resolve_model(settings)
    return Learner(model, plan, settings.learning_rate)


def builtin_learner(
    num_features: int,
    arch: str = "mlp",
    learning_rate: float = 1e-3,
    seed: int = 0,
    task: str = "binary",
    **settings: Any,
) -> Learner:
    """A Learner of a built-in model (tests, benchmarks): settings by keyword."""
    return learner_for(
        Settings(
            num_features=num_features,
            model=arch,
            learning_rate=learning_rate,
            seed=seed,
            task=task,  # type: ignore[arg-type]
            **settings,
        )
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


def _scale(count: tf.Tensor, m2: tf.Tensor) -> tf.Tensor:
    """RunningStandardizer.std() in the graph: ones until two samples, no zero divisors."""
    std = tf.sqrt(tf.math.divide_no_nan(m2, count))
    std = tf.where(std > 1e-12, std, tf.ones_like(std))
    return tf.where(count < 2, tf.ones_like(std), std)


@dataclass(frozen=True)
class BatchResult:
    """What one `learn` call did: the prequential outputs [n, K] and the training loss."""

    outputs: np.ndarray
    loss: float
    samples: int
    prequential_loss: float  # mean log-loss (classification) or squared error (regression)

    @property
    def probabilities(self) -> np.ndarray:
        """Binary: the test probabilities of the positive class [n]."""
        return self.outputs[:, 0]


class Learner:
    """Owns the model, its optimizer, the standardizer and the prequential metrics."""

    def __init__(
        self,
        model: keras.Model,
        plan: ModelPlan,
        learning_rate: float = 1e-3,
        window: int = 10_000,
    ) -> None:
        self.model = model
        self.plan = plan
        self.task = plan.task
        self.inputs = plan.inputs
        self.num_features = plan.inputs.width
        if plan.compiled:
            self.optimizer = model.optimizer
            self._loss_fn = keras.losses.get(model.loss) if model.loss is not None else None
        else:
            self.optimizer = keras.optimizers.Adam(learning_rate=learning_rate)
            self._loss_fn = None
        self.optimizer.build(self.model.trainable_variables)
        self._one_hot_labels = (
            self._loss_fn is not None
            and "sparse" not in _name(self._loss_fn)
            and self.task.kind == "multiclass"
        )
        width = 0 if plan.inputs.named else plan.inputs.width
        self.standardizer = RunningStandardizer(width)
        self.prequential = PrequentialWindow(window, self.task)
        self.history = LearningHistory()
        self._weights_after_step: list[Any] | None = None
        self._activations = dense_activations(model, plan.inputs)
        self._config: str | None = None
        self.samples_trained = 0
        self.batches_trained = 0
        self.last_loss: float | None = None
        self._step = tf.function(self._learn_in_order, input_signature=self._signature())

    # -- the compiled step -------------------------------------------------------------------

    def _signature(self) -> list[Any]:
        labels = tf.TensorSpec([None], tf.float32)
        size = tf.TensorSpec([], tf.int32)  # rows per mini-batch
        if self.inputs.named:
            ranks = self.inputs.ranks or (2,) * self.inputs.width
            spec = {
                name: tf.TensorSpec(
                    [None, 1] if rank == 2 else [None],
                    tf.string if kind == "string" else tf.float32,
                )
                for name, kind, rank in zip(
                    self.inputs.names, self.inputs.kinds, ranks, strict=True
                )
            }
            return [spec, labels, size]
        width = self.inputs.width
        return [
            tf.TensorSpec([None, width], tf.float32),  # raw features
            labels,
            size,
            tf.TensorSpec([], tf.float64),  # standardizer: count
            tf.TensorSpec([width], tf.float64),  # mean
            tf.TensorSpec([width], tf.float64),  # m2
        ]

    def _learn_in_order(self, x: Any, y: tf.Tensor, size: tf.Tensor, *stats: tf.Tensor) -> Any:
        """Test-then-train each mini-batch of `size` rows in order: a loop in the graph, one
        iteration after the other (each one's update is the next one's model).

        Per mini-batch: outputs (concatenated), loss and prequential sums; once, after the
        last: the weights and the standardizer's statistics.
        """
        stats = stats if self.plan.standardize else ()
        steps = (tf.shape(y)[0] + size - 1) // size
        outputs = tf.TensorArray(tf.float32, size=steps, infer_shape=False)
        losses = tf.TensorArray(tf.float32, size=steps)
        firsts = tf.TensorArray(tf.float64, size=steps)
        seconds = tf.TensorArray(tf.float64, size=steps)
        for i in tf.range(steps):
            tf.autograph.experimental.set_loop_options(parallel_iterations=1)
            rows = slice(i * size, (i + 1) * size)
            x_i = tf.nest.map_structure(lambda column: column[rows], x)  # noqa: B023
            output, loss, stats, first, second = self._test_then_train(x_i, y[rows], *stats)
            outputs = outputs.write(i, tf.cast(output, tf.float32))
            losses = losses.write(i, tf.cast(loss, tf.float32))
            firsts = firsts.write(i, first)
            seconds = seconds.write(i, second)
        # The updated weights, read in the same graph call (ordered after the updates by
        # automatic control dependencies): far cheaper than get_weights() afterwards.
        weights = [tf.identity(w) for w in self.model.weights]
        return (
            outputs.concat(),
            losses.stack(),
            weights,
            stats,
            firsts.stack(),
            seconds.stack(),
        )

    def _test_then_train(self, x: Any, y: tf.Tensor, *stats: tf.Tensor) -> tuple[Any, ...]:
        """Standardize, score, update the standardizer, standardize again, train: one
        mini-batch, in the graph.

        The standardizer's statistics go in and come out as tensors (the Python
        `RunningStandardizer` stays the owner), so whole batches are a single hand-off to
        TensorFlow: the worker thread takes the GIL back once per call, not once per NumPy
        operation, which matters while the event loop holds it decoding the next batch.
        """
        if stats:
            x_before, x_after, stats = self._standardized(x, *stats)
        else:
            x_before = x_after = x
        outputs = self.model(x_before, training=False)
        with tf.GradientTape() as tape:
            predicted = self.model(x_after, training=True)
            loss = self._loss(y, predicted)
            if self.model.losses:
                loss = loss + tf.add_n(self.model.losses)
        variables = self.model.trainable_variables
        gradients = tape.gradient(loss, variables)
        self.optimizer.apply_gradients(zip(gradients, variables, strict=True))
        first, second = self._prequential_sums(outputs, y)
        return outputs, loss, stats, first, second

    def _standardized(
        self, x: tf.Tensor, count: tf.Tensor, mean: tf.Tensor, m2: tf.Tensor
    ) -> tuple[tf.Tensor, tf.Tensor, tuple[tf.Tensor, ...]]:
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
        return x_before, x_after, (total, mean, m2)

    def _loss(self, y: tf.Tensor, predicted: tf.Tensor) -> tf.Tensor:
        """The compiled model's own loss, or the task's: log-loss on probabilities, or MSE."""
        predicted = tf.cast(predicted, tf.float32)
        kind = self.task.kind
        if self._loss_fn is not None:
            if kind == "multiclass":
                y_true = tf.cast(y, tf.int32)
                if self._one_hot_labels:
                    y_true = tf.one_hot(y_true, self.task.outputs)
            else:
                y_true = y[:, None]
            return tf.reduce_mean(self._loss_fn(y_true, predicted))
        if kind == "binary":
            p = tf.clip_by_value(predicted[:, 0], EPSILON, 1 - EPSILON)
            return -tf.reduce_mean(y * tf.math.log(p) + (1 - y) * tf.math.log(1 - p))
        if kind == "multiclass":
            picked = tf.gather(predicted, tf.cast(y, tf.int32), batch_dims=1)
            return -tf.reduce_mean(tf.math.log(tf.clip_by_value(picked, EPSILON, 1.0)))
        return tf.reduce_mean(tf.square(predicted[:, 0] - y))

    def _prequential_sums(self, outputs: tf.Tensor, y: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """`Task.batch_totals` in the graph: (correct, log-loss) or (|error|, error²) sums."""
        out = tf.cast(outputs, tf.float64)
        y64 = tf.cast(y, tf.float64)
        kind = self.task.kind
        if kind == "regression":
            error = out[:, 0] - y64
            return tf.reduce_sum(tf.abs(error)), tf.reduce_sum(tf.square(error))
        if kind == "binary":
            p = tf.clip_by_value(out[:, 0], EPSILON, 1 - EPSILON)
            correct = tf.reduce_sum(tf.cast(tf.equal(p >= 0.5, y64 >= 0.5), tf.float64))
            log_loss = -tf.reduce_sum(y64 * tf.math.log(p) + (1 - y64) * tf.math.log(1 - p))
            return correct, log_loss
        index = tf.cast(y, tf.int64)
        predicted = tf.argmax(out, axis=1)
        correct = tf.reduce_sum(tf.cast(tf.equal(predicted, index), tf.float64))
        picked = tf.gather(out, index, batch_dims=1)
        return correct, -tf.reduce_sum(tf.math.log(tf.clip_by_value(picked, EPSILON, 1.0)))

    # -- learning ----------------------------------------------------------------------------

    def learn(self, x: Batch, y: np.ndarray) -> BatchResult:
        """Score the batch with the current model (test), then train on it once (train)."""
        if not y.shape[0]:
            raise ValueError("nothing to learn: the batch is empty")
        return self.learn_in_order(x, y, int(y.shape[0]))[0]

    def learn_in_order(self, x: Batch, y: np.ndarray, batch_size: int) -> list[BatchResult]:
        """`learn` each mini-batch of `batch_size` rows in turn (the last may be fewer), in one
        compiled call; their results in order."""
        n = int(y.shape[0])
        if n == 0:
            return []
        labels = y.astype(np.float32, copy=False)
        size = np.int32(min(batch_size, n))
        if self.inputs.named:
            assert isinstance(x, dict)
            outputs, losses, weights, _, firsts, seconds = self._step(x, labels, size)
        else:
            s = self.standardizer
            assert isinstance(x, np.ndarray)
            features = x.astype(np.float32, copy=False)
            outputs, losses, weights, stats, firsts, seconds = self._step(
                features, labels, size, s.count, s.mean, s.m2
            )
            if stats:
                count, mean, m2 = stats
                s.count, s.mean, s.m2 = int(count), mean.numpy(), m2.numpy()
        self._weights_after_step = weights
        outputs = np.asarray(outputs)
        results = []
        for start, loss, first, second in zip(
            range(0, n, int(size)),
            losses.numpy().tolist(),
            firsts.numpy().tolist(),
            seconds.numpy().tolist(),
            strict=True,
        ):
            rows = min(int(size), n - start)
            self.prequential.add_totals(rows, first, second)
            self.history.observe(self.samples_trained + rows, self.prequential)
            self.samples_trained += rows
            self.batches_trained += 1
            self.last_loss = loss
            results.append(
                BatchResult(outputs[start : start + rows], loss, rows, second / max(rows, 1))
            )
        return results

    def warm_up(self) -> None:
        """Trace the compiled step now, without running it, so the first batch does not pay for
        tracing (and what tracing allocates exists before the heap is frozen)."""
        self._step.get_concrete_function()

    def reset_optimizer(self) -> None:
        """Zero the optimizer's moments and step count (keeping its learning rate): after a
        drift, the next steps follow the new concept's gradients at full size."""
        for variable in self.optimizer.variables:
            if not variable.path.endswith("learning_rate"):
                variable.assign(variable.numpy() * 0)

    def evaluate(self, x: Batch) -> np.ndarray:
        """Outputs [n, K] for raw features with the current model (no training)."""
        if not self.inputs.named and self.plan.standardize:
            x = self.standardizer.transform(np.asarray(x))
        return np.asarray(self.model(x, training=False))

    def evaluate_probabilities(self, x: np.ndarray) -> np.ndarray:
        """Binary: probabilities of the positive class for raw features [n, F]."""
        return self.evaluate(x)[:, 0]

    def weights(self) -> list[np.ndarray]:
        """The model's weights as NumPy copies, in `model.get_weights()` order."""
        if self._weights_after_step is not None:
            return [tensor.numpy() for tensor in self._weights_after_step]
        return [np.asarray(w) for w in self.model.get_weights()]

    def activations(self) -> list[str] | None:
        """Activation of each Dense layer, in order, for a Dense-only model (the NumPy fast
        path serves it); None for any other model (served by Keras)."""
        return None if self._activations is None else list(self._activations)

    def config(self) -> str:
        """The model's Keras config (JSON), to rebuild it without the user's code."""
        if self._config is None:
            self._config = portable_config(self.model)
        return self._config

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
            "arch": self.plan.spec if self.plan.spec in ("mlp", "linear") else "custom",
            "activations": self.activations(),
            "model": {**self.plan.describe(), "config": self.config()},
        }

    def check_compatible(self, state: dict[str, Any]) -> None:
        """ModelMismatch unless `state` was written for this model (its fingerprint; the
        architecture and width for checkpoints older than `STREAMFIT_MODEL`)."""
        described = state.get("model")
        if described is None:
            if (
                state["num_features"] != self.num_features
                or state["arch"] != self.plan.spec
                or self.task.kind != "binary"
            ):
                raise ModelMismatch(
                    f"checkpoint is for {state['arch']} with {state['num_features']} features "
                    f"(binary); the service is configured for {self.plan.spec} with "
                    f"{self.num_features} ({self.task.kind})"
                )
            return
        if described.get("spec") != self.plan.spec:
            raise ModelMismatch(
                f"checkpoint holds model {described.get('spec')}, the service is configured "
                f"for {self.plan.spec}"
            )
        if described.get("task") != self.task.state():
            raise ModelMismatch(
                f"checkpoint is for task {described.get('task')}, the service is configured "
                f"for {self.task.state()}"
            )
        theirs = described.get("inputs") or {}
        if theirs != self.inputs.state():
            raise ModelMismatch(
                f"checkpoint takes {len(theirs.get('kinds', []))} features "
                f"{theirs.get('names') or ''}, the service is configured for "
                f"{self.num_features} {list(self.inputs.names) or ''}".rstrip()
            )
        if described.get("fingerprint") != self.plan.fingerprint:
            raise ModelMismatch(
                f"checkpoint holds another architecture of {self.plan.spec} (fingerprint "
                f"{described.get('fingerprint')}, configured {self.plan.fingerprint})"
            )

    def restore(self, state: dict[str, Any]) -> None:
        """Load a state produced by `state()` (possibly by another process)."""
        self.check_compatible(state)
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


def _name(loss: Any) -> str:
    return str(
        getattr(loss, "name", None) or getattr(loss, "__name__", "") or type(loss).__name__
    ).lower()
