"""Champion and challenger: the promotion rule as a table of cases, the roles a restart takes,
both learners through a checkpoint file and back, and the `challenger` label."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from service import errors
from service.checkpoints import Checkpoint, CheckpointStore
from service.model.task import Task
from service.online_stats import PrequentialWindow, history_of_checkpoint
from service.serving.batcher import MicroBatcher
from service.serving.dataplane import DataPlane
from service.serving.follower import CheckpointFollower
from service.serving.snapshot import ModelSnapshot, SnapshotHolder, snapshot_from_state
from service.settings import Settings
from service.synthetic import synthetic_susy
from service.training.challenger import PromotionRule, Roles, pair_for
from tests.unit.conftest import servable_state

REGRESSION = Task("regression", ())


def window(task: Task, *batches: tuple[int, float, float]) -> PrequentialWindow:
    w = PrequentialWindow(task=task)
    for batch in batches:
        w.add_totals(*batch)
    return w


# (champion batches, challenger batches, task, samples, promoted_at, promoted?)
CASES = [
    # accuracy 0.75 against 0.77 over 2,000 samples: ahead by the margin
    ([(2000, 1500, 0)], [(2000, 1540, 0)], Task(), 2000, None, True),
    # ahead by less than the margin
    ([(2000, 1500, 0)], [(2000, 1510, 0)], Task(), 2000, None, False),
    # behind
    ([(2000, 1540, 0)], [(2000, 1500, 0)], Task(), 2000, None, False),
    # far ahead, but the windows hold fewer than PROMOTE_WINDOW samples
    ([(1000, 500, 0)], [(1000, 900, 0)], Task(), 1000, None, False),
    # only the newest 2,000 count: the challenger was worse long ago, better now
    (
        [(2000, 1900, 0), (2000, 1500, 0)],
        [(2000, 1000, 0), (2000, 1600, 0)],
        Task(),
        4000,
        None,
        True,
    ),
    # the previous promotion was less than PROMOTE_WINDOW samples ago
    ([(2000, 1500, 0)], [(2000, 1600, 0)], Task(), 5000, 4000, False),
    ([(2000, 1500, 0)], [(2000, 1600, 0)], Task(), 6000, 4000, True),
    # regression: RMSE, lower is better (sums of |error| and error²)
    ([(2000, 0, 2000 * 1.0)], [(2000, 0, 2000 * 0.81)], REGRESSION, 2000, None, True),
    ([(2000, 0, 2000 * 0.81)], [(2000, 0, 2000 * 1.0)], REGRESSION, 2000, None, False),
]


@pytest.mark.parametrize(("ours", "theirs", "task", "samples", "promoted_at", "promoted"), CASES)
def test_the_promotion_rule(ours, theirs, task, samples, promoted_at, promoted) -> None:
    rule = PromotionRule(margin=0.01, window=2000)
    verdict = rule.judge(window(task, *ours), window(task, *theirs), samples, promoted_at)
    assert (verdict is not None) == promoted
    if verdict is not None:
        assert verdict.metric == ("accuracy" if task.classification else "rmse")
        assert verdict.samples >= 2000


def test_a_checkpoints_roles_win_only_for_the_configured_pair() -> None:
    settings = Settings(model="linear", challenger_model="mlp")
    promoted = {"roles": {"champion": "mlp", "challenger": "linear", "promotions": 2}}
    assert Roles.resolve(settings, promoted) == Roles("mlp", "linear", 2)
    assert Roles.resolve(settings, None) == Roles("linear", "mlp")
    other = {"roles": {"champion": "mlp", "challenger": "x:y", "promotions": 1}}
    assert Roles.resolve(settings, other) == Roles("linear", "mlp", 1)
    assert Roles.resolve(Settings(model="linear"), promoted) == Roles("linear", None)
    with pytest.raises(ValueError, match="a challenger must be another model"):
        Settings(model="mlp", challenger_model="mlp")


def test_both_learners_and_the_roles_go_through_a_checkpoint_file(tmp_path: Path) -> None:
    settings = Settings(model="linear", challenger_model="mlp", promote_window=512)
    x, y = synthetic_susy(4096, seed=3)
    labels = y.astype(np.float32)
    pair = pair_for(settings, None)
    promoted = []
    for start in range(0, 4096, 256):
        _, verdict = pair.learn(x[start : start + 256], labels[start : start + 256])
        promoted += [verdict] if verdict else []
    assert promoted and pair.roles.champion == "mlp" and pair.roles.promotions == len(promoted)
    events = [e["kind"] for e in pair.champion.history.events]
    assert "promotion" in events and not pair.challenger.history.events

    state = pair.state()
    # The champion's state where it always was: everything that reads checkpoints serves it.
    assert state["model"]["spec"] == "mlp" and state["samples_trained"] == 4096
    assert snapshot_from_state(state, 1).spec == "mlp"
    store = CheckpointStore(tmp_path)
    store.save(Checkpoint(version=1, state=state, offsets={"t:0": 4096}))
    loaded = store.load(1).state
    assert loaded["challenger"]["model"]["spec"] == "linear"
    assert loaded["roles"]["champion"] == "mlp"

    again = pair_for(settings, loaded)  # configured linear + mlp: the checkpoint's roles win
    assert again.roles == pair.roles
    assert again.champion.plan.spec == "mlp" and again.challenger is not None
    for before, after in ((pair.champion, again.champion), (pair.challenger, again.challenger)):
        assert after.samples_trained == before.samples_trained == 4096
        assert after.prequential.metrics() == before.prequential.metrics()
        for a, b in zip(before.weights(), after.weights(), strict=True):
            np.testing.assert_array_equal(a, b)
    # Both go on learning exactly as the originals do.
    more_x, more_y = synthetic_susy(256, seed=4)
    for learner in (pair, again):
        learner.learn(more_x, more_y.astype(np.float32))
    np.testing.assert_allclose(
        pair.challenger.weights()[0], again.challenger.weights()[0], rtol=1e-6
    )
    history = history_of_checkpoint(loaded)
    assert history["model"] == "mlp" and history["challenger"]["model"] == "linear"
    assert history["challenger"]["points"]


def predictor_plane(tmp_path: Path, state: dict) -> tuple[DataPlane, CheckpointFollower]:
    store = CheckpointStore(tmp_path)
    store.save(Checkpoint(version=2, state=state, offsets={"t:0": 1000}))
    snapshots = SnapshotHolder()
    dataplane = DataPlane("susy", snapshots, MicroBatcher(snapshots), role="predictor")
    follower = CheckpointFollower(store, snapshots, interval_s=60)
    dataplane.source = follower
    asyncio.run(follower.poll())
    return dataplane, follower


def test_the_challenger_label_answers_with_a_challenger_and_404_without(tmp_path: Path) -> None:
    state = {**servable_state(), "challenger": servable_state(seed=1, samples=1000)}
    state["challenger"]["model"] = {"spec": "linear"}
    dataplane, follower = predictor_plane(tmp_path, state)
    # A predictor shows the stored challenger in /model, but does not serve it.
    info = dataplane.model_info()["challenger"]
    assert info["model"] == "linear" and info["samples_trained"] == 1000
    assert info["prequential"]["accuracy"] == 0.75
    with pytest.raises(errors.ModelNotFound, match="a predictor does not serve it"):
        asyncio.run(dataplane.predict("susy", [[0.5] * 18], label="challenger"))

    challenger: ModelSnapshot = snapshot_from_state(state["challenger"], 2)

    class WithChallenger(CheckpointFollower):
        def challenger_snapshot(self) -> ModelSnapshot | None:
            return challenger

    dataplane.source = WithChallenger(follower.store, dataplane.snapshots, interval_s=60)
    answer = asyncio.run(dataplane.predict("susy", [[0.5] * 18], label="challenger"))
    assert answer["predictions"] == challenger.predict(np.array([[0.5] * 18])).tolist()

    dataplane, _ = predictor_plane(tmp_path / "none", servable_state())
    assert dataplane.model_info()["challenger"] is None
    dataplane.role = "all"
    with pytest.raises(errors.ModelNotFound, match="CHALLENGER_MODEL is not set"):
        asyncio.run(dataplane.predict("susy", [[0.5] * 18], label="challenger"))


def test_a_challenger_that_does_not_fit_stops_start_up_with_one_line(tmp_path: Path) -> None:
    from service.model.startup import check_model
    from service.settings import SettingsError

    base = {"checkpoint_dir": str(tmp_path), "model": "linear"}
    with pytest.raises(SettingsError, match=r"CHALLENGER_MODEL: nothing\.keras: no such file"):
        check_model(Settings(**base, challenger_model="nothing.keras"))
    with pytest.raises(SettingsError, match="CHALLENGER_MODEL: .*not mlp, linear"):
        check_model(Settings(**base, challenger_model="no-colon"))
    check_model(Settings(**base, challenger_model="mlp"))
