"""Learner: test-then-train order, exact state round trip, no retracing, refused restores."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from service.checkpoints import Checkpoint, CheckpointStore
from service.online_stats import PrequentialWindow, RunningStandardizer, log_losses
from service.synthetic import synthetic_susy
from service.training.learner import Learner, builtin_learner

BATCH = 128


def batches(count: int, seed: int = 0, width: int = 18) -> list[tuple[np.ndarray, np.ndarray]]:
    x, y = synthetic_susy(count * BATCH, seed=seed, num_features=width)
    return [(x[i : i + BATCH], y[i : i + BATCH]) for i in range(0, count * BATCH, BATCH)]


def trained(arch: str, count: int = 4, seed: int = 0) -> Learner:
    learner = builtin_learner(18, arch, seed=seed)
    for x, y in batches(count, seed=10 + seed):
        learner.learn(x, y)
    return learner


def copy_dropout_rng(source: Learner, target: Learner) -> None:
    """Dropout's random state lives outside get_weights(): Keras SeedGenerator variables."""
    for theirs, ours in zip(
        source.model.non_trainable_variables, target.model.non_trainable_variables, strict=True
    ):
        ours.assign(theirs.numpy())


def test_the_compiled_step_standardizes_as_the_numpy_standardizer_does() -> None:
    """The running statistics move inside the TensorFlow step; they must match the reference."""
    learner = builtin_learner(18, "linear")
    reference = RunningStandardizer(18)
    rng = np.random.default_rng(3)
    for size in (1, 2, 37, 128, 5):  # a first batch of one sample: std stays 1 until two
        x = (rng.normal(size=(size, 18)) * 1000 + 50).astype(np.float32)
        reference.update(x)
        learner.learn(x, (rng.random(size) < 0.5).astype(np.float32))
        assert learner.standardizer.count == reference.count
        np.testing.assert_allclose(learner.standardizer.mean, reference.mean, rtol=1e-12)
        np.testing.assert_allclose(learner.standardizer.m2, reference.m2, rtol=1e-9)
    assert learner.samples_trained == reference.count


def test_the_compiled_step_counts_prequential_metrics_as_the_window_does() -> None:
    learner = builtin_learner(18, "mlp")
    reference = PrequentialWindow(learner.prequential.window)
    for x, y in batches(5, seed=4):
        result = learner.learn(x, y)
        reference.add(result.probabilities, y)
        assert learner.prequential.accuracy == pytest.approx(reference.accuracy, abs=1e-12)
        assert learner.prequential.loss == pytest.approx(reference.loss, rel=1e-6)
    assert result.prequential_loss == pytest.approx(log_losses(result.probabilities, y).mean())


def test_learn_scores_with_the_model_and_standardizer_from_before_the_update() -> None:
    learner = trained("mlp", count=3)
    x, y = batches(1, seed=99)[0]
    x = x + 3.0  # a shifted batch moves the standardizer noticeably
    y = y.astype(np.float32)

    before = learner.evaluate_probabilities(x)
    np.testing.assert_array_equal(before, learner.evaluate_probabilities(x))  # no dropout

    # What scoring after the standardizer update (but with the old weights) would give.
    other = builtin_learner(18, "mlp")
    other.restore(learner.state())
    other.standardizer.update(x)
    with_new_standardizer = other.evaluate_probabilities(x)
    assert np.abs(with_new_standardizer - before).max() > 1e-3

    samples, batches_before = learner.samples_trained, learner.batches_trained
    result = learner.learn(x, y)

    assert result.probabilities.shape == (BATCH,)
    assert result.samples == BATCH
    assert np.all((result.probabilities >= 0.0) & (result.probabilities <= 1.0))
    np.testing.assert_allclose(result.probabilities, before, atol=1e-6)
    after = learner.evaluate_probabilities(x)
    assert np.abs(after - before).max() > 1e-4  # it did train on the batch
    assert np.isfinite(result.loss) and result.loss > 0
    assert learner.last_loss == result.loss
    assert learner.samples_trained == samples + BATCH
    assert learner.batches_trained == batches_before + 1


