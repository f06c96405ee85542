"""Models, tasks and start-up checks: MODEL forms, output widths, fingerprints, the checkpoint
of another model, checkpoints older than STREAMFIT_MODEL, and every path equal to Keras."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from service.checkpoints import Checkpoint, CheckpointStore
from service.model.resolve import ModelMismatch, resolve_model
from service.model.startup import check_model
from service.serving.snapshot import snapshot_from_learner, snapshot_from_state
from service.settings import Settings, SettingsError, load_settings
from service.training.learner import builtin_learner, learner_for
from tests.user_models import save_iris_model


@pytest.fixture(autouse=True)
def _no_streamfit_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("STREAMFIT_"):
            monkeypatch.delenv(name)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"task": "multiclass"}, "CLASSES or STREAMFIT_NUM_CLASSES"),
        ({"task": "multiclass", "classes": "a,b", "num_classes": 3}, "NUM_CLASSES is 3"),
        ({"task": "binary", "classes": "a,b,c"}, "binary takes 2 classes"),
        ({"features": "a,b", "num_features": 3}, "STREAMFIT_NUM_FEATURES=3"),
        ({"model": "tests.user_models:wrong_width"}, "TASK=binary needs [n, 1]"),
        ({"model": "tests.user_models:nothing_here"}, "nothing_here"),
        ({"model": "no/such/file.keras"}, "no such file"),
        ({"model": "mlp!"}, "is not mlp, linear"),
        (
            {"model": "tests.user_models:payments", "features": "amount,country"},
            "'hour' is missing from STREAMFIT_FEATURES",
        ),
        ({"model": "tests.user_models:payments", "standardize": "on"}, "named inputs"),
        ({"model": "tests.user_models:payments", "message_format": "csv"}, "string inputs"),
        (
            {"model": "tests.user_models:payments", "message_format": "json", "labels_topic": "l"},
            "STREAMFIT_LABELS_TOPIC",
        ),
        ({"message_format": "avro", "schema_registry_url": "http://x"}, "STREAMFIT_FEATURES"),
    ],
)
def test_a_model_or_setting_that_does_not_fit_is_one_line(
    tmp_path: Path, settings: dict[str, object], message: str
) -> None:
    with pytest.raises(SettingsError) as caught:
        check_model(load_settings(checkpoint_dir=tmp_path, **settings))
    text = str(caught.value)
    assert message in text and "\n" not in text


def test_model_and_its_alias_must_agree() -> None:
    with pytest.raises(SettingsError, match="disagree"):
        load_settings(model="mlp", model_arch="linear")
    assert load_settings(model_arch="linear").model_spec == "linear"


def test_builtins_adapt_their_output_layer_to_the_task() -> None:
    for task, extra, width, activation in (
        ("binary", {}, 1, "sigmoid"),
        ("multiclass", {"num_classes": 4}, 4, "softmax"),
        ("regression", {}, 1, "linear"),
    ):
        model, plan = resolve_model(Settings(task=task, **extra))  # type: ignore[arg-type]
        assert model.outputs[0].shape[-1] == width
        assert model.layers[-1].get_config()["activation"] == activation
        assert plan.standardize and not plan.inputs.named


def test_the_fingerprint_ignores_layer_names_and_sees_the_architecture() -> None:
    first = resolve_model(Settings())[1].fingerprint
    assert resolve_model(Settings())[1].fingerprint == first  # Keras numbered the layers anew
    assert resolve_model(Settings(model="linear"))[1].fingerprint != first
    assert resolve_model(Settings(num_features=17))[1].fingerprint != first


def test_a_keras_file_brings_its_weights_and_optimizer(tmp_path: Path) -> None:
    import keras

    path = save_iris_model(tmp_path / "iris.keras")
    saved = keras.saving.load_model(path)
    learner = learner_for(
        Settings(model=str(path), task="multiclass", num_classes=3, num_features=4)
    )
    assert learner.plan.compiled and not learner.plan.standardize
    for mine, theirs in zip(learner.model.get_weights(), saved.get_weights(), strict=True):
        np.testing.assert_array_equal(mine, theirs)
    assert float(learner.optimizer.learning_rate) == pytest.approx(0.01)


def test_a_checkpoint_of_another_model_stops_start_up(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path, 5)
    learner = builtin_learner(18, "mlp", task="regression")
    store.save(Checkpoint(version=1, state=learner.state(), offsets={}))
    check_model(load_settings(checkpoint_dir=tmp_path, task="regression"))  # the same: fine
    with pytest.raises(SettingsError, match="STREAMFIT_CHECKPOINT_DIR=.*another model"):
        check_model(load_settings(checkpoint_dir=tmp_path))
    with pytest.raises(ModelMismatch, match="task"):
        builtin_learner(18, "mlp").restore(learner.state())


def test_checkpoints_written_before_models_existed_still_restore_and_serve() -> None:
    old = builtin_learner(18, "mlp", seed=3)
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((64, 18)).astype(np.float32), rng.integers(0, 2, 64)
    old.learn(x, y.astype(np.float32))
    state = old.state()
    del state["model"]  # what a checkpoint of the previous release holds
    restored = builtin_learner(18, "mlp", seed=9)
    restored.restore(state)
    np.testing.assert_allclose(restored.evaluate(x), old.evaluate(x), rtol=1e-6, atol=1e-6)
    served = snapshot_from_state(state, version=4)
    np.testing.assert_allclose(served.predict(x), old.evaluate(x)[:, 0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("settings", "rows"),
    [
        ({"task": "multiclass", "num_classes": 3}, None),
        ({"task": "regression"}, None),
        ({"model": "tests.user_models:payments", "message_format": "json"}, "named"),
    ],
)
def test_every_serving_path_answers_what_keras_answers(
    settings: dict[str, object], rows: str | None
) -> None:
    """The NumPy path (Dense-only) and the Keras path, from the learner and from a
    checkpoint's state, equal the trained Keras model on the same weights (1e-5)."""
    learner = learner_for(Settings(**settings))  # type: ignore[arg-type]
    rng = np.random.default_rng(1)
    if rows == "named":
        x: object = {
            "amount": rng.gamma(2.0, 25.0, (50, 1)).astype(np.float32),
            "country": rng.choice(["FR", "US", "XX"], (50, 1)).astype(object),
            "hour": rng.integers(0, 24, (50, 1)).astype(np.float32),
        }
        y = rng.integers(0, 2, 50).astype(np.float32)
    else:
        x = rng.standard_normal((50, 18)).astype(np.float32)
        y = rng.integers(0, 3, 50).astype(np.float32)
    for _ in range(3):
        learner.learn(x, y)  # type: ignore[arg-type]
    expected = learner.evaluate(x)  # type: ignore[arg-type]
    for snapshot in (
        snapshot_from_learner(learner, 1),
        snapshot_from_state(learner.state(), 1),
    ):
        assert (snapshot.runner is None) == (rows is None)  # Dense-only: the NumPy path
        np.testing.assert_allclose(snapshot.outputs(x), expected, rtol=1e-5, atol=1e-5)  # type: ignore[arg-type]
