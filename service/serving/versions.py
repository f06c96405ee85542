"""Versions: any stored checkpoint version as a snapshot, for the version and label routes.

`POST /v1/models/{name}/versions/{v}:predict` answers with exactly the stored weights of
version v, whatever is served. Loading reads the store (a network round trip on an object
store), so it runs off the event loop, and the few versions asked for last stay loaded.
"""

from __future__ import annotations

import asyncio
import threading
from collections import OrderedDict

from service.checkpoints import CheckpointError, CheckpointStore
from service.errors import VersionNotFound, VersionUnusable
from service.serving.snapshot import ModelSnapshot, SnapshotError, snapshot_from_checkpoint

CACHED = 4


class StoredVersions:
    """Stored versions as snapshots, the last `CACHED` asked for kept loaded."""

    def __init__(self, store: CheckpointStore) -> None:
        self.store = store
        self._cache: OrderedDict[int, ModelSnapshot] = OrderedDict()
        self._lock = threading.Lock()

    async def get(self, version: int) -> ModelSnapshot:
        """VersionNotFound if not stored, VersionUnusable if it cannot be loaded."""
        with self._lock:
            if version in self._cache:
                self._cache.move_to_end(version)
                return self._cache[version]
        snapshot = await asyncio.to_thread(self._load, version)
        with self._lock:
            self._cache[version] = snapshot
            while len(self._cache) > CACHED:
                self._cache.popitem(last=False)
        return snapshot

    async def newest(self) -> ModelSnapshot:
        version = await asyncio.to_thread(self.store.newest_version)
        if version == 0:
            raise VersionNotFound("no version stored yet")
        return await self.get(version)

    def _load(self, version: int) -> ModelSnapshot:
        if version not in self.store.versions():
            raise VersionNotFound(f"version {version} is not stored")
        try:
            return snapshot_from_checkpoint(self.store.load(version))
        except (CheckpointError, SnapshotError) as exc:
            raise VersionUnusable(f"version {version} cannot be served: {exc}") from exc
