"""Follower: the predictor role's model source; loads newer checkpoints as a trainer writes them."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from service import metrics
from service.checkpoints import Checkpoint, CheckpointError, CheckpointStore
from service.online_stats import PrequentialWindow, history_of_checkpoint
from service.serving.snapshot import (
    ModelSnapshot,
    SnapshotError,
    SnapshotHolder,
    snapshot_from_checkpoint,
)
from service.storage import StorageUnavailable
from service.tasks import OwnedTask

log = logging.getLogger(__name__)


class CheckpointFollower:
    """Polls a checkpoint store and serves the version its serve decision names (or the newest).

    A `ModelSource` for the data plane: it answers what the served checkpoint recorded, and
    has no trainer, lag or drift of its own.
    """

    def __init__(
        self, store: CheckpointStore, snapshots: SnapshotHolder, interval_s: float
    ) -> None:
        self.store = store
        self.snapshots = snapshots
        self.interval_s = interval_s
        self.checkpoint: Checkpoint | None = None
        self.last_error: str | None = None
        self.serving: dict[str, Any] | None = None  # the trainer's decision, as stored
        self.latest_version: int | None = None
        self._task = OwnedTask("streamfit-follower", self._run)

    async def start(self) -> None:
        await self._poll_once()
        self._task.start()

    async def stop(self) -> None:
        await self._task.stop()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            await self._poll_once()

    async def _poll_once(self) -> None:
        """Poll; a store that does not answer keeps the served model (and says why)."""
        try:
            await self.poll()
        except StorageUnavailable as exc:
            self.last_error = f"checkpoint store unavailable: {exc}"
            log.warning("checkpoint store unavailable", extra={"error": str(exc)})

    async def poll(self) -> bool:
        """Load the version to serve if it is not the served one; True if it was loaded.

        That is the version the trainer's serve policy names in the manifest, or, without a
        stored decision (checkpoints written before serve policies), the newest valid one.
        """
        current = self.checkpoint.version if self.checkpoint else 0
        # Off the event loop: on an object store each read is a network round trip.
        serving = await asyncio.to_thread(self.store.serving)
        named = serving.get("served_version") if serving else None
        self.serving = serving
        if named is not None:
            self.latest_version = await asyncio.to_thread(self.store.newest_version)
            if int(named) == current:
                return False
            try:
                checkpoint = await asyncio.to_thread(self.store.load, int(named))
            except CheckpointError as exc:
                self.last_error = f"served version {named} cannot be loaded: {exc}"
                log.error(
                    "cannot load the served version", extra={"version": named, "error": str(exc)}
                )
                return False
        else:
            if await asyncio.to_thread(self.store.newest_version) <= current:
                return False
            latest = await asyncio.to_thread(self.store.latest)
            if latest is None or latest.version <= current:
                return False
            checkpoint = latest
        try:
            snapshot = snapshot_from_checkpoint(checkpoint)
        except SnapshotError as exc:
            self.last_error = str(exc)
            log.error(
                "cannot serve checkpoint", extra={"version": checkpoint.version, "error": str(exc)}
            )
            return False
        self.checkpoint = checkpoint
        self.last_error = None
        self.snapshots.serve(snapshot)
        metrics.MODEL_VERSION.set(checkpoint.version)
        metrics.CHECKPOINT_TIMESTAMP.set(checkpoint.created_at)
        log.info("loaded checkpoint", extra={"version": checkpoint.version})
        return True

    # -- what the data plane reads (ModelSource) ----------------------------------------------

    def checkpoint_info(self) -> dict[str, Any] | None:
        return self.checkpoint.metadata() if self.checkpoint else None

    def prequential(self) -> dict[str, Any]:
        """The task's windowed metrics as recorded in the served checkpoint."""
        if self.checkpoint is None:
            return PrequentialWindow().metrics()
        return PrequentialWindow.of_checkpoint(self.checkpoint.state).metrics()

    def history(self) -> dict[str, Any]:
        if self.checkpoint is not None:
            return history_of_checkpoint(self.checkpoint.state)
        return {"every": None, "points": [], "events": []}

    def challenger_info(self) -> dict[str, Any] | None:
        """The challenger as the served checkpoint recorded it (None without one)."""
        challenger = self.checkpoint.state.get("challenger") if self.checkpoint else None
        if challenger is None:
            return None
        return {
            "model": (challenger.get("model") or {}).get("spec"),
            "samples_trained": int(challenger.get("samples_trained", 0)),
            "prequential": PrequentialWindow.of_checkpoint(challenger).metrics(),
        }

    def challenger_snapshot(self) -> ModelSnapshot | None:
        return None  # the challenger is the trainer's live model: it is not stored to serve

    def not_ready_reason(self) -> str:
        if self.checkpoint is None:
            return f"waiting for a checkpoint in {self.store.directory}"
        return self.last_error or "loading model"

    def trainer_status(self) -> dict[str, Any] | None:
        return None

    def serving_info(self) -> dict[str, Any] | None:
        """The trainer's stored serve decision, and the newest stored version."""
        if self.serving is None:
            return None
        return {**self.serving, "latest_version": self.latest_version}

    def latest_snapshot(self) -> ModelSnapshot | None:
        return None  # the newest stored version: the data plane loads it

    def drift_summary(self) -> dict[str, Any] | None:
        return None

    def lag_rows(self) -> list[dict[str, Any]]:
        return []

    def lag_status(self) -> str | None:
        return None
