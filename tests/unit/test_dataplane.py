"""The data plane without HTTP: inputs checked against the served model, predictions, model
information from a model source (here the predictor role's follower over real checkpoint
files), readiness."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from service import errors
from service.checkpoints import Checkpoint, CheckpointStore
from service.serving.batcher import MicroBatcher
from service.serving.dataplane import DataPlane
from service.serving.follower import CheckpointFollower
from service.serving.snapshot import SnapshotHolder, snapshot_from_checkpoint
from tests.unit.conftest import servable_state

ROW = [0.5] * 18


def plane(tmp_path: Path, with_checkpoint: bool = True) -> tuple[DataPlane, CheckpointFollower]:
    store = CheckpointStore(tmp_path / "checkpoints")
    if with_checkpoint:
        store.save(Checkpoint(version=3, state=servable_state(), offsets={"t:0": 1000}))
    snapshots = SnapshotHolder()
    dataplane = DataPlane("susy", snapshots, MicroBatcher(snapshots), role="predictor")
    follower = CheckpointFollower(store, snapshots, interval_s=60)
    dataplane.source = follower
    asyncio.run(follower.poll())
    return dataplane, follower


def test_predict_answers_one_probability_per_row_with_the_served_version(tmp_path) -> None:
    dataplane, follower = plane(tmp_path)
    answer = asyncio.run(dataplane.predict("susy", [ROW, [0.0] * 18]))
    assert answer["model_version"] == 3
    assert follower.checkpoint is not None
    expected = snapshot_from_checkpoint(follower.checkpoint).predict(np.array([ROW, [0.0] * 18]))
    np.testing.assert_allclose(answer["predictions"], expected, rtol=1e-6)
    assert all(0.0 <= p <= 1.0 for p in answer["predictions"])


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([[0.5] * 17], "needs 18 numbers, got 17"),
        ([ROW, [0.5] * 19], "same number of features"),
        ([[3.5e38 * 10] + [0.0] * 17], "finite"),
    ],
)
def test_predict_refuses_rows_that_do_not_fit(tmp_path, rows, message) -> None:
    dataplane, _ = plane(tmp_path)
    with pytest.raises(errors.InvalidInput, match=message):
        asyncio.run(dataplane.predict("susy", rows))


def test_unknown_model_and_no_model_yet(tmp_path) -> None:
    dataplane, _ = plane(tmp_path)
    with pytest.raises(errors.ModelNotFound, match="serves 'susy'"):
        dataplane.model_status("other")
    empty, _ = plane(tmp_path / "empty", with_checkpoint=False)
    with pytest.raises(errors.ModelNotReady):
        asyncio.run(empty.predict("susy", [ROW]))
    ready, body = empty.readiness()
    assert not ready and "waiting for a checkpoint" in body["reason"]


def test_infer_checks_shape_against_data(tmp_path) -> None:
    dataplane, _ = plane(tmp_path)
    answer = asyncio.run(dataplane.infer("susy", [("x", [2, 18], "FP32", ROW + ROW)], "r1"))
    output = answer["outputs"][0]
    assert output["name"] == "probability" and output["shape"] == [2, 1]
    assert answer["id"] == "r1" and answer["model_version"] == "3"
    with pytest.raises(errors.InvalidInput, match="does not match 18 data values"):
        asyncio.run(dataplane.infer("susy", [("x", [2, 18], "FP32", ROW)], None))


def test_model_info_lag_and_readiness_come_from_the_source(tmp_path) -> None:
    dataplane, _ = plane(tmp_path)
    info = dataplane.model_info()
    assert info["version"] == 3 and info["samples_trained"] == 1000
    assert info["checkpoint"]["offsets"] == {"t:0": 1000}
    assert info["prequential"] == {"accuracy": 0.75, "loss": 0.5}
    assert info["trainer"] is None and info["role"] == "predictor"
    assert dataplane.lag()["partitions"] == [] and dataplane.lag()["total_lag"] is None
    ready, body = dataplane.readiness()
    assert ready and body["model_version"] == 3


def test_a_model_that_predicts_nan_is_not_ready(tmp_path) -> None:
    dataplane, _ = plane(tmp_path)
    state = servable_state()
    state["weights"][3] = np.array([np.nan], np.float32)
    holder = dataplane.snapshots
    holder.publish(snapshot_from_checkpoint(Checkpoint(4, state, {})))
    ready, body = dataplane.readiness()
    assert not ready and "non-finite" in body["reason"]
