"""Checkpoints on object storage: the store against a real S3-protocol server (moto's
standalone server on loopback), the start-up refusals, and the service on an s3:// URL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from service.checkpoints import CheckpointStore
from service.lease import Lease, LeaseHeld
from service.settings import SettingsError, load_settings
from service.storage import ObjectStorage
from tests.s3_server import S3Server
from tests.support import ROOT, a_checkpoint, produce_synthetic, wait_for


def url(s3: S3Server) -> str:
    bucket = f"b-{uuid.uuid4().hex[:10]}"
    return f"{s3.bucket(bucket)}/models/susy"


def test_the_store_on_s3_keeps_the_layout_retention_and_checksums(s3: S3Server) -> None:
    location = url(s3)
    store = CheckpointStore(location, keep=2)
    assert isinstance(store.storage, ObjectStorage)
    assert store.latest() is None and store.versions() == []
    for version in (1, 2, 3):
        where = store.save(a_checkpoint(version, samples=10 * version))
        assert where == f"{location}/ckpt-{version:010d}.npz"
    bucket = location.removeprefix("s3://").split("/")[0]
    assert s3.keys(bucket) == [
        "models/susy/ckpt-0000000002.npz",
        "models/susy/ckpt-0000000003.npz",
        "models/susy/manifest.json",
    ]
    reader = CheckpointStore(location)  # another process's view
    latest = reader.latest()
    assert latest is not None and latest.version == 3 and latest.offsets == {"t:0": 30}
    np.testing.assert_array_equal(latest.state["weights"][0], a_checkpoint(3).state["weights"][0])
    # A damaged object is skipped: the checksum in the manifest does not match.
    s3.client().put_object(Bucket=bucket, Key="models/susy/ckpt-0000000003.npz", Body=b"junk")
    fallback = reader.latest()
    assert fallback is not None and fallback.version == 2


def test_a_directory_copied_to_a_bucket_is_the_same_store(s3: S3Server, tmp_path: Path) -> None:
    local = CheckpointStore(tmp_path / "ckpt", keep=5)
    for version in (1, 2):
        local.save(a_checkpoint(version))
    location = url(s3)
    bucket, prefix = location.removeprefix("s3://").split("/", 1)
    for path in sorted((tmp_path / "ckpt").iterdir()):
        s3.client().put_object(Bucket=bucket, Key=f"{prefix}/{path.name}", Body=path.read_bytes())
    migrated = CheckpointStore(location).latest()
    assert migrated is not None and migrated.version == 2
    assert migrated.offsets == local.load(2).offsets


@pytest.mark.usefixtures("without_test_switches")
@pytest.mark.parametrize(
    ("location", "env", "message"),
    [
        ("ftp://host/x", {}, "unknown scheme ftp://"),
        ("s3:///x", {}, "names no bucket"),
        ("s3://bucket/x", {"AWS_ACCESS_KEY_ID": None}, "no AWS credentials"),
    ],
)
def test_a_checkpoint_location_that_cannot_work_is_one_line(
    s3: S3Server,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    location: str,
    env: dict[str, str | None],
    message: str,
) -> None:
    for name, value in env.items():
        if value is None:
            monkeypatch.delenv(name, raising=False)
            monkeypatch.delenv("AWS_SECRET_ACCESS_KEY", raising=False)
            monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
            monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    with pytest.raises(SettingsError) as caught:
        load_settings(checkpoint_dir=location)
    text = str(caught.value)
    assert "STREAMFIT_CHECKPOINT_DIR" in text and message in text and "\n" not in text


@pytest.mark.usefixtures("without_test_switches")
@pytest.mark.parametrize(
    ("location", "package", "protocol"),
    [("gs://bucket/x", "gcsfs", "gcs"), ("az://container/x", "adlfs", "az")],
)
def test_a_scheme_whose_driver_is_not_installed_is_one_line(
    monkeypatch: pytest.MonkeyPatch, location: str, package: str, protocol: str
) -> None:
    from fsspec.registry import _registry

    monkeypatch.setitem(sys.modules, package, None)  # as if not installed (the tests install it)
    monkeypatch.delitem(_registry, protocol, raising=False)
    with pytest.raises(SettingsError) as caught:
        load_settings(checkpoint_dir=location)
    text = str(caught.value)
    assert f"needs the {package} package (pip install {package})" in text and "\n" not in text


def test_serve_refuses_an_s3_url_without_credentials_in_one_line(tmp_path: Path) -> None:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("STREAMFIT_", "AWS_"))}
    done = subprocess.run(
        [sys.executable, "-m", "service", "serve"],
        env={
            **clean,
            "STREAMFIT_CHECKPOINT_DIR": "s3://bucket/prefix",
            "AWS_CONFIG_FILE": str(tmp_path / "none"),
            "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
            "AWS_EC2_METADATA_DISABLED": "true",
        },
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "no AWS credentials" in done.stderr


def on_s3(service: Any, s3: S3Server) -> Any:
    """A service process with the standard AWS variables pointing at the test's S3 server."""
    service.env.update(s3.env)
    return service.start()


