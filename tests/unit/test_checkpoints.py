"""Checkpoints: exact round trip, retention and manifest, corruption skipped with a warning."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from service.checkpoints import (
    MANIFEST,
    Checkpoint,
    CheckpointError,
    CheckpointStore,
    offset_key,
    parse_offset_key,
)


def make_state(seed: int, hidden: int = 8) -> dict[str, Any]:
    """A learner-shaped state: Dense weights, Adam variables, standardizer, counters."""
    rng = np.random.default_rng(seed)
    weights = [
        rng.standard_normal((4, hidden)).astype(np.float32),
        rng.standard_normal(hidden).astype(np.float32),
        rng.standard_normal((hidden, 1)).astype(np.float32),
        rng.standard_normal(1).astype(np.float32),
    ]
    optimizer = [np.array(100 + seed, dtype=np.int64), np.array(1e-3, dtype=np.float32)]
    optimizer += [rng.standard_normal(w.shape).astype(np.float32) for w in weights * 2]
    return {
        "weights": weights,
        "optimizer": optimizer,
        "standardizer": {
            "count": 1000 + seed,
            "mean": rng.standard_normal(4),
            "m2": rng.random(4) * 100,
        },
        "samples_trained": 1000 + seed,
        "batches_trained": 4 + seed,
        "prequential": [[256, 190.0, 120.5], [256, 201.0, 100.25]],
        "last_loss": 0.4321,
        "num_features": 4,
        "arch": "mlp",
        "activations": ["relu", "sigmoid"],
    }


def make_checkpoint(version: int, hidden: int = 8) -> Checkpoint:
    return Checkpoint(
        version=version,
        state=make_state(version, hidden),
        offsets={offset_key("susy-train", p): 1000 * version + p for p in range(3)},
        extra={"group_id": "streamfit", "note": f"v{version}"},
    )


def assert_same_checkpoint(loaded: Checkpoint, saved: Checkpoint) -> None:
    assert loaded.version == saved.version
    assert loaded.offsets == saved.offsets
    assert loaded.created_at == saved.created_at
    assert loaded.extra == saved.extra
    for name in ("weights", "optimizer"):
        assert len(loaded.state[name]) == len(saved.state[name])
        for got, want in zip(loaded.state[name], saved.state[name], strict=True):
            assert got.dtype == np.asarray(want).dtype
            assert got.shape == np.asarray(want).shape
            np.testing.assert_array_equal(got, want)
    assert loaded.state["standardizer"]["count"] == saved.state["standardizer"]["count"]
    for name in ("mean", "m2"):
        np.testing.assert_array_equal(
            loaded.state["standardizer"][name], saved.state["standardizer"][name]
        )
    for name in (
        "samples_trained",
        "batches_trained",
        "prequential",
        "last_loss",
        "num_features",
        "arch",
        "activations",
    ):
        assert loaded.state[name] == saved.state[name], name


def test_save_load_round_trip_is_exact(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path / "ckpt", keep=3)
    saved = make_checkpoint(7)
    path = store.save(saved)
    assert path == store.path_for(7) and path.is_file()
    assert path.name == "ckpt-0000000007.npz"

    assert_same_checkpoint(store.load(7), saved)
    assert_same_checkpoint(store.latest(), saved)  # type: ignore[arg-type]
    assert store.load(7).metadata() == {
        "version": 7,
        "created_at": saved.created_at,
        "offsets": saved.offsets,
    }
    # Saving does not consume the caller's state.
    assert {"weights", "optimizer", "standardizer"} <= set(saved.state)


def test_nan_last_loss_survives(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    checkpoint = make_checkpoint(1)
    checkpoint.state["last_loss"] = float("nan")
    store.save(checkpoint)
    assert np.isnan(store.load(1).state["last_loss"])


def test_retention_keeps_newest_and_manifest_lists_them(tmp_path: Path) -> None:
    keep = 3
    store = CheckpointStore(tmp_path, keep=keep)
    for version in range(1, 8):
        store.save(make_checkpoint(version))
        expected = list(range(max(1, version - keep + 1), version + 1))
        assert store.versions() == expected

    files = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("ckpt-"))
    assert files == [store.path_for(v).name for v in (5, 6, 7)]
    manifest = json.loads((tmp_path / MANIFEST).read_text())
    entries = manifest["checkpoints"]
    assert [e["version"] for e in entries] == [5, 6, 7]
    for entry in entries:
        payload = (tmp_path / entry["file"]).read_bytes()
        assert entry["sha256"] == hashlib.sha256(payload).hexdigest()
        assert entry["bytes"] == len(payload)
        assert entry["offsets"] == make_checkpoint(entry["version"]).offsets
    assert store.newest_version() == 7


def test_saving_a_version_again_replaces_its_manifest_entry(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path, keep=5)
    store.save(make_checkpoint(1))
    replacement = make_checkpoint(1, hidden=3)
    store.save(replacement)
    assert [e["version"] for e in store.manifest()["checkpoints"]] == [1]
    assert_same_checkpoint(store.load(1), replacement)


def _truncate(path: Path) -> None:
    payload = path.read_bytes()
    path.write_bytes(payload[: len(payload) // 2])


def _flip_bytes(path: Path) -> None:
    payload = bytearray(path.read_bytes())
    middle = len(payload) // 2
    for i in range(middle, middle + 16):
        payload[i] ^= 0xFF
    path.write_bytes(bytes(payload))


@pytest.mark.parametrize("damage", [_truncate, _flip_bytes], ids=["truncated", "flipped"])
@pytest.mark.parametrize("in_manifest", [True, False], ids=["listed", "unlisted"])
def test_corrupt_newest_is_skipped_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, damage: Any, in_manifest: bool
) -> None:
    store = CheckpointStore(tmp_path, keep=5)
    previous = make_checkpoint(2, hidden=64)
    store.save(make_checkpoint(1, hidden=64))
    store.save(previous)
    store.save(make_checkpoint(3, hidden=64))
    if not in_manifest:  # checksum unknown: the file itself must be found corrupt
        (tmp_path / MANIFEST).unlink()
    damage(store.path_for(3))

    with pytest.raises(CheckpointError):
        store.load(3)
    with caplog.at_level(logging.WARNING, logger="service.checkpoints"):
        latest = store.latest()

    assert latest is not None
    assert_same_checkpoint(latest, previous)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert getattr(warnings[0], "version", None) == 3
    assert store.newest_version() == 3  # new versions still go above the corrupt one


def test_every_checkpoint_corrupt_gives_none(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = CheckpointStore(tmp_path)
    store.save(make_checkpoint(1))
    store.save(make_checkpoint(2))
    _truncate(store.path_for(1))
    _flip_bytes(store.path_for(2))
    with caplog.at_level(logging.WARNING, logger="service.checkpoints"):
        assert store.latest() is None
    assert sorted(getattr(r, "version", None) for r in caplog.records) == [1, 2]


def test_file_whose_content_is_another_version_is_refused(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    store.save(make_checkpoint(1))
    store.save(make_checkpoint(2))
    (tmp_path / MANIFEST).unlink()
    store.path_for(2).write_bytes(store.path_for(1).read_bytes())
    with pytest.raises(CheckpointError, match="version 1"):
        store.load(2)
    assert store.latest().version == 1  # type: ignore[union-attr]


def test_valid_file_missing_from_manifest_still_loads(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path, keep=5)
    store.save(make_checkpoint(1))
    newest = make_checkpoint(2)
    store.save(newest)
    manifest = store.manifest()
    manifest["checkpoints"] = [e for e in manifest["checkpoints"] if e["version"] != 2]
    (tmp_path / MANIFEST).write_text(json.dumps(manifest))

    assert_same_checkpoint(store.load(2), newest)
    assert store.latest().version == 2  # type: ignore[union-attr]


def test_missing_or_unreadable_manifest(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    assert store.manifest() == {"checkpoints": []}
    store.save(make_checkpoint(4))
    (tmp_path / MANIFEST).write_text("{not json")
    assert store.manifest() == {"checkpoints": []}
    assert store.latest().version == 4  # type: ignore[union-attr]


def test_leftover_temp_files_are_ignored(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path, keep=5)
    store.save(make_checkpoint(1))
    store.save(make_checkpoint(2))
    # What a crash in the middle of writing version 3 (or of the manifest) leaves behind.
    (tmp_path / f".{store.path_for(3).name}.4242.tmp").write_bytes(b"half a checkpoint")
    (tmp_path / f".{MANIFEST}.4242.tmp").write_text("{")
    (tmp_path / "ckpt-0000000009.npz.tmp").write_bytes(b"junk")
    (tmp_path / "ckpt-9.npz").write_bytes(b"junk")

    assert store.versions() == [1, 2]
    assert store.newest_version() == 2
    assert store.latest().version == 2  # type: ignore[union-attr]
    store.save(make_checkpoint(3))
    assert store.latest().version == 3  # type: ignore[union-attr]


def test_newest_version(tmp_path: Path) -> None:
    missing = CheckpointStore(tmp_path / "does-not-exist")
    assert missing.newest_version() == 0
    assert missing.versions() == []
    assert missing.latest() is None

    store = CheckpointStore(tmp_path / "ckpt", keep=2)
    assert store.newest_version() == 0
    for version in (3, 10, 11):
        store.save(make_checkpoint(version))
        assert store.newest_version() == version
    assert store.versions() == [10, 11]


def test_load_missing_version_raises(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    with pytest.raises(CheckpointError):
        store.load(1)


@pytest.mark.parametrize(("topic", "partition"), [("susy-train", 0), ("a.b-c_d", 17)])
def test_offset_key_round_trip(topic: str, partition: int) -> None:
    assert parse_offset_key(offset_key(topic, partition)) == (topic, partition)


def test_valid_file_not_matching_its_manifest_checksum_is_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = CheckpointStore(tmp_path / "a")
    store.save(make_checkpoint(1))
    store.save(make_checkpoint(2))
    # A well-formed checkpoint of the same version, but not the bytes the manifest recorded.
    elsewhere = CheckpointStore(tmp_path / "b")
    elsewhere.save(make_checkpoint(2, hidden=5))
    store.path_for(2).write_bytes(elsewhere.path_for(2).read_bytes())

    with pytest.raises(CheckpointError, match="checksum"):
        store.load(2)
    with caplog.at_level(logging.WARNING, logger="service.checkpoints"):
        assert store.latest().version == 1  # type: ignore[union-attr]
    assert [getattr(r, "version", None) for r in caplog.records] == [2]


def test_save_removes_temporary_files_of_dead_writers(tmp_path: Path) -> None:
    """A writer killed between writing its temporary file and the rename leaves it behind;
    the next save removes it, but never a live writer's."""
    import os
    import subprocess
    import sys

    store = CheckpointStore(tmp_path)
    store.save(make_checkpoint(1))
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True
    )
    dead_pid = int(dead.stdout)
    orphan = tmp_path / f".ckpt-0000000002.npz.{dead_pid}.tmp"
    orphan.write_bytes(b"half a checkpoint")
    live = tmp_path / f".manifest.json.{os.getppid()}.tmp"
    live.write_bytes(b"{}")
    store.save(make_checkpoint(2))
    assert not orphan.exists()
    assert live.exists(), "a live process's temporary file stays"
    assert store.latest().version == 2
