"""Exports for TF Serving on a real S3-protocol server and from a real running service: the
uploaded version loads (saved_model.pb uploaded last, deleted first), and the newest export
answers what the service's /v1 route answers at the same version."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from service.checkpoints import Checkpoint
from service.export import Exporter, ObjectStoreTarget, target_for
from service.serving.snapshot import snapshot_from_state
from service.synthetic import synthetic_susy
from service.training.learner import builtin_learner
from service.training.tf_runtime import tf
from tests.s3_server import S3Server
from tests.support import produce_synthetic, wait_for


def serving(directory: Path) -> Any:
    return tf.saved_model.load(str(directory)).signatures["serving_default"]


def test_an_export_to_s3_uploads_saved_model_pb_last_and_the_download_loads(
    s3: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    learner = builtin_learner(18, seed=2)
    x, y = synthetic_susy(512, seed=3)
    learner.learn(x, y.astype(np.float32))
    bucket = f"b-{uuid.uuid4().hex[:10]}"
    target = target_for(f"{s3.bucket(bucket)}/exports/susy")
    assert isinstance(target, ObjectStoreTarget)
    writes: list[str] = []
    deletes: list[str] = []
    write, delete = target.storage.write, target.storage.delete
    monkeypatch.setattr(target.storage, "write", lambda n, d: (writes.append(n), write(n, d)))
    monkeypatch.setattr(target.storage, "delete", lambda n: (deletes.append(n), delete(n)))

    exporter = Exporter(target, keep=1)
    for version in (1, 2):
        where = exporter.export(Checkpoint(version, learner.state(), {"t:0": version}))
        assert where == f"s3://{bucket}/exports/susy/{version}"

    first = [name for name in writes if name.startswith("1/")]
    assert first[-1] == "1/saved_model.pb", f"uploaded last: {first}"
    assert {"1/fingerprint.pb", "1/variables/variables.index"} <= set(first)
    assert [name for name in writes if name.startswith("2/")][-1] == "2/saved_model.pb"
    assert deletes[0] == "1/saved_model.pb", f"retention deletes it first: {deletes}"
    assert sorted(deletes) == sorted(first)
    keys = s3.keys(bucket)
    assert keys == sorted(f"exports/susy/{name}" for name in writes if name.startswith("2/"))

    local = tmp_path / "download" / "2"
    for key in keys:
        path = local / key.removeprefix("exports/susy/2/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(s3.client().get_object(Bucket=bucket, Key=key)["Body"].read())
    probe, _ = synthetic_susy(100, seed=4)
    got = serving(local)(features=tf.constant(probe))["probability"].numpy()
    expected = snapshot_from_state(learner.state(), 2).predict(probe)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_the_newest_export_answers_what_the_service_answers_at_that_version(
    broker, topic, service_factory, tmp_path: Path
) -> None:
    total = produce_synthetic(broker.bootstrap, topic, rows=3000, partitions=3)
    exports = tmp_path / "exports"
    service = service_factory(export_dir=exports, export_keep=2, batch_size=64).start()
    service.wait_trained(total)

    def exported() -> int | None:
        """The served version once a checkpoint holds every record, and its export. (Between
        checkpoints the service serves newer weights under the last checkpoint's version.)"""
        model = service.get("/model")
        checkpoint = model.get("checkpoint") or {}
        version = checkpoint.get("version")
        if version != model["version"] or sum(checkpoint["offsets"].values()) != total:
            return None
        return int(version) if (exports / "susy" / str(version)).is_dir() else None

    version = wait_for(exported, 60, what="the served version exported")
    probe, _ = synthetic_susy(20, seed=77)
    status, body = service.request("POST", "/v1/models/susy:predict", {"instances": probe.tolist()})
    assert status == 200 and body["model_version"] == version
    got = serving(exports / "susy" / str(version))(features=tf.constant(probe))
    np.testing.assert_allclose(
        got["probability"].numpy(), body["predictions"], rtol=1e-5, atol=1e-5
    )
    versions = sorted(int(p.name) for p in (exports / "susy").iterdir())
    assert versions[-1] == version and len(versions) <= 2, versions
    metrics = service.get_text("/metrics")
    assert f"streamfit_export_version {float(version)}" in metrics
    assert "streamfit_export_failures_total 0.0" in metrics
    assert service.terminate() == 0
