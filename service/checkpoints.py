"""Checkpoints: atomic, self-describing files holding learner state and Kafka offsets.

Each checkpoint is one file `ckpt-<version>.npz` (weights, optimizer state, standardizer,
metadata incl. the next offset per partition). It is written to a temporary name, fsynced,
renamed into place and the directory fsynced, so a crash at any moment leaves either the old
set of files or the new one. `manifest.json` (also written atomically) lists the retained
versions with their SHA-256; a file that fails to load or to match is skipped with a warning
and the previous version is used.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

FILE_PATTERN = re.compile(r"^ckpt-(\d{10})\.npz$")
TEMP_PATTERN = re.compile(r"^\..+\.(\d+)\.tmp$")  # `_write_atomically`'s names
MANIFEST = "manifest.json"
FORMAT_VERSION = 1


class CheckpointError(Exception):
    """A checkpoint could not be written or read."""


@dataclass
class Checkpoint:
    """A learner state plus the offsets it has learned up to (next offset per partition)."""

    version: int
    state: dict[str, Any]
    offsets: dict[str, int]
    created_at: float = field(default_factory=time.time)
    extra: dict[str, Any] = field(default_factory=dict)

    def metadata(self) -> dict[str, Any]:
        """What `/model` shows about this checkpoint."""
        return {"version": self.version, "created_at": self.created_at, "offsets": self.offsets}


def offset_key(topic: str, partition: int) -> str:
    """How a partition is named in checkpoint offsets: `topic:partition`."""
    return f"{topic}:{partition}"


def parse_offset_key(key: str) -> tuple[str, int]:
    topic, _, partition = key.rpartition(":")
    return topic, int(partition)


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def _fsync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomically(path: Path, payload: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)


def _serialize(checkpoint: Checkpoint) -> bytes:
    state = dict(checkpoint.state)
    weights = state.pop("weights")
    optimizer = state.pop("optimizer")
    model_state = state.pop("model_state", [])
    standardizer = state.pop("standardizer")
    meta = {
        "format": FORMAT_VERSION,
        "version": checkpoint.version,
        "created_at": checkpoint.created_at,
        "offsets": checkpoint.offsets,
        "extra": checkpoint.extra,
        "state": state,
        "standardizer_count": int(standardizer["count"]),
        "num_weights": len(weights),
        "num_optimizer": len(optimizer),
        "num_model_state": len(model_state),
    }
    arrays: dict[str, np.ndarray] = {
        "meta": np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8),
        "standardizer_mean": standardizer["mean"],
        "standardizer_m2": standardizer["m2"],
    }
    arrays.update({f"w{i}": w for i, w in enumerate(weights)})
    arrays.update({f"o{i}": v for i, v in enumerate(optimizer)})
    arrays.update({f"m{i}": v for i, v in enumerate(model_state)})
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)  # type: ignore[arg-type]
    return buffer.getvalue()


def _deserialize(payload: bytes) -> Checkpoint:
    with np.load(io.BytesIO(payload), allow_pickle=False) as archive:
        meta = json.loads(archive["meta"].tobytes())
        if meta.get("format") != FORMAT_VERSION:
            raise CheckpointError(f"unknown checkpoint format {meta.get('format')!r}")
        state = dict(meta["state"])
        state["weights"] = [archive[f"w{i}"] for i in range(meta["num_weights"])]
        state["optimizer"] = [archive[f"o{i}"] for i in range(meta["num_optimizer"])]
        state["model_state"] = [archive[f"m{i}"] for i in range(meta.get("num_model_state", 0))]
        state["standardizer"] = {
            "count": meta["standardizer_count"],
            "mean": archive["standardizer_mean"],
            "m2": archive["standardizer_m2"],
        }
    return Checkpoint(
        version=int(meta["version"]),
        state=state,
        offsets={k: int(v) for k, v in meta["offsets"].items()},
        created_at=float(meta["created_at"]),
        extra=meta.get("extra", {}),
    )


class CheckpointStore:
    """A directory of versioned checkpoints with retention.

    `save` is safe against crashes at any point; `latest` returns the newest checkpoint that
    loads and matches its recorded checksum.
    """

    def __init__(self, directory: Path | str, keep: int = 5) -> None:
        self.directory = Path(directory)
        self.keep = keep

    def path_for(self, version: int) -> Path:
        return self.directory / f"ckpt-{version:010d}.npz"

    def versions(self) -> list[int]:
        """Versions present on disk, oldest first."""
        if not self.directory.is_dir():
            return []
        found = (FILE_PATTERN.match(p.name) for p in self.directory.iterdir())
        return sorted(int(m.group(1)) for m in found if m)

    def manifest(self) -> dict[str, Any]:
        """The manifest, or an empty one if missing or unreadable."""
        try:
            data = json.loads((self.directory / MANIFEST).read_text())
            if isinstance(data, dict) and isinstance(data.get("checkpoints"), list):
                return data
        except (OSError, ValueError):
            pass
        return {"checkpoints": []}

    def save(self, checkpoint: Checkpoint) -> Path:
        """Write a checkpoint atomically, update the manifest, apply retention."""
        self.directory.mkdir(parents=True, exist_ok=True)
        self._remove_orphans()
        payload = _serialize(checkpoint)
        path = self.path_for(checkpoint.version)
        _write_atomically(path, payload)
        entries = [
            e for e in self.manifest()["checkpoints"] if e.get("version") != checkpoint.version
        ]
        entries.append(
            {
                "version": checkpoint.version,
                "file": path.name,
                "sha256": hashlib.sha256(payload).hexdigest(),
                "bytes": len(payload),
                "created_at": checkpoint.created_at,
                "samples_trained": checkpoint.state.get("samples_trained"),
                "offsets": checkpoint.offsets,
                "extra": checkpoint.extra,
            }
        )
        entries.sort(key=lambda e: int(e["version"]))
        retained = entries[-self.keep :]
        _write_atomically(
            self.directory / MANIFEST,
            json.dumps({"checkpoints": retained}, indent=1).encode(),
        )
        keep_versions = {int(e["version"]) for e in retained}
        for version in self.versions():
            if version not in keep_versions and version < checkpoint.version:
                self.path_for(version).unlink(missing_ok=True)
        return path

    def _remove_orphans(self) -> None:
        """Delete temporary files of writers that died mid-write (kill -9 before the rename);
        a live writer's own are left alone (its pid is in the name)."""
        for path in self.directory.glob(".*.tmp"):
            match = TEMP_PATTERN.match(path.name)
            if match is None or _process_alive(int(match.group(1))):
                continue
            path.unlink(missing_ok=True)
            log.info("removed a temporary file of a dead writer", extra={"file": path.name})

    def load(self, version: int) -> Checkpoint:
        """Load one version, checking it against the manifest's checksum when listed."""
        path = self.path_for(version)
        try:
            payload = path.read_bytes()
        except OSError as exc:
            raise CheckpointError(f"cannot read {path.name}: {exc}") from exc
        listed = {int(e["version"]): e for e in self.manifest()["checkpoints"] if "version" in e}
        expected = listed.get(version, {}).get("sha256")
        if expected and hashlib.sha256(payload).hexdigest() != expected:
            raise CheckpointError(f"{path.name} does not match its manifest checksum")
        try:
            checkpoint = _deserialize(payload)
        except CheckpointError:
            raise
        except Exception as exc:
            raise CheckpointError(f"{path.name} is corrupt: {exc}") from exc
        if checkpoint.version != version:
            raise CheckpointError(f"{path.name} holds version {checkpoint.version}")
        return checkpoint

    def latest(self) -> Checkpoint | None:
        """The newest checkpoint that loads; corrupt ones are skipped with a warning."""
        for version in reversed(self.versions()):
            try:
                return self.load(version)
            except CheckpointError as exc:
                log.warning("skipping checkpoint", extra={"version": version, "error": str(exc)})
        return None

    def newest_version(self) -> int:
        """Highest version on disk (valid or not), 0 if none: new versions go above it."""
        versions = self.versions()
        return versions[-1] if versions else 0
