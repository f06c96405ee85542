"""Drift on a stream whose concept changes midway; lag health; history, report, dashboard."""

from __future__ import annotations

import re
import subprocess
import sys

from service.codec import encode_csv
from service.synthetic import synthetic_susy
from tests.support import produce_pairs, produce_synthetic, service_environ, wait_for


def test_drift_is_detected_near_the_change_and_reported(broker, topic, service_factory, tmp_path):
    x, y = synthetic_susy(40_000, seed=41)
    before, after = 20_000, 20_000
    flipped = y.copy()
    flipped[before:] = 1 - flipped[before:]  # the concept changes: labels invert
    produce_pairs(broker.bootstrap, topic, encode_csv(x, flipped), partitions=1)
    service = service_factory(drift_policy="alert", checkpoint_interval_s=1).start()
    model = service.wait_trained(before + after, learn_s=180)

    points = model["drift"]["points"]
    assert points, "drift not detected"
    first = points[0]
    assert before <= first["detected_at"] <= before + 5_000, points
    assert all(p["detected_at"] >= before for p in points), "false alarm before the change"
    assert 'streamfit_drift_detected_total{policy="alert"}' in service.get_text("/metrics")
    history = service.get("/history")
    recent = [p for p in history["points"] if p["samples"] >= before + after - 1]
    assert history["points"] and any(e["kind"] == "drift" for e in history["events"])
    assert recent and recent[-1]["accuracy"] > 0.7, "accuracy recovers after the change"

    assert service.terminate() == 0
    png = tmp_path / "curve.png"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "service",
            "report",
            "--checkpoint-dir",
            str(tmp_path / "checkpoints"),
            "--output",
            str(png),
        ],
        env=service_environ(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_lag_health_and_seconds_in_lag_route(broker, topic, service_factory):
    produce_synthetic(broker.bootstrap, topic, rows=2000, partitions=2)
    service = service_factory().start()
    service.wait_trained(2000)

    def caught_up():
        v = service.get("/lag")
        rows = v["partitions"]
        return v if rows and all(p["status"] == "OK" and p["lag"] == 0 for p in rows) else None

    lag = wait_for(caught_up, 20, what="every partition OK")
    assert lag["status"] == "OK"
    assert all(p["lag_seconds"] is not None and p["lag_seconds"] < 2.0 for p in lag["partitions"])
    metrics = service.get_text("/metrics")
    assert "streamfit_consumer_lag_seconds{" in metrics
    assert re.search(r'streamfit_consumer_lag_status\{[^}]*status="OK"[^}]*\} 1\.0', metrics)


def test_dashboard_is_served(broker, topic, service_factory):
    produce_synthetic(broker.bootstrap, topic, rows=300, partitions=1)
    service = service_factory().start()
    status, page = service.request("GET", "/dashboard")
    assert status == 200 and "<html" in page.lower()
    assert "/history" in page and "/model" in page
