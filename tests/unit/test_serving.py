"""Serving: the NumPy forward pass equals the Keras model; snapshots are frozen copies."""

from __future__ import annotations

from types import SimpleNamespace

import keras
import numpy as np
import pytest

from service.model.inputs import InputSpec
from service.model.resolve import dense_activations, portable_config
from service.model.task import Task
from service.online_stats import RunningStandardizer
from service.serving.snapshot import (
    SnapshotHolder,
    build_snapshot,
    snapshot_from_learner,
    snapshot_from_state,
)
from service.synthetic import synthetic_susy
from service.training.learner import Learner, builtin_learner


@pytest.fixture(scope="module")
def mlp() -> Learner:
    learner = builtin_learner(18, "mlp", seed=4)
    x, y = synthetic_susy(256 * 8, seed=21)
    for i in range(0, len(y), 256):
        learner.learn(x[i : i + 256], y[i : i + 256])
    return learner


def probe_rows(rows: int = 1000, seed: int = 22) -> np.ndarray:
    x, _ = synthetic_susy(rows, seed=seed)
    rng = np.random.default_rng(seed)
    x[: rows // 4] *= rng.uniform(0.0, 3.0, (rows // 4, 1)).astype(np.float32)  # off-stream
    return x


def test_snapshot_from_learner_matches_keras(mlp: Learner) -> None:
    x = probe_rows()
    snapshot = snapshot_from_learner(mlp, version=3)
    expected = mlp.evaluate_probabilities(x)
    got = snapshot.predict(x)
    assert got.shape == (1000,)
    assert np.abs(expected - 0.5).max() > 0.2  # a trained model, not a constant
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
    assert snapshot.version == 3
    assert snapshot.num_features == 18
    assert snapshot.samples_trained == mlp.samples_trained
    assert snapshot.batches_trained == mlp.batches_trained
    np.testing.assert_allclose(snapshot.predict(x[:1]), expected[:1], atol=1e-5, rtol=0)


def test_snapshot_from_state_matches_keras(mlp: Learner) -> None:
    x = probe_rows(seed=23)
    snapshot = snapshot_from_state(mlp.state(), version=9)
    np.testing.assert_allclose(
        snapshot.predict(x), mlp.evaluate_probabilities(x), atol=1e-5, rtol=0
    )
    assert snapshot.version == 9
    assert snapshot.samples_trained == mlp.samples_trained


def test_linear_snapshot_matches_keras() -> None:
    learner = builtin_learner(18, "linear", seed=1)
    x, y = synthetic_susy(1024, seed=24)
    for i in range(0, 1024, 128):
        learner.learn(x[i : i + 128], y[i : i + 128])
    probe = probe_rows(seed=25)
    snapshot = snapshot_from_learner(learner, version=1)
    assert len(snapshot.layers) == 1
    np.testing.assert_allclose(
        snapshot.predict(probe), learner.evaluate_probabilities(probe), atol=1e-5, rtol=0
    )


def test_snapshot_arrays_are_read_only_copies(mlp: Learner) -> None:
    snapshot = snapshot_from_learner(mlp, version=1)
    arrays = [snapshot.mean, snapshot.std]
    arrays += [a for layer in snapshot.layers for a in (layer.kernel, layer.bias)]
    assert len(snapshot.layers) == 4
    for array in arrays:
        assert not array.flags.writeable
        with pytest.raises(ValueError):
            array[...] = 0.0
    # A copy: changing the learner afterwards does not change a published snapshot.
    x = probe_rows(200, seed=26)
    before = snapshot.predict(x)
    other = builtin_learner(18, "mlp", seed=4)
    other.restore(mlp.state())
    other.standardizer.update(x + 10.0)
    other.model.set_weights([w + 1.0 for w in other.model.get_weights()])
    frozen_from_other = snapshot_from_learner(other, version=2)
    np.testing.assert_array_equal(snapshot.predict(x), before)
    assert not np.allclose(frozen_from_other.predict(x), before)


def test_predict_does_not_modify_its_input(mlp: Learner) -> None:
    x = probe_rows(50, seed=27)
    copy = x.copy()
    snapshot_from_learner(mlp, version=1).predict(x)
    np.testing.assert_array_equal(x, copy)


def test_unsupported_activation_is_refused() -> None:
    rng = np.random.default_rng(0)
    weights = [rng.standard_normal((3, 1)), np.zeros(1)]
    with pytest.raises(TypeError, match="gelu"):
        build_snapshot(weights, ["gelu"], np.zeros(3), np.ones(3), 1, 0, 0)
    snapshot = build_snapshot(weights, ["tanh"], np.zeros(3), np.ones(3), 1, 0, 0)
    x = rng.standard_normal((4, 3))
    np.testing.assert_allclose(snapshot.predict(x), np.tanh(x @ weights[0])[:, 0], rtol=1e-6)


def test_build_snapshot_copies_the_callers_arrays() -> None:
    rng = np.random.default_rng(1)
    weights = [rng.standard_normal((3, 2)).astype(np.float32), np.zeros(2, np.float32)]
    weights += [rng.standard_normal((2, 1)).astype(np.float32), np.zeros(1, np.float32)]
    mean, std = np.zeros(3, np.float32), np.ones(3, np.float32)
    snapshot = build_snapshot(weights, ["relu", "sigmoid"], mean, std, 1, 0, 0)
    x = rng.standard_normal((5, 3)).astype(np.float32)
    before = snapshot.predict(x)
    for array in [*weights, mean, std]:
        assert array.flags.writeable  # the caller's arrays are left alone...
        array += 1.0
    np.testing.assert_array_equal(snapshot.predict(x), before)  # ...and not shared


def _learner_like(model: keras.Model) -> SimpleNamespace:
    activations = [
        layer.get_config()["activation"]
        for layer in model.layers
        if isinstance(layer, keras.layers.Dense)
    ]
    return SimpleNamespace(
        model=model,
        weights=model.get_weights,
        activations=lambda: activations,
        standardizer=RunningStandardizer(4),
        samples_trained=0,
        batches_trained=0,
    )


@pytest.mark.parametrize(
    "layers",
    [
        pytest.param(
            [
                keras.layers.Dense(8, activation="relu"),
                keras.layers.BatchNormalization(),
                keras.layers.Dense(1, activation="sigmoid"),
            ],
            id="batch-norm",
        ),
        pytest.param(
            [
                keras.layers.Dense(8, activation="relu"),
                keras.layers.LayerNormalization(),
                keras.layers.Dense(1, activation="sigmoid"),
            ],
            id="layer-norm",
        ),
        pytest.param(
            [
                keras.layers.Dense(8, activation="relu", use_bias=False),
                keras.layers.Dense(1, activation="sigmoid"),
            ],
            id="dense-without-bias",
        ),
        pytest.param(
            [keras.layers.Dense(8, activation="elu"), keras.layers.Dense(1, activation="sigmoid")],
            id="elu",
        ),
    ],
)
def test_other_models_take_the_keras_path_and_match_keras(
    layers: list[keras.layers.Layer],
) -> None:
    """Not Dense-only: no NumPy layers, but the Keras config run with the snapshot's weights
    answers what the model itself answers."""
    model = keras.Sequential([keras.Input((4,)), *layers])
    inputs = InputSpec.positional(4)
    assert dense_activations(model, inputs) is None
    snapshot = build_snapshot(
        model.get_weights(),
        None,
        np.empty(0),
        np.empty(0),
        1,
        0,
        0,
        Task(),
        inputs,
        portable_config(model),
    )
    assert snapshot.layers == () and snapshot.runner is not None
    x = np.random.default_rng(5).standard_normal((7, 4)).astype(np.float32)
    np.testing.assert_allclose(
        snapshot.predict(x), np.asarray(model(x, training=False))[:, 0], rtol=1e-5, atol=1e-5
    )


def test_snapshot_holder_swaps_whole_snapshots(mlp: Learner) -> None:
    holder = SnapshotHolder()
    assert holder.current is None
    first = snapshot_from_learner(mlp, version=1)
    second = snapshot_from_learner(mlp, version=2)
    holder.publish(first)
    assert holder.current is first
    holder.publish(second)
    assert holder.current is second


def test_the_served_version_never_goes_back(mlp: Learner) -> None:
    """A learner-thread snapshot built with the old version, landing after a checkpoint's."""
    holder = SnapshotHolder()
    holder.publish(snapshot_from_learner(mlp, version=4))
    late = snapshot_from_learner(mlp, version=3)
    holder.publish(late)
    current = holder.current
    assert current is not None and current.version == 4
    assert current.layers is late.layers  # the newer weights are served


def test_snapshot_matches_keras_for_large_offset_features() -> None:
    rng = np.random.default_rng(6)
    learner = builtin_learner(18, "linear", seed=2)
    for _ in range(8):
        x = (1e5 + rng.standard_normal((256, 18))).astype(np.float32)
        learner.learn(x, (x[:, 0] > 1e5).astype(np.float32))
    probe = (1e5 + rng.standard_normal((1000, 18))).astype(np.float32)
    np.testing.assert_allclose(
        snapshot_from_learner(learner, version=1).predict(probe),
        learner.evaluate_probabilities(probe),
        atol=1e-5,
        rtol=0,
    )
