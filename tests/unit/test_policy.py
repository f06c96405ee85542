"""Serve policies: which stored version is served, and what is held back and why."""

from __future__ import annotations

import pytest

from service.serving.policy import GateScore, ServePolicy, ServingState


def acc(value: float | None) -> GateScore:
    return GateScore("accuracy", value, 2000)


def rmse(value: float) -> GateScore:
    return GateScore("rmse", value, 2000)


def test_latest_serves_every_version() -> None:
    policy = ServePolicy("latest", 0.02)
    for version, value in ((1, 0.7), (2, 0.5), (3, 0.9)):
        assert policy.consider(version, acc(value))
    assert policy.state.served_version == 3 and policy.state.held == []
    assert not policy.stored_weights_only


def test_gated_holds_a_worse_version_and_serves_again_when_the_stream_recovers() -> None:
    policy = ServePolicy("gated", 0.02)
    assert policy.consider(1, acc(0.75), now=100.0)  # nothing served yet: the first passes
    assert policy.consider(2, acc(0.74), now=110.0)  # within the tolerance
    assert not policy.consider(3, acc(0.60), now=120.0)
    assert not policy.consider(4, acc(0.55), now=130.0)
    s = policy.state
    assert s.served_version == 2 and [h["version"] for h in s.held] == [3, 4]
    assert "accuracy 0.6000" in s.held[0]["reason"] and "version 2" in s.held[0]["reason"]
    assert policy.held_for_s(now=150.0) == 30.0  # since version 3 was stored
    assert policy.protected() == {2}
    assert policy.consider(5, acc(0.73), now=160.0)  # compared with version 2 again
    assert s.served_version == 5 and s.held == [] and policy.held_for_s(now=170.0) == 0.0


def test_gated_regression_compares_rmse_the_other_way() -> None:
    policy = ServePolicy("gated", 0.1)
    assert policy.consider(1, rmse(1.0))
    assert policy.consider(2, rmse(1.09))
    assert not policy.consider(3, rmse(1.3))
    assert policy.consider(4, rmse(0.5))


def test_a_version_without_a_score_passes_the_gate() -> None:
    policy = ServePolicy("gated", 0.02)
    assert policy.consider(1, acc(0.8))
    assert policy.consider(2, acc(None))  # no samples in its window: nothing to compare


def test_a_pin_wins_under_every_policy_until_unpinned() -> None:
    latest = ServePolicy("latest", 0.02)
    latest.consider(1, acc(0.7))
    latest.consider(2, acc(0.7))
    latest.pin(1, acc(0.7))
    assert latest.stored_weights_only and latest.protected() == {1}
    assert not latest.consider(3, acc(0.9))
    assert "pinned" in latest.state.held[0]["reason"]
    assert latest.unpin(3, acc(0.9)) and latest.state.served_version == 3
    assert not latest.stored_weights_only

    gated = ServePolicy("gated", 0.02)
    gated.consider(1, acc(0.8))
    gated.pin(1, acc(0.8))
    gated.consider(2, acc(0.9))
    assert not gated.unpin(2, acc(0.9))  # gated keeps the pin as the baseline
    assert gated.consider(3, acc(0.81)) and gated.state.served_version == 3


def test_pinned_serves_the_first_version_then_moves_only_by_a_pin() -> None:
    policy = ServePolicy("pinned", 0.02)
    assert policy.consider(1, acc(0.6))
    assert not policy.consider(2, acc(0.9))
    assert policy.state.served_version == 1
    policy.pin(2, acc(0.9))
    assert policy.state.served_version == 2


def test_a_rollback_is_served_without_the_gate() -> None:
    policy = ServePolicy("gated", 0.02)
    policy.consider(1, acc(0.9))
    policy.serve_explicitly(2, acc(0.5))
    assert policy.state.served_version == 2


@pytest.mark.parametrize("policy", ["latest", "gated", "pinned"])
def test_the_state_round_trips_through_the_manifest_form(policy: str) -> None:
    first = ServePolicy(policy, 0.02)  # type: ignore[arg-type]
    first.consider(1, acc(0.9), now=10.0)
    first.consider(2, acc(0.1), now=20.0)
    restored = ServingState.from_dict(first.state.as_dict(), policy)  # type: ignore[arg-type]
    assert restored == first.state


@pytest.mark.usefixtures("without_test_switches")
def test_score_uses_the_version_the_serve_decision_names(tmp_path) -> None:
    from service.checkpoints import Checkpoint, CheckpointStore
    from service.scoring import Scorer
    from service.settings import load_settings
    from service.training.learner import builtin_learner

    store = CheckpointStore(tmp_path / "ckpt")
    learner = builtin_learner(18, "mlp", 1e-3, 0, "binary")
    for version in (1, 2, 3):
        store.save(Checkpoint(version, learner.state(), {"t:0": version}))
    settings = load_settings(checkpoint_dir=str(tmp_path / "ckpt"))
    assert Scorer(settings, "t", "g").load_snapshot().version == 3  # no decision: newest
    store.record_serving(ServingState(policy="gated", served_version=2).as_dict())
    assert Scorer(settings, "t", "g").load_snapshot().version == 2