def test_first_batch_feeds_the_prequential_window() -> None:
    learner = builtin_learner(18, "linear", seed=3)
    x, y = batches(1, seed=4)[0]
    expected = learner.evaluate_probabilities(x)
    result = learner.learn(x, y)
    np.testing.assert_allclose(result.probabilities, expected, atol=1e-6)
    accuracy = float(((result.probabilities >= 0.5) == (y >= 0.5)).mean())
    assert learner.prequential.accuracy == pytest.approx(accuracy)
    p = np.clip(result.probabilities.astype(np.float64), 1e-7, 1 - 1e-7)
    loss = -(y * np.log(p) + (1 - y) * np.log(1 - p)).mean()
    assert learner.prequential.loss == pytest.approx(loss, rel=1e-6)


@pytest.mark.parametrize("arch", ["mlp", "linear"])
def test_restore_gives_identical_predictions_and_counters(arch: str) -> None:
    original = trained(arch)
    restored = builtin_learner(18, arch, seed=123)
    restored.restore(original.state())

    x, _ = batches(2, seed=77)[1]
    np.testing.assert_array_equal(
        restored.evaluate_probabilities(x), original.evaluate_probabilities(x)
    )
    assert restored.samples_trained == original.samples_trained == 4 * BATCH
    assert restored.batches_trained == original.batches_trained == 4
    assert restored.last_loss == original.last_loss
    assert restored.prequential.accuracy == original.prequential.accuracy
    assert restored.prequential.loss == original.prequential.loss
    for mine, theirs in zip(
        restored.optimizer.variables, original.optimizer.variables, strict=True
    ):
        np.testing.assert_array_equal(mine.numpy(), theirs.numpy())


def _continue_both(original: Learner, restored: Learner, steps: int = 3) -> None:
    for x, y in batches(steps, seed=55):
        expected = original.learn(x, y)
        got = restored.learn(x, y)
        assert got.loss == expected.loss
        np.testing.assert_array_equal(got.probabilities, expected.probabilities)
    for mine, theirs in zip(
        restored.model.get_weights(), original.model.get_weights(), strict=True
    ):
        np.testing.assert_array_equal(mine, theirs)


def test_restore_continues_training_identically_linear() -> None:
    original = trained("linear")
    restored = builtin_learner(18, "linear", seed=5)
    restored.restore(original.state())
    _continue_both(original, restored)


def test_restore_continues_training_identically_mlp_given_the_dropout_rng() -> None:
    # The weights and the optimizer state (Adam moments, iteration count) restore exactly:
    # with dropout's random state copied by hand the continuation is bit-identical.
    original = trained("mlp")
    restored = builtin_learner(18, "mlp", seed=5)
    restored.restore(original.state())
    copy_dropout_rng(original, restored)
    _continue_both(original, restored)


def test_restore_continues_training_identically_mlp() -> None:
    original = trained("mlp")
    restored = builtin_learner(18, "mlp")  # same seed as the original, still differs
    restored.restore(original.state())
    _continue_both(original, restored)


def test_restore_through_a_checkpoint_file(tmp_path: Path) -> None:
    original = trained("linear", count=3)
    store = CheckpointStore(tmp_path)
    store.save(Checkpoint(version=1, state=original.state(), offsets={"t:0": 384}))
    loaded = store.latest()
    assert loaded is not None

    restored = builtin_learner(18, "linear", seed=9)
    restored.restore(loaded.state)
    x, _ = batches(1, seed=31)[0]
    np.testing.assert_array_equal(
        restored.evaluate_probabilities(x), original.evaluate_probabilities(x)
    )
    _continue_both(original, restored, steps=2)


def test_variable_batch_sizes_do_not_retrace() -> None:
    learner = builtin_learner(18, "mlp")
    x, y = synthetic_susy(1 + 7 + 256 + 3, seed=2)
    start = 0
    for size in (1, 7, 256, 3):
        result = learner.learn(x[start : start + size], y[start : start + size])
        assert result.probabilities.shape == (size,)
        start += size
    assert learner._step.experimental_get_tracing_count() == 1
    assert learner.samples_trained == start


def test_restore_with_other_num_features_is_refused() -> None:
    narrow = builtin_learner(5, "linear")
    x, y = batches(1, width=5)[0]
    narrow.learn(x, y)
    learner = builtin_learner(18, "linear")
    weights = learner.model.get_weights()
    with pytest.raises(ValueError, match="5 features"):
        learner.restore(narrow.state())
    for mine, before in zip(learner.model.get_weights(), weights, strict=True):
        np.testing.assert_array_equal(mine, before)  # nothing half-restored