def test_trainer_and_predictor_share_a_bucket_and_a_kill_9_learns_each_record_once(
    s3: S3Server, service_factory: Any, broker: Any, topic: str
) -> None:
    location = url(s3)
    bucket = location.removeprefix("s3://").split("/")[0]
    produce_synthetic(broker.bootstrap, topic, rows=3000, partitions=2, seed=3)
    trainer = on_s3(service_factory(checkpoint_dir=location, batch_size=64), s3)
    trainer.wait_trained(3000)
    wait_for(lambda: trainer.get("/model")["checkpoint"], 30, what="a checkpoint on S3")
    assert "models/susy/manifest.json" in s3.keys(bucket)

    # A predictor on the same prefix: no shared volume, the bucket is the only link.
    predictor = on_s3(service_factory(checkpoint_dir=location, role="predictor"), s3)
    served = predictor.get("/model")
    assert served["checkpoint"]["version"] >= 1 and served["samples_trained"] > 0

    # kill -9, more records, restart: every record is learned once, from the bucket's
    # checkpoint and the offsets it holds (wait_trained fails on any sample beyond 4000).
    trainer.kill()
    produce_synthetic(broker.bootstrap, topic, rows=1000, partitions=2, seed=4)
    again = on_s3(service_factory(checkpoint_dir=location, batch_size=64), s3)
    again.wait_trained(4000)


def test_a_store_down_at_start_is_not_ready_consumes_nothing_then_recovers(
    s3: S3Server, service_factory: Any, broker: Any, topic: str
) -> None:
    location = url(s3)  # the bucket exists (moto's state is the process's, shared by servers)
    down = S3Server()  # not started yet: its port refuses connections
    produce_synthetic(broker.bootstrap, topic, rows=1000, partitions=2, seed=5)
    service = service_factory(checkpoint_dir=location)
    service.env.update({**s3.env, "AWS_ENDPOINT_URL": down.endpoint})
    service.start(wait_ready=False)

    def unavailable_shown() -> bool:
        status, body = service.request("GET", "/readyz")
        return status == 503 and "checkpoint store unavailable" in str(body)

    wait_for(unavailable_shown, 60, what="/readyz 503 naming the store")
    assert service.get("/model")["samples_trained"] == 0
    assert all(row["position"] in (None, 0) for row in service.get("/lag")["partitions"])
    down.start()
    try:
        service.wait_trained(1000)
    finally:
        down.stop()


