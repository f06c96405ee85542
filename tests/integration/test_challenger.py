"""Champion and challenger on the real broker: a linear champion replaced by an MLP
challenger that learns the same stream, and a kill -9 restart that keeps both models' records
learned exactly once and the roles of the promotion."""

from __future__ import annotations

from typing import Any

import numpy as np

from service.synthetic import synthetic_susy
from tests.support import ServiceProcess, produce_synthetic, wait_for

HELD_OUT = synthetic_susy(2000, seed=991)
INSTANCE = {"instances": [[0.1] * 18]}


def held_out_accuracy(service: ServiceProcess, path: str = "/v1/models/susy:predict") -> float:
    x, y = HELD_OUT
    status, body = service.request("POST", path, {"instances": x.tolist()})
    assert status == 200, body
    return float(((np.array(body["predictions"]) > 0.5) == y).mean())


def promotions_total(service: ServiceProcess) -> float:
    for line in service.get_text("/metrics").splitlines():
        if line.startswith("streamfit_promotions_total "):
            return float(line.split()[1])
    raise AssertionError("streamfit_promotions_total is not exported")


def test_an_mlp_challenger_replaces_a_linear_champion(
    service_factory: Any, broker: Any, topic: str
) -> None:
    produce_synthetic(broker.bootstrap, topic, rows=8000, partitions=2, seed=1)
    service = service_factory(model="linear", challenger_model="mlp").start()
    service.wait_trained(8000)
    model = service.get("/model")
    assert model["model"] == "mlp", model  # the served model's spec: the promoted one
    challenger = model["challenger"]
    assert challenger["model"] == "linear" and challenger["samples_trained"] == 8000
    assert model["prequential"]["accuracy"] > challenger["prequential"]["accuracy"] + 0.05

    events = [e for e in service.get("/history")["events"] if e["kind"] == "promotion"]
    assert events and events[0]["champion"] == "mlp" and events[0]["previous"] == "linear"
    assert events[0]["champion_value"] >= events[0]["previous_value"] + 0.01
    assert promotions_total(service) >= 1
    metrics = service.get_text("/metrics")
    assert "streamfit_challenger_prequential_accuracy" in metrics
    history = service.get("/history")
    assert history["challenger"]["model"] == "linear" and history["challenger"]["points"]

    # Held-out rows through /v1: the served (promoted) model beats the linear one, which
    # still answers under the `challenger` label.
    served = held_out_accuracy(service)
    linear = held_out_accuracy(service, "/v1/models/susy/labels/challenger:predict")
    assert served > linear + 0.1, (served, linear)
    assert served > 0.7


def test_a_kill_9_restart_keeps_both_models_exactly_once_and_the_roles(
    service_factory: Any, broker: Any, topic: str
) -> None:
    total = produce_synthetic(broker.bootstrap, topic, rows=30_000, partitions=2, seed=7)
    settings = {"model": "linear", "challenger_model": "mlp", "batch_size": 32}
    service = service_factory(checkpoint_interval_s=0.2, **settings).start()

    def promoted_and_checkpointed() -> int | None:
        model = service.get("/model")
        checkpoint = model["checkpoint"] or {}
        covered = sum((checkpoint.get("offsets") or {}).values())
        promoted = [e for e in service.get("/history")["events"] if e["kind"] == "promotion"]
        # A checkpoint written after the promotion, with records left to learn.
        if promoted and covered > promoted[0]["samples"] + 500:
            return int(model["samples_trained"])
        return None

    learned = wait_for(
        promoted_and_checkpointed,
        service.join_timeout_s + 60,
        interval_s=0.05,
        what="a checkpoint after a promotion",
    )
    service.kill()
    assert learned < total, "the kill landed after the stream was learned: nothing to test"

    again = service_factory(**settings).start()
    model = again.wait_trained(total)
    assert model["model"] == "mlp", "the checkpoint's roles win over MODEL after a promotion"
    wait_for(
        lambda: again.get("/model")["challenger"]["samples_trained"] == total or None,
        30,
        what="the challenger to learn the rest of the stream",
    )
    model = again.get("/model")
    assert model["samples_trained"] == model["challenger"]["samples_trained"] == total
    assert model["challenger"]["model"] == "linear"
    assert held_out_accuracy(again) > held_out_accuracy(
        again, "/v1/models/susy/labels/challenger:predict"
    )


def test_without_a_challenger_the_label_is_404_and_model_shows_none(
    service_factory: Any, broker: Any, topic: str
) -> None:
    produce_synthetic(broker.bootstrap, topic, rows=500, partitions=2, seed=8)
    service = service_factory().start()
    service.wait_trained(500)
    assert service.get("/model")["challenger"] is None
    status, body = service.request("POST", "/v1/models/susy/labels/challenger:predict", INSTANCE)
    assert status == 404 and "CHALLENGER_MODEL" in str(body), body
    assert "streamfit_promotions_total 0.0" in service.get_text("/metrics")
