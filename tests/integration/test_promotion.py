"""Serve policies on the real broker: a gate that holds a version trained on noise, pins,
version and label routes, a predictor serving the trainer's decision, and a restart."""

from __future__ import annotations

from typing import Any

import numpy as np

from service.producer import encode_csv
from service.synthetic import synthetic_susy
from tests.support import ServiceProcess, produce_pairs, produce_synthetic, wait_for

API_KEY = "promotion-admin-key"
ADMIN = {"authorization": f"Bearer {API_KEY}"}
HELD_OUT = synthetic_susy(2000, seed=991)


def held_out_accuracy(service: ServiceProcess, path: str = "/v1/models/susy:predict") -> float:
    x, y = HELD_OUT
    status, body = service.request("POST", path, {"instances": x.tolist()})
    assert status == 200, body
    return float(((np.array(body["predictions"]) > 0.5) == y).mean())


def produce_noise(bootstrap: str, topic: str, rows: int, seed: int) -> None:
    """SUSY-shaped features whose labels are coin flips: the stream turned to noise."""
    x, _ = synthetic_susy(rows, seed=seed)
    labels = np.random.default_rng(seed).integers(0, 2, rows).astype(np.int8)
    produce_pairs(bootstrap, topic, list(encode_csv(x, labels)), partitions=2)


def a_checkpoint_at(service: ServiceProcess, records: int) -> int:
    """Wait for a stored version whose offsets cover `records`; the newest version."""

    def stored() -> int | None:
        model = service.get("/model")
        checkpoint = model["checkpoint"] or {}
        covered = sum((checkpoint.get("offsets") or {}).values())
        return model["latest_version"] if covered >= records else None

    return wait_for(stored, 60, what=f"a checkpoint covering {records} records")


def test_a_gate_holds_back_versions_trained_on_noise_which_latest_serves(
    service_factory: Any, broker: Any, topic: str, tmp_path: Any
) -> None:
    produce_synthetic(broker.bootstrap, topic, rows=8000, partitions=2, seed=1)
    services = {
        policy: service_factory(
            serve_policy=policy,
            group_id=f"g-{policy}-{topic}",
            checkpoint_dir=str(tmp_path / policy),
            checkpoint_interval_s=0.5,
        ).start()
        for policy in ("gated", "latest")
    }
    before: dict[str, float] = {}
    clean_version: dict[str, int] = {}
    for policy, service in services.items():
        service.wait_trained(8000)
        clean_version[policy] = a_checkpoint_at(service, 8000)
        before[policy] = held_out_accuracy(service)
        assert before[policy] > 0.7, "the model learned the clean stream"

    produce_noise(broker.bootstrap, topic, rows=12_000, seed=2)
    for service in services.values():  # the gated one reports its served model's samples
        a_checkpoint_at(service, 20_000)

    gated, latest = services["gated"], services["latest"]
    model = gated.get("/model")
    assert model["version"] == model["served_version"] <= clean_version["gated"]
    assert model["latest_version"] > model["served_version"]
    held = model["serving"]["held"]
    assert held and "gate: accuracy" in held[-1]["reason"], held
    assert abs(held_out_accuracy(gated) - before["gated"]) <= 0.03
    assert held_out_accuracy(latest) <= before["latest"] - 0.1
    metrics = gated.get_text("/metrics")
    assert f"streamfit_model_version {float(model['served_version'])}" in metrics
    assert f"streamfit_latest_model_version {float(model['latest_version'])}" in metrics
    assert "streamfit_serve_held_seconds 0.0" not in metrics

    # The stored versions held back stay reachable by number, and `latest` is the live model.
    newest = model["latest_version"]
    status, body = gated.request(
        "POST", f"/v1/models/susy/versions/{newest}:predict", {"instances": [[0.1] * 18]}
    )
    assert status == 200 and body["model_version"] == newest
    assert held_out_accuracy(gated, "/v1/models/susy/labels/latest:predict") < before["gated"]


def test_pin_and_unpin_move_the_served_version_and_a_predictor_follows(
    service_factory: Any, broker: Any, topic: str
) -> None:
    produce_synthetic(broker.bootstrap, topic, rows=3000, partitions=2, seed=3)
    trainer = service_factory(api_key=API_KEY, checkpoint_interval_s=0.5).start()
    trainer.wait_trained(3000)
    first = a_checkpoint_at(trainer, 3000)
    status, answer = trainer.request("POST", "/admin/pin/1", headers=ADMIN)
    assert status == 200 and answer["served_version"] == 1 and answer["pinned"] == 1

    produce_synthetic(broker.bootstrap, topic, rows=2000, partitions=2, seed=4)
    newest = a_checkpoint_at(trainer, 5000)
    assert trainer.get("/model")["latest_samples_trained"] == 5000
    assert newest > first
    model = trainer.get("/model")
    assert model["version"] == 1 and "pinned" in model["serving"]["held"][-1]["reason"]
    status, body = trainer.request("POST", "/v1/models/susy:predict", {"instances": [[0.1] * 18]})
    assert body["model_version"] == 1
    stable = trainer.request(
        "POST", "/v1/models/susy/labels/stable:predict", {"instances": [[0.1] * 18]}
    )[1]
    by_number = trainer.request(
        "POST", "/v1/models/susy/versions/1:predict", {"instances": [[0.1] * 18]}
    )[1]
    assert stable == by_number == body
    for path, code in (
        ("/v1/models/susy/versions/999:predict", 404),
        ("/v1/models/susy/labels/challenger:predict", 404),
        ("/v1/models/susy/labels/nonsense:predict", 404),
        ("/v1/models/other/versions/1:predict", 404),
        ("/v1/models/susy/versions/x:predict", 422),
    ):
        assert trainer.request("POST", path, {"instances": [[0.1] * 18]})[0] == code, path
    assert trainer.request("POST", "/admin/pin/999", headers=ADMIN)[0] == 404

    # A predictor serves what the trainer decided, not the newest stored version.
    predictor = service_factory(role="predictor", predictor_reload_s=0.5).start()
    assert predictor.get("/model")["version"] == 1
    assert predictor.request("POST", "/admin/unpin", headers=ADMIN)[0] in (403, 409)

    status, answer = trainer.request("POST", "/admin/unpin", headers=ADMIN)
    assert status == 200 and answer["pinned"] is None
    assert trainer.get("/model")["version"] >= newest
    wait_for(
        lambda: predictor.get("/model")["version"] >= newest, 30, what="the predictor to follow"
    )


def test_a_restart_resumes_the_stored_decision(
    service_factory: Any, broker: Any, topic: str
) -> None:
    produce_synthetic(broker.bootstrap, topic, rows=2000, partitions=2, seed=5)
    trainer = service_factory(
        api_key=API_KEY, serve_policy="pinned", checkpoint_interval_s=0.5
    ).start()
    a_checkpoint_at(trainer, 2000)
    served = trainer.get("/model")["version"]
    produce_synthetic(broker.bootstrap, topic, rows=2000, partitions=2, seed=6)
    newest = a_checkpoint_at(trainer, 4000)
    assert trainer.get("/model")["version"] == served < newest  # pinned: it does not move
    trainer.kill()
    again = service_factory(api_key=API_KEY, serve_policy="pinned").start()
    model = again.get("/model")
    assert model["version"] == served and model["serving"]["served_version"] == served
    # The served model is the stored version's (its samples), while the learner resumed at
    # the newest checkpoint: nothing is learned twice.
    assert model["samples_trained"] < 4000
    assert again.get("/model")["checkpoint"]["version"] >= newest
