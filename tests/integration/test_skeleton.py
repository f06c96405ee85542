"""Walking skeleton: Kafka -> online training -> checkpoint -> prediction, over real HTTP."""

from __future__ import annotations

from pathlib import Path

from tests.support import produce_synthetic, wait_for


def test_trains_every_record_and_serves_probabilities(broker, topic, service_factory):
    produce_synthetic(broker.bootstrap, topic, rows=3000, partitions=3, seed=3)
    service = service_factory().start()

    model = service.wait_trained(3000)
    assert model["batches_trained"] >= 3000 // 256
    assert model["prequential"]["accuracy"] is not None

    rows = [[0.5] * 18, [40.0, 1.0, 0.1, 30.0, 0.2, -0.3, 25.0, 0.4] + [0.0] * 10]
    status, body = service.request("POST", "/v1/models/susy:predict", {"instances": rows})
    assert status == 200, body
    assert len(body["predictions"]) == 2
    assert all(0.0 <= p <= 1.0 for p in body["predictions"])
    assert body["model_version"] == service.get("/model")["version"]

    lag = wait_for(lambda: (v := service.get("/lag"))["total_lag"] == 0 and v, 10, what="lag 0")
    assert sorted(p["partition"] for p in lag["partitions"]) == [0, 1, 2]

    metrics = service.get_text("/metrics")
    assert "streamfit_samples_trained_total 3000.0" in metrics
    assert "streamfit_model_version" in metrics


def test_restart_restores_checkpoint_and_trains_only_new_records(
    broker, topic, service_factory, tmp_path: Path
):
    produce_synthetic(broker.bootstrap, topic, rows=2000, partitions=2, seed=4)
    first = service_factory().start()
    first.wait_trained(2000)
    assert first.terminate() == 0
    before = first.get_cached_model()

    second = service_factory().start()
    restored = second.get("/model")
    assert restored["samples_trained"] == 2000
    assert restored["version"] >= before["version"]
    assert restored["checkpoint"]["offsets"] == before["checkpoint"]["offsets"] or (
        sum(restored["checkpoint"]["offsets"].values()) == 2000
    )

    produce_synthetic(broker.bootstrap, topic, rows=700, partitions=2, seed=5)
    after = second.wait_trained(2700)
    assert after["samples_trained"] == 2700
    assert second.terminate() == 0
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("ckpt-*.npz"))
