"""Report: the learning-curve PNG from a history dict and from the newest checkpoint."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from service.checkpoints import Checkpoint, CheckpointStore
from service.report import (
    CLASSIFICATION_PANELS,
    REGRESSION_PANELS,
    ReportError,
    panels_for,
    report_from_checkpoints,
    write_report,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def make_history(points: int = 120) -> dict[str, Any]:
    samples = np.arange(1, points + 1) * 1000
    accuracy = 0.78 - 0.2 * np.exp(-samples / 8000.0)
    accuracy[60:] -= 0.15 * np.exp(-(samples[60:] - samples[60]) / 9000.0)
    loss = 1.2 - accuracy
    return {
        "every": 1000,
        "points": [
            {"samples": int(s), "accuracy": float(a), "loss": float(lo), "time": 1.7e9 + i}
            for i, (s, a, lo) in enumerate(zip(samples, accuracy, loss, strict=True))
        ],
        "events": [
            *(
                {"samples": int(s), "kind": "checkpoint", "time": 0.0, "version": v}
                for v, s in enumerate(range(7680, points * 1000, 7680), start=1)
            ),
            {"samples": 61_000, "kind": "drift", "time": 0.0, "onset": 60_500},
            {"samples": 90_000, "kind": "rollback", "time": 0.0, "to_version": 7},
        ],
    }


def png_size(path: Path) -> tuple[int, int]:
    header = path.read_bytes()[:24]
    assert header[:8] == PNG_MAGIC and header[12:16] == b"IHDR"
    width, height = struct.unpack(">II", header[16:24])
    return width, height


def test_writes_a_valid_png_learning_curve(tmp_path: Path) -> None:
    path = write_report(make_history(), tmp_path / "out" / "curve.png", "test run")
    assert path == tmp_path / "out" / "curve.png"
    assert path.read_bytes()[:8] == PNG_MAGIC
    assert path.stat().st_size > 10_000
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == png_size(path)
        width, height = image.size
        pixels = np.asarray(image.convert("RGB"))
    assert width >= 800 and height >= 500
    # Something was drawn in each series' colour: accuracy blue, loss red, drift orange.
    for colour in ((0x1F, 0x77, 0xB4), (0xD6, 0x27, 0x28), (0xFF, 0x7F, 0x0E)):
        close = np.abs(pixels.astype(int) - colour).sum(axis=2) < 40
        assert close.sum() > 200, colour
    assert not list(tmp_path.glob("out/.*.tmp"))


def test_a_regression_history_draws_mae_and_rmse(tmp_path: Path) -> None:
    samples = np.arange(1, 81) * 500
    mae = 40 + 60 * np.exp(-samples / 6000.0)
    history = {
        "every": 500,
        "points": [
            {"samples": int(s), "mae": float(m), "rmse": float(1.3 * m), "time": 1.7e9 + i}
            for i, (s, m) in enumerate(zip(samples, mae, strict=True))
        ],
        "events": [
            {"samples": 10_000, "kind": "checkpoint", "time": 0.0, "version": 1},
            {"samples": 25_000, "kind": "drift", "time": 0.0},
        ],
    }
    assert panels_for(history["points"]) == REGRESSION_PANELS
    path = write_report(history, tmp_path / "regression.png", "regression run")
    with Image.open(path) as image:
        pixels = np.asarray(image.convert("RGB"))
    # Both panels drawn: MAE in the top colour, RMSE in the bottom one, the drift line too.
    # (Values far above 1: the accuracy panel's [0, 1] limits would have hidden the curve.)
    for colour in ((0x1F, 0x77, 0xB4), (0xD6, 0x27, 0x28), (0xFF, 0x7F, 0x0E)):
        close = np.abs(pixels.astype(int) - colour).sum(axis=2) < 40
        assert close.sum() > 200, colour


def test_panels_follow_the_points_keys() -> None:
    assert panels_for([]) == CLASSIFICATION_PANELS
    assert panels_for([{"samples": 1, "accuracy": 0.5, "loss": 0.7}]) == CLASSIFICATION_PANELS
    assert [p.key for p in panels_for([{"samples": 1, "mae": 1.0, "rmse": 2.0}])] == [
        "mae",
        "rmse",
    ]


def test_an_empty_history_still_gives_a_picture(tmp_path: Path) -> None:
    path = write_report({}, tmp_path / "empty.png", "nothing learned yet")
    assert png_size(path)[0] > 0 and path.stat().st_size > 5_000


def test_many_checkpoints_do_not_clutter_labels(tmp_path: Path) -> None:
    history = make_history(points=2000)
    history["events"] = [
        {"samples": s, "kind": "checkpoint", "time": 0.0, "version": v}
        for v, s in enumerate(range(1000, 2_000_000, 1000), start=1)
    ]
    path = write_report(history, tmp_path / "many.png", "long run")
    assert path.stat().st_size > 10_000


def fake_state(history: dict[str, Any]) -> dict[str, Any]:
    """What CheckpointStore needs of a learner state, without TensorFlow."""
    return {
        "weights": [np.zeros((2, 1), np.float32)],
        "optimizer": [np.zeros(1)],
        "standardizer": {"count": 0, "mean": np.zeros(2), "m2": np.zeros(2)},
        "samples_trained": 120_000,
        "history": history,
    }


def test_report_from_the_newest_checkpoint(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path / "ckpt")
    store.save(Checkpoint(1, fake_state({"points": []}), {"t:0": 10}))
    store.save(Checkpoint(2, fake_state(make_history()), {"t:0": 120_000}))
    path = report_from_checkpoints(tmp_path / "ckpt", tmp_path / "report.png")
    assert path.read_bytes()[:8] == PNG_MAGIC and path.stat().st_size > 10_000


def test_report_without_a_checkpoint_says_so(tmp_path: Path) -> None:
    with pytest.raises(ReportError, match="no readable checkpoint"):
        report_from_checkpoints(tmp_path / "missing", tmp_path / "report.png")


def test_a_challenger_curve_and_promotions_are_drawn(tmp_path: Path) -> None:
    history = make_history()
    history["model"] = "mlp"
    history["challenger"] = {
        "model": "linear",
        "points": [{**p, "accuracy": 0.55, "loss": 0.69} for p in history["points"]],
    }
    history["events"].append(
        {"samples": 30_000, "kind": "promotion", "time": 0.0, "champion": "mlp"}
    )
    path = write_report(history, tmp_path / "pair.png", "champion and challenger")
    with Image.open(path) as image:
        pixels = np.asarray(image.convert("RGB")).astype(int)
    for colour in ((0x7F, 0x7F, 0x7F), (0x17, 0xBE, 0xCF)):  # challenger grey, promotion cyan
        close = np.abs(pixels - colour).sum(axis=2) < 30
        assert close.sum() > 200, colour
    plain = write_report(make_history(), tmp_path / "plain.png", "champion alone")
    with Image.open(plain) as image:
        pixels = np.asarray(image.convert("RGB")).astype(int)
    assert (np.abs(pixels - (0x17, 0xBE, 0xCF)).sum(axis=2) < 30).sum() < 50


def test_versions_held_back_by_the_serve_policy_are_marked(tmp_path: Path) -> None:
    from service.checkpoints import Checkpoint, CheckpointStore
    from service.report import held_events
    from service.serving.policy import ServingState

    store = CheckpointStore(tmp_path / "ckpt")
    state = {
        "weights": [np.zeros(2)],
        "optimizer": [],
        "model_state": [],
        "standardizer": {"count": 0, "mean": np.zeros(2), "m2": np.zeros(2)},
        "samples_trained": 0,
        "batches_trained": 0,
    }
    for version in (1, 2, 3):
        store.save(Checkpoint(version, {**state, "samples_trained": 10_000 * version}, {}))
    held = [{"version": 3, "reason": "gate: ...", "score": None, "stored_at": 0.0}]
    store.record_serving(ServingState("gated", served_version=2, held=held).as_dict())
    events = held_events(store)
    assert events == [{"samples": 30_000, "kind": "held", "version": 3}]

    history = make_history()
    history["events"].extend(events)
    path = write_report(history, tmp_path / "held.png", "held back")
    with Image.open(path) as image:
        pixels = np.asarray(image.convert("RGB")).astype(int)
    assert (np.abs(pixels - (0xE3, 0x77, 0xC2)).sum(axis=2) < 30).sum() > 20  # pink crosses
    plain = write_report(make_history(), tmp_path / "plain.png", "none held")
    with Image.open(plain) as image:
        pixels = np.asarray(image.convert("RGB")).astype(int)
    assert (np.abs(pixels - (0xE3, 0x77, 0xC2)).sum(axis=2) < 30).sum() == 0
