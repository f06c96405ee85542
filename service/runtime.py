"""Runtime: what one service process runs by its role, and the objects the routes read.

Role `all` and `trainer` run a `Trainer` (and, with EXPORT_DIR, an `Exporter` fed by its
checkpoints); `predictor` runs a `CheckpointFollower`. Either is the data plane's model source.
With HTTP workers, the served snapshot is written for them (`SnapshotWriter`) and they are
started before the model source and stopped first. The event-loop watch runs in every role.
"""

from __future__ import annotations

import asyncio
import logging
import time

from service import metrics
from service.checkpoints import store_for
from service.export import Exporter, exporter_for
from service.feedback import PendingPredictions
from service.loopwatch import LoopWatch
from service.model.inputs import declared_inputs
from service.model.task import Task
from service.serving.batcher import MicroBatcher
from service.serving.dataplane import DataPlane
from service.serving.follower import CheckpointFollower
from service.serving.shared import SnapshotWriter
from service.serving.snapshot import SnapshotHolder
from service.serving.versions import StoredVersions
from service.serving.workers import HttpWorkers
from service.settings import Settings
from service.training.trainer import Trainer

log = logging.getLogger(__name__)


class Runtime:
    """Builds the data plane and, on `start`, the trainer or follower behind it."""

    def __init__(self, settings: Settings, workers: HttpWorkers | None = None) -> None:
        self.settings = settings
        self.workers = workers  # HTTP worker processes, with the served snapshot shared
        self.snapshots = SnapshotHolder()
        self.loopwatch = LoopWatch()
        self.started_at = time.time()
        pending = (
            PendingPredictions(
                declared_inputs(settings).width,
                settings.feedback_capacity,
                settings.feedback_ttl_s,
                Task.of(settings),
            )
            if settings.labels_topic and settings.role != "predictor"
            else None
        )
        self.dataplane = DataPlane(
            settings.model_name,
            self.snapshots,
            MicroBatcher(self.snapshots, metrics.PREDICTION_DURATION.observe),
            role=settings.role,
            group_id=settings.group_id,
            topic=settings.train_topic,
            pending=pending,
            versions=StoredVersions(store_for(settings)),
        )
        self.trainer: Trainer | None = None
        self.exporter: Exporter | None = None
        self.follower: CheckpointFollower | None = None
        self.snapshot_writer: SnapshotWriter | None = None

    async def start(self) -> None:
        """Start the loop watch and the model source; a failure shows in `/readyz`."""
        self.loopwatch.start()
        s = self.settings
        if self.workers is not None:
            self.snapshot_writer = SnapshotWriter(self.snapshots, self.workers.directory)
            self.snapshot_writer.start()
            self.workers.start()
        try:
            if s.role == "predictor":
                store = store_for(s)
                self.follower = CheckpointFollower(store, self.snapshots, s.predictor_reload_s)
                self.dataplane.source = self.follower
                await self.follower.start()
            else:
                # Learning yields to the workers it serves with, as `serve` decided.
                nice = self.workers.trainer_nice if self.workers is not None else 0
                self.trainer = Trainer(s, self.snapshots, self.dataplane.pending, nice)
                self.exporter = exporter_for(s)
                if self.exporter is not None:
                    self.trainer.checkpointer.export_with(self.exporter)
                self.dataplane.source = self.trainer
                await self.trainer.start()
        except Exception as exc:
            self.dataplane.startup_error = f"{type(exc).__name__}: {exc}"
            log.exception("start-up failed")

    async def stop_starting(self, starting: asyncio.Task[None]) -> None:
        """On shutdown: let a start that is retrying (a store that does not answer) give up."""
        if not starting.done() and self.trainer is not None:
            self.trainer.request_stop()
        await starting

    async def stop(self) -> None:
        if self.workers is not None:  # no new requests: the workers finish theirs and exit
            await self.workers.stop()
        if self.snapshot_writer is not None:
            await self.snapshot_writer.stop()
        await self.loopwatch.stop()
        if self.trainer is not None:
            await self.trainer.stop()
        if self.exporter is not None:  # after the trainer's last checkpoint: export it too
            await asyncio.to_thread(self.exporter.close)
        if self.follower is not None:
            await self.follower.stop()
