"""Follower: the predictor role's model source; loads newer checkpoints as a trainer writes them."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from service import metrics
from service.checkpoints import Checkpoint, CheckpointStore
from service.serving import SnapshotHolder, snapshot_from_state

log = logging.getLogger(__name__)


class CheckpointFollower:
    """Polls a checkpoint directory and publishes each newer valid checkpoint as a snapshot."""

    def __init__(
        self, store: CheckpointStore, snapshots: SnapshotHolder, interval_s: float
    ) -> None:
        self.store = store
        self.snapshots = snapshots
        self.interval_s = interval_s
        self.checkpoint: Checkpoint | None = None
        self.last_error: str | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.poll()
        self._task = asyncio.create_task(self._run(), name="streamfit-follower")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            await self.poll()

    async def poll(self) -> bool:
        """Load the newest checkpoint if it is newer than the served one; True if it was."""
        current = self.checkpoint.version if self.checkpoint else 0
        if self.store.newest_version() <= current:
            return False
        checkpoint = await asyncio.to_thread(self.store.latest)
        if checkpoint is None or checkpoint.version <= current:
            return False
        try:
            snapshot = snapshot_from_state(checkpoint.state, checkpoint.version)
        except (KeyError, TypeError, ValueError) as exc:
            self.last_error = f"checkpoint {checkpoint.version} unusable: {exc}"
            log.error(
                "cannot serve checkpoint", extra={"version": checkpoint.version, "error": str(exc)}
            )
            return False
        self.checkpoint = checkpoint
        self.last_error = None
        self.snapshots.publish(snapshot)
        metrics.MODEL_VERSION.set(checkpoint.version)
        metrics.CHECKPOINT_TIMESTAMP.set(checkpoint.created_at)
        log.info("loaded checkpoint", extra={"version": checkpoint.version})
        return True

    def prequential(self) -> dict[str, Any]:
        """Windowed accuracy and loss as recorded in the served checkpoint."""
        from service.online_stats import PrequentialWindow

        window = PrequentialWindow()
        if self.checkpoint is not None:
            window.restore(self.checkpoint.state.get("prequential", []))
        return {"accuracy": window.accuracy, "loss": window.loss}