def test_restore_with_other_architecture_is_refused() -> None:
    with pytest.raises(ValueError, match="linear"):
        builtin_learner(18, "mlp").restore(builtin_learner(18, "linear").state())


def test_restore_with_mismatched_optimizer_state_is_refused() -> None:
    state = builtin_learner(18, "linear").state()
    state["optimizer"] = state["optimizer"][:-1]
    with pytest.raises(ValueError, match="optimizer"):
        builtin_learner(18, "linear").restore(state)


def test_unknown_architecture_is_refused() -> None:
    with pytest.raises(ValueError, match="cnn"):
        builtin_learner(18, "cnn")


def _rows(settings: dict[str, object], n: int) -> tuple[object, np.ndarray]:
    rng = np.random.default_rng(4)
    if settings.get("model") == "tests.user_models:payments":
        x: object = {
            "amount": rng.gamma(2.0, 25.0, (n, 1)).astype(np.float32),
            "country": rng.choice(["FR", "US", "XX"], (n, 1)).astype(object),
            "hour": rng.integers(0, 24, (n, 1)).astype(np.float32),
        }
        return x, rng.integers(0, 2, n).astype(np.float32)
    x_matrix, y = synthetic_susy(n, seed=4)
    if settings.get("task") == "multiclass":
        y = rng.integers(0, 3, n)
    elif settings.get("task") == "regression":
        y = x_matrix[:, 0] * 2.0 + rng.normal(0, 0.1, n)
    return x_matrix, y.astype(np.float32)


@pytest.mark.parametrize(
    "settings",
    [
        {"model": "mlp"},
        {"model": "linear", "standardize": "off"},
        {"task": "multiclass", "num_classes": 3},
        {"task": "regression"},
        {"model": "tests.user_models:payments", "message_format": "json"},
    ],
)
def test_mini_batches_learned_in_one_call_are_learned_as_one_call_each(
    settings: dict[str, object],
) -> None:
    """`learn_in_order` (the loop in the graph) gives exactly what `learn` per mini-batch
    gives: the same outputs, weights, optimizer state, standardizer and prequential metrics."""
    from service.settings import Settings
    from service.training.learner import learner_for

    x, y = _rows(settings, 300)

    def rows(start: int, stop: int) -> object:
        if isinstance(x, dict):
            return {name: column[start:stop] for name, column in x.items()}
        return x[start:stop]  # type: ignore[index]

    one_by_one = learner_for(Settings(seed=3, **settings))  # type: ignore[arg-type]
    in_order = learner_for(Settings(seed=3, **settings))  # type: ignore[arg-type]
    in_order.restore(one_by_one.state())  # the same initial weights and dropout state

    expected = [one_by_one.learn(rows(s, s + 64), y[s : s + 64]) for s in range(0, 300, 64)]  # type: ignore[arg-type]
    results = in_order.learn_in_order(rows(0, 300), y, 64)  # type: ignore[arg-type]

    assert [r.samples for r in results] == [64, 64, 64, 64, 44]
    for mine, theirs in zip(results, expected, strict=True):
        np.testing.assert_array_equal(mine.outputs, theirs.outputs)
        assert mine.loss == pytest.approx(theirs.loss, rel=1e-6)
        assert mine.prequential_loss == pytest.approx(theirs.prequential_loss, rel=1e-12)
    mine_state, theirs_state = in_order.state(), one_by_one.state()
    for key in ("weights", "optimizer", "model_state"):
        for a, b in zip(mine_state[key], theirs_state[key], strict=True):
            np.testing.assert_array_equal(a, b)
    for a, b in zip(
        mine_state["standardizer"].values(), theirs_state["standardizer"].values(), strict=True
    ):
        np.testing.assert_array_equal(a, b)
    assert mine_state["prequential"] == theirs_state["prequential"]
    assert in_order.batches_trained == 5 and in_order.samples_trained == 300
    assert len(in_order.history.points) == len(one_by_one.history.points)
    # `learn` is the same compiled function with one mini-batch: traced once for both.
    assert in_order._step.experimental_get_tracing_count() == 1
