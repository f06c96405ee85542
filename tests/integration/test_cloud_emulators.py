"""Checkpoints on gs:// and az://: the store and the lease against real protocol servers
(gcp-storage-emulator for GCS, Azurite for Azure Blob) through the service's own drivers
(gcsfs, adlfs). Each check reads the bucket back through the emulator's own API, not the
driver under test."""

from __future__ import annotations

import json
import uuid
from typing import Any, Protocol

import numpy as np
import pytest

from service.checkpoints import CheckpointStore, store_for
from service.lease import LEASE, Lease, LeaseHeld, LeaseLost
from service.settings import load_settings
from service.storage import ObjectStorage
from tests.support import a_checkpoint

PREFIX = "models/susy"


class Emulator(Protocol):
    """What the tests use of tests.gcs_emulator.GcsEmulator and tests.azurite.Azurite."""

    @property
    def options(self) -> dict[str, Any]: ...
    @property
    def env(self) -> dict[str, str]: ...
    def bucket(self, name: str) -> str: ...
    def keys(self, bucket: str, prefix: str = "") -> list[str]: ...
    def put(self, bucket: str, key: str, data: bytes) -> None: ...


@pytest.fixture(params=["gcs", "azurite"])
def cloud(request: pytest.FixtureRequest) -> Emulator:
    """Each emulator in turn (its session fixture starts it once)."""
    emulator: Emulator = request.getfixturevalue(request.param)
    return emulator


def a_prefix(cloud: Emulator) -> tuple[str, str]:
    """A new bucket's name and the checkpoint URL of a prefix in it."""
    name = f"b-{uuid.uuid4().hex[:10]}"
    return name, f"{cloud.bucket(name)}/{PREFIX}"


def test_the_store_keeps_the_layout_retention_and_checksums(cloud: Emulator) -> None:
    bucket, location = a_prefix(cloud)
    store = CheckpointStore(location, keep=2, options=cloud.options)
    assert isinstance(store.storage, ObjectStorage)
    assert store.latest() is None and store.versions() == []
    for version in (1, 2, 3):
        where = store.save(a_checkpoint(version, samples=10 * version))
        assert where == f"{location}/ckpt-{version:010d}.npz"
    assert cloud.keys(bucket) == [
        f"{PREFIX}/ckpt-0000000002.npz",
        f"{PREFIX}/ckpt-0000000003.npz",
        f"{PREFIX}/manifest.json",
    ]
    assert [entry["version"] for entry in store.manifest()["checkpoints"]] == [2, 3]

    # Another process's view: a driver instance of its own, nothing cached.
    reader = CheckpointStore(location, options={**cloud.options, "skip_instance_cache": True})
    assert isinstance(reader.storage, ObjectStorage) and reader.storage.fs is not store.storage.fs
    latest = reader.latest()
    assert latest is not None and latest.version == 3 and latest.offsets == {"t:0": 30}
    np.testing.assert_array_equal(latest.state["weights"][0], a_checkpoint(3).state["weights"][0])

    # A damaged object is skipped: the checksum in the manifest does not match.
    cloud.put(bucket, f"{PREFIX}/ckpt-0000000003.npz", b"junk")
    fallback = reader.latest()
    assert fallback is not None and fallback.version == 2 and fallback.offsets == {"t:0": 20}


def test_the_lease_is_refused_to_a_second_live_holder_then_handed_over(cloud: Emulator) -> None:
    bucket, location = a_prefix(cloud)
    store = CheckpointStore(location, options=cloud.options)
    holder = Lease(store.storage, ttl_s=30, host="pod-a", pid=7)
    holder.acquire()
    assert cloud.keys(bucket) == [f"{PREFIX}/{LEASE}"]

    elsewhere = CheckpointStore(location, options={**cloud.options, "skip_instance_cache": True})
    newcomer = Lease(elsewhere.storage, ttl_s=30, host="pod-b", pid=8)
    with pytest.raises(LeaseHeld, match="pod-a"):
        newcomer.acquire()
    holder.renew()  # still the holder's: the refused newcomer wrote nothing
    stored = json.loads(elsewhere.storage.read(LEASE))
    assert stored["owner"] == holder.owner and stored["renewals"] == 1

    holder.release()  # a graceful stop: taken at once
    newcomer.acquire()
    stored = json.loads(elsewhere.storage.read(LEASE))
    assert stored["owner"] == newcomer.owner and stored["host"] == "pod-b"
    assert stored["generation"] == 2 and not stored["released"]
    with pytest.raises(LeaseLost):
        holder.check()


@pytest.mark.usefixtures("without_test_switches")
def test_the_settings_reach_the_bucket_through_the_deployment_variables(
    cloud: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    bucket, location = a_prefix(cloud)
    monkeypatch.setenv("STREAMFIT_CHECKPOINT_DIR", location)
    for name, value in cloud.env.items():  # STREAMFIT_STORAGE_OPTIONS (JSON) and the like
        monkeypatch.setenv(name, value)
    store = store_for(load_settings())
    store.save(a_checkpoint(1))
    assert cloud.keys(bucket, PREFIX) == [
        f"{PREFIX}/ckpt-0000000001.npz",
        f"{PREFIX}/manifest.json",
    ]
    restored = CheckpointStore(location, options=cloud.options).latest()
    assert restored is not None and restored.version == 1