def test_a_store_failing_later_keeps_training_and_commits_only_what_is_stored(
    s3: S3Server, service_factory: Any, broker: Any, topic: str
) -> None:
    location = url(s3)
    store = S3Server().start()
    try:
        produce_synthetic(broker.bootstrap, topic, rows=1000, partitions=2, seed=6)
        service = service_factory(checkpoint_dir=location)
        service.env.update({**s3.env, "AWS_ENDPOINT_URL": store.endpoint})
        service.start()
        service.wait_trained(1000)
        committed = lambda: sum(  # noqa: E731
            row["committed_offset"] or 0 for row in service.get("/lag")["partitions"]
        )
        wait_for(lambda: committed() == 1000, 30, what="offsets committed with a checkpoint")
        store.stop()
        produce_synthetic(broker.bootstrap, topic, rows=1000, partitions=2, seed=7)
        service.wait_trained(2000)  # training goes on

        def failing_shown() -> bool:
            status, body = service.request("GET", "/readyz")
            return status == 200 and "checkpoint failed" in str(body)

        wait_for(failing_shown, 60, what="/readyz 200 saying checkpoints fail")
        assert committed() == 1000  # nothing past the last stored checkpoint
        assert "streamfit_checkpoint_failures_total" in service.get_text("/metrics")
        store.start()
        wait_for(lambda: committed() == 2000, 60, what="the retried checkpoint and its commit")
    finally:
        store.stop()


def test_a_second_trainer_on_the_prefix_waits_then_takes_over_when_the_first_stops(
    s3: S3Server, service_factory: Any, broker: Any, topic: str
) -> None:
    location = url(s3)
    produce_synthetic(broker.bootstrap, topic, rows=2000, partitions=2, seed=8)
    first = on_s3(service_factory(checkpoint_dir=location, lease_ttl_s=60), s3)
    first.wait_trained(2000)

    second = service_factory(checkpoint_dir=location, lease_ttl_s=60)
    second.env.update(s3.env)
    second.start(wait_ready=False)

    def refused() -> bool:
        status, body = second.request("GET", "/readyz")
        return status == 503 and "is written by" in body.get("reason", "")

    wait_for(refused, 60, what="the second trainer refused, not ready")
    produce_synthetic(broker.bootstrap, topic, rows=1000, partitions=2, seed=9)
    first.wait_trained(3000)  # the first keeps every partition: the second never joined
    assert refused()
    assert second.get("/model")["samples_trained"] == 0
    assert second.logs().count("held by another trainer") == 1  # one line, not one a retry

    first.terminate()  # a graceful stop releases the lease: no TTL to wait out
    second.wait_trained(3000)  # restored from the first's last checkpoint
    produce_synthetic(broker.bootstrap, topic, rows=500, partitions=2, seed=10)
    second.wait_trained(3500)


def test_a_trainer_whose_prefix_is_taken_stops_writing_and_keeps_serving(
    service_factory: Any, broker: Any, topic: str, tmp_path: Path
) -> None:
    from service.storage import LocalStorage

    directory = tmp_path / "prefix"
    produce_synthetic(broker.bootstrap, topic, rows=1000, partitions=2, seed=11)
    service = service_factory(checkpoint_dir=str(directory), lease_ttl_s=3).start()
    service.wait_trained(1000)
    wait_for(lambda: service.get("/model")["checkpoint"], 30, what="a checkpoint")
    # The trainer stalls (SIGSTOP: a paused VM) past its TTL; a writer elsewhere, having seen
    # the lease unrenewed for a whole TTL, takes the prefix; then the trainer wakes up.
    store = CheckpointStore(directory)
    assert service.process is not None
    service.process.send_signal(signal.SIGSTOP)
    try:
        taker = Lease(LocalStorage(directory), ttl_s=3, host="elsewhere", pid=1)
        wait_for(lambda: _took(taker), 30, what="the lease taken over")
    finally:
        service.process.send_signal(signal.SIGCONT)
    versions = store.versions()

    wait_for(lambda: service.get("/model")["trainer"]["state"] == "fenced", 30, what="state fenced")
    produce_synthetic(broker.bootstrap, topic, rows=500, partitions=2, seed=12)
    time.sleep(3)  # three checkpoint intervals
    assert store.versions() == versions  # nothing written after the takeover
    assert service.status("/readyz") == 200  # still serving what it has
    assert service.logs().count("checkpoint prefix taken over") == 1


def _took(lease: Lease) -> bool:
    try:
        lease.acquire()
    except LeaseHeld:
        return False
    return True
