"""Checkpoints: atomic, self-describing files holding learner state and Kafka offsets.

Each checkpoint is one file `ckpt-<version>.npz` (weights, optimizer state, standardizer,
metadata incl. the next offset per partition), in a directory or an object-store prefix
(`service.storage`). It becomes visible whole or not at all (a directory: temporary name,
fsync, rename; an object store: one PUT), and the manifest is written after it, so a crash at
any moment leaves either the old set of files or the new one. `manifest.json` (also written
whole) lists the retained versions with their SHA-256; a file that fails to load or to match
is skipped with a warning and the previous version is used.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from service.storage import (
    LocalStorage,
    ObjectStorage,
    Storage,
    StorageUnavailable,
    open_storage,
)

log = logging.getLogger(__name__)

CHALLENGER_PREFIX = "challenger_"  # its arrays' names in the archive
FILE_PATTERN = re.compile(r"^ckpt-(\d{10})\.npz$")
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


def _pack(state: dict[str, Any], prefix: str = "") -> tuple[dict[str, Any], dict[str, Any]]:
    """A learner state as JSON metadata and named arrays (`prefix` names another learner's)."""
    state = dict(state)
    weights = state.pop("weights")
    optimizer = state.pop("optimizer")
    model_state = state.pop("model_state", [])
    standardizer = state.pop("standardizer")
    meta = {
        "state": state,
        "standardizer_count": int(standardizer["count"]),
        "num_weights": len(weights),
        "num_optimizer": len(optimizer),
        "num_model_state": len(model_state),
    }
    arrays: dict[str, np.ndarray] = {
        f"{prefix}standardizer_mean": standardizer["mean"],
        f"{prefix}standardizer_m2": standardizer["m2"],
    }
    arrays.update({f"{prefix}w{i}": w for i, w in enumerate(weights)})
    arrays.update({f"{prefix}o{i}": v for i, v in enumerate(optimizer)})
    arrays.update({f"{prefix}m{i}": v for i, v in enumerate(model_state)})
    return meta, arrays


def _unpack(meta: dict[str, Any], archive: Any, prefix: str = "") -> dict[str, Any]:
    state = dict(meta["state"])
    state["weights"] = [archive[f"{prefix}w{i}"] for i in range(meta["num_weights"])]
    state["optimizer"] = [archive[f"{prefix}o{i}"] for i in range(meta["num_optimizer"])]
    state["model_state"] = [archive[f"{prefix}m{i}"] for i in range(meta.get("num_model_state", 0))]
    state["standardizer"] = {
        "count": meta["standardizer_count"],
        "mean": archive[f"{prefix}standardizer_mean"],
        "m2": archive[f"{prefix}standardizer_m2"],
    }
    return state


def _serialize(checkpoint: Checkpoint) -> bytes:
    state = dict(checkpoint.state)
    challenger = state.pop("challenger", None)  # a second learner's full state
    packed, arrays = _pack(state)
    meta = {
        "format": FORMAT_VERSION,
        "version": checkpoint.version,
        "created_at": checkpoint.created_at,
        "offsets": checkpoint.offsets,
        "extra": checkpoint.extra,
        **packed,
    }
    if challenger is not None:
        meta["challenger"], challenger_arrays = _pack(challenger, CHALLENGER_PREFIX)
        arrays.update(challenger_arrays)
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def _deserialize(payload: bytes) -> Checkpoint:
    with np.load(io.BytesIO(payload), allow_pickle=False) as archive:
        meta = json.loads(archive["meta"].tobytes())
        if meta.get("format") != FORMAT_VERSION:
            raise CheckpointError(f"unknown checkpoint format {meta.get('format')!r}")
        state = _unpack(meta, archive)
        if meta.get("challenger") is not None:
            state["challenger"] = _unpack(meta["challenger"], archive, CHALLENGER_PREFIX)
    return Checkpoint(
        version=int(meta["version"]),
        state=state,
        offsets={k: int(v) for k, v in meta["offsets"].items()},
        created_at=float(meta["created_at"]),
        extra=meta.get("extra", {}),
    )


class CheckpointStore:
    """Versioned checkpoints with retention, in a directory or an object-store prefix.

    `save` is safe against crashes at any point (the checkpoint object is written whole, then
    the manifest); `latest` returns the newest checkpoint that loads and matches its recorded
    checksum.
    """

    def __init__(
        self,
        location: Path | str | Storage,
        keep: int = 5,
        options: dict[str, Any] | None = None,
    ) -> None:
        self.storage: Storage = (
            location
            if isinstance(location, LocalStorage | ObjectStorage)
            else open_storage(location, options)  # type: ignore[arg-type]
        )
        self.keep = keep

    @property
    def directory(self) -> str:
        """Where the checkpoints are (a path or a URL), for messages."""
        return self.storage.location

    @staticmethod
    def file_name(version: int) -> str:
        return f"ckpt-{version:010d}.npz"

    def path_for(self, version: int) -> Path:
        """A local store's file of `version` (tests and tools that touch files)."""
        if not isinstance(self.storage, LocalStorage):
            raise TypeError(f"{self.directory} is not a local directory")
        return self.storage.directory / self.file_name(version)

    def where(self, name: str) -> Path | str:
        """A stored object as a path (directory) or a URL (object store)."""
        if isinstance(self.storage, LocalStorage):
            return self.storage.directory / name
        return f"{self.directory.rstrip('/')}/{name}"

    def versions(self) -> list[int]:
        """Versions present in the store, oldest first."""
        found = (FILE_PATTERN.match(name) for name in self.storage.names())
        return sorted(int(m.group(1)) for m in found if m)

    def manifest(self) -> dict[str, Any]:
        """The manifest, or an empty one if missing or unreadable."""
        try:
            data = json.loads(self.storage.read(MANIFEST))
            if isinstance(data, dict) and isinstance(data.get("checkpoints"), list):
                return data
        except (FileNotFoundError, ValueError):
            pass
        except StorageUnavailable:
            raise
        except OSError:
            pass
        return {"checkpoints": []}

    def save(self, checkpoint: Checkpoint, serving: dict[str, Any] | None = None) -> Path | str:
        """Write a checkpoint (whole), then the manifest (with `serving`, the serve policy's
        decision, when given); apply retention, which keeps the versions `serving` names.
        Where it is."""
        for name in self.storage.remove_orphans():
            log.info("removed a temporary file of a dead writer", extra={"file": name})
        payload = _serialize(checkpoint)
        name = self.file_name(checkpoint.version)
        self.storage.write(name, payload)
        manifest = self.manifest()
        entries = [e for e in manifest["checkpoints"] if e.get("version") != checkpoint.version]
        entries.append(
            {
                "version": checkpoint.version,
                "file": name,
                "sha256": hashlib.sha256(payload).hexdigest(),
                "bytes": len(payload),
                "created_at": checkpoint.created_at,
                "samples_trained": checkpoint.state.get("samples_trained"),
                "offsets": checkpoint.offsets,
                "extra": checkpoint.extra,
            }
        )
        entries.sort(key=lambda e: int(e["version"]))
        serving = serving if serving is not None else manifest.get("serving")
        protected = _named_versions(serving)
        retained = [
            e
            for i, e in enumerate(entries)
            if i >= len(entries) - self.keep or int(e["version"]) in protected
        ]
        self._write_manifest(retained, serving)
        keep_versions = {int(e["version"]) for e in retained}
        for version in self.versions():
            if version not in keep_versions and version < checkpoint.version:
                self.storage.delete(self.file_name(version))
        return self.where(name)

    def serving(self) -> dict[str, Any] | None:
        """The serve policy's stored decision (`service.serving.policy`), if any."""
        serving = self.manifest().get("serving")
        return serving if isinstance(serving, dict) else None

    def record_serving(self, serving: dict[str, Any]) -> None:
        """Store a serve decision made between checkpoints (a pin, an unpin)."""
        self._write_manifest(self.manifest()["checkpoints"], serving)

    def _write_manifest(self, entries: list[dict[str, Any]], serving: Any) -> None:
        manifest: dict[str, Any] = {"checkpoints": entries}
        if serving is not None:
            manifest["serving"] = serving
        self.storage.write(MANIFEST, json.dumps(manifest, indent=1).encode())

    def load(self, version: int) -> Checkpoint:
        """Load one version, checking it against the manifest's checksum when listed."""
        name = self.file_name(version)
        try:
            payload = self.storage.read(name)
        except StorageUnavailable:
            raise
        except OSError as exc:
            raise CheckpointError(f"cannot read {name}: {exc}") from exc
        listed = {int(e["version"]): e for e in self.manifest()["checkpoints"] if "version" in e}
        expected = listed.get(version, {}).get("sha256")
        if expected and hashlib.sha256(payload).hexdigest() != expected:
            raise CheckpointError(f"{name} does not match its manifest checksum")
        try:
            checkpoint = _deserialize(payload)
        except CheckpointError:
            raise
        except Exception as exc:
            raise CheckpointError(f"{name} is corrupt: {exc}") from exc
        if checkpoint.version != version:
            raise CheckpointError(f"{name} holds version {checkpoint.version}")
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
        """Highest version in the store (valid or not), 0 if none: new versions go above it."""
        versions = self.versions()
        return versions[-1] if versions else 0


def _named_versions(serving: Any) -> set[int]:
    """Versions a serve decision names (served, pinned): retention keeps them."""
    if not isinstance(serving, dict):
        return set()
    return {int(v) for v in (serving.get("served_version"), serving.get("pinned")) if v is not None}


def store_for(settings: Any) -> CheckpointStore:
    """The checkpoint store the settings name (`CHECKPOINT_DIR`, `STORAGE_OPTIONS`)."""
    return CheckpointStore(
        settings.checkpoint_dir, settings.checkpoint_keep, settings.storage_options
    )
