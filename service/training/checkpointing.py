"""Checkpointing: checkpoint, then commit — the sequence behind the exactly-once effect.

`Checkpointer.checkpoint()` runs these steps, under the pipeline's lock:

1. settle the pipeline: every batch in flight is learned and its offsets advanced;
2. on the learner thread, take the model's state (weights, optimizer, standardizer, counters,
   drift statistics) and serve a snapshot no older than it;
3. copy the positions from `PartitionOffsets`: nothing learns between 1 and 3, so they are
   exactly the records that state has learned;
4. on the I/O thread, check the writer's lease (`service.lease`: another trainer took the
   prefix → LeaseLost, training stops), then write checkpoint N+1 atomically (temporary file,
   fsync, rename; one PUT on an object store); if that fails, stop here: nothing is
   committed, and the error shows in `/readyz`;
5. serve version N+1 if the serve policy decides so (`Promotion`: under `latest` always; the
   decision was written into the manifest with the checkpoint), and hand a served version to
   the exporter (EXPORT_DIR), which writes it on its own thread;
6. commit the positions for the consumer group. A commit that fails is kept and retried
   (`retry_commit_if_due`) until it goes through; the checkpoint is the truth meanwhile.

Group offsets therefore never run ahead of a checkpoint, and a restart that restores the
checkpoint and seeks to its offsets learns every record exactly once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from service import metrics
from service.checkpoints import Checkpoint, CheckpointError, CheckpointStore, offset_key
from service.errors import VersionNotFound
from service.export import Exporter
from service.kafka.commits import commit_offsets
from service.training.learner_thread import LearnerThread
from service.training.offsets import PartitionOffsets
from service.training.pipeline import LearnPipeline
from service.training.promotion import Promotion
from service.training.status import TrainerStatus

log = logging.getLogger(__name__)


class Checkpointer:
    """Owns the checkpoint versions, the checkpoint-then-commit sequence and rollbacks."""

    def __init__(
        self,
        store: CheckpointStore,
        offsets: PartitionOffsets,
        learner: LearnerThread,
        pipeline: LearnPipeline,
        promotion: Promotion,
        status: TrainerStatus,
        group_id: str,
        interval_s: float,
        fence: Callable[[], object] | None = None,
    ) -> None:
        self.store = store
        self.offsets = offsets
        self.learner = learner
        self.pipeline = pipeline
        self.promotion = promotion
        self.status = status
        self.group_id = group_id
        self.interval_s = interval_s
        self._fence = fence
        self.version = 0
        self.newest: Checkpoint | None = None
        self._last_attempt = time.monotonic()
        self._uncommitted: dict[TopicPartition, int] | None = None
        self._rolled_back_to: int | None = None
        self._lock = asyncio.Lock()
        self._io_thread = ThreadPoolExecutor(1, thread_name_prefix="streamfit-checkpoint")
        self._exporter: Exporter | None = None

    # -- start -------------------------------------------------------------------------------

    def restore(self) -> Checkpoint | None:
        """The newest valid checkpoint (corrupt ones skipped), whose offsets the positions take.

        A new run numbers its checkpoints above anything on disk, even unreadable files.
        """
        checkpoint = self.store.latest()
        if checkpoint is not None:
            self.version = checkpoint.version
            self.newest = checkpoint
            self.offsets.restore(checkpoint.offsets)
            metrics.CHECKPOINT_TIMESTAMP.set(checkpoint.created_at)
        self.version = max(self.version, self.store.newest_version())
        return checkpoint

    def export_with(self, exporter: Exporter) -> None:
        """Hand every checkpoint written from now on to `exporter` (it returns at once)."""
        self._exporter = exporter

    def info(self) -> dict[str, Any] | None:
        """What `/model` shows of the newest checkpoint."""
        return self.newest.metadata() if self.newest is not None else None

    def own_commits(self, tp: TopicPartition) -> set[int]:
        """Offsets of `tp` that this store's retained checkpoints recorded (and so committed)."""
        key = offset_key(tp.topic, tp.partition)
        return {
            int(entry["offsets"][key])
            for entry in self.store.manifest()["checkpoints"]
            if key in entry.get("offsets", {})
        }

    # -- the sequence ------------------------------------------------------------------------

    def due(self) -> bool:
        return time.monotonic() - self._last_attempt >= self.interval_s

    async def checkpoint_if_due(self, consumer: AIOKafkaConsumer | None) -> None:
        if self.offsets.changed_since_checkpoint and self.due():
            await self.checkpoint(consumer)

    async def checkpoint(self, consumer: AIOKafkaConsumer | None = None) -> Checkpoint | None:
        """Steps 1-6 of the module docstring; None if nothing changed or the write failed."""
        async with self._lock:
            async with self.pipeline.lock:
                await self.pipeline.settle()
                if self.pipeline.failed is not None:
                    log.error("no checkpoint: a batch failed to learn, the model is past it")
                    return None
                if not self.offsets.changed_since_checkpoint and self.version > 0:
                    return None
                version = self.version + 1
                state = await self.learner.checkpoint_state(version)
                offsets = self.offsets.learned_offsets()
                self.offsets.checkpointed()
            checkpoint = Checkpoint(
                version=version,
                state=state,
                offsets={offset_key(tp.topic, tp.partition): o for tp, o in offsets.items()},
                extra={"group_id": self.group_id, "rolled_back_to": self._rolled_back_to},
            )
            serve = self.promotion.decide(checkpoint, explicit=self._rolled_back_to is not None)
            started = time.perf_counter()
            self._last_attempt = time.monotonic()
            try:
                await asyncio.get_running_loop().run_in_executor(
                    self._io_thread, self._save, checkpoint, self.promotion.serving()
                )
            except OSError as exc:
                self.promotion.undo()
                self.offsets.not_checkpointed()
                self.status.checkpoint_failed(exc)
                metrics.CHECKPOINT_FAILURES.inc()
                log.error("checkpoint failed, offsets not committed", extra={"error": str(exc)})
                return None
            metrics.CHECKPOINT_DURATION.observe(time.perf_counter() - started)
            metrics.CHECKPOINT_TIMESTAMP.set(checkpoint.created_at)
            self.status.checkpoint_written()
            self._rolled_back_to = None
            self.version, self.newest = version, checkpoint
            self.promotion.written(checkpoint, serve)
            if serve and self._exporter is not None:  # only served versions are exported
                self._exporter.submit(checkpoint)
            log.info(
                "checkpoint written",
                extra={"version": version, "samples_trained": state["samples_trained"]},
            )
        if consumer is not None:
            await self._commit(consumer, offsets)
        return checkpoint

    def _save(self, checkpoint: Checkpoint, serving: dict[str, Any]) -> None:
        """On the I/O thread: the writer's fence first (a lease taken over raises LeaseLost
        and nothing is written), then the checkpoint and the serve decision with it."""
        if self._fence is not None:
            self._fence()
        self.store.save(checkpoint, serving)

    # -- operators' serve decisions ------------------------------------------------------------

    async def pin(self, version: int) -> dict[str, Any]:
        """Serve stored `version` until unpinned (between checkpoints, behind the fence)."""
        async with self._lock:
            return await self._on_io_thread(self.promotion.pin, version)

    async def unpin(self) -> dict[str, Any]:
        async with self._lock:
            return await self._on_io_thread(self.promotion.unpin)

    async def _on_io_thread(self, fn: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
        def fenced() -> dict[str, Any]:
            if self._fence is not None:
                self._fence()
            return fn(*args)

        return await asyncio.get_running_loop().run_in_executor(self._io_thread, fenced)

    async def checkpoint_quietly(self, consumer: AIOKafkaConsumer | None) -> None:
        """A checkpoint on the way out (revoked partitions, a lost connection): log failures."""
        try:
            await self.checkpoint(consumer)
        except Exception:
            log.warning("checkpoint on the way out failed", exc_info=True)

    async def _commit(self, consumer: AIOKafkaConsumer, offsets: dict[TopicPartition, int]) -> None:
        assigned = consumer.assignment()
        owned = {tp: o for tp, o in offsets.items() if tp in assigned}
        try:
            await commit_offsets(consumer, owned)
        except (KafkaError, TimeoutError) as exc:
            log.warning("offset commit failed", extra={"error": str(exc)})
            self._uncommitted = dict(offsets)
            return
        self._uncommitted = None
        self.offsets.note_committed(owned)

    async def retry_commit_if_due(self, consumer: AIOKafkaConsumer) -> None:
        """Retry a failed commit every checkpoint interval, new records or not."""
        if self._uncommitted is not None and self.due():
            self._last_attempt = time.monotonic()
            await self._commit(consumer, self._uncommitted)

    # -- rollback ----------------------------------------------------------------------------

    async def rollback(
        self, version: int, consumer: AIOKafkaConsumer | None = None
    ) -> Checkpoint | None:
        """Serve and keep learning from retained checkpoint `version`'s model.

        Weights, optimizer state, standardizer and counters return to that version; the
        consumer keeps its position (records since then are not learned again). The result is
        written as a new, higher version. VersionNotFound if `version` is not retained,
        CheckpointError if it is unreadable.
        """
        if version not in self.store.versions():
            raise VersionNotFound(f"checkpoint version {version} is not retained")
        checkpoint = await asyncio.to_thread(self.store.load, version)
        async with self.pipeline.lock:
            await self.pipeline.settle()
            await self.learner.adopt(checkpoint.state, version)
            self.offsets.not_checkpointed()
            self._rolled_back_to = version
        log.warning("rolled back", extra={"to_version": version})
        return await self.checkpoint(consumer)

    async def rollback_before(self, onset: int, consumer: AIOKafkaConsumer | None) -> None:
        """Roll back to the newest retained checkpoint from before `onset` (samples learned)."""
        candidates = [
            int(e["version"])
            for e in self.store.manifest()["checkpoints"]
            if e.get("samples_trained") is not None and int(e["samples_trained"]) <= onset
        ]
        if not candidates:
            log.warning("drift: no retained checkpoint before the onset; keeping the model")
            return
        try:
            await self.rollback(max(candidates), consumer)
        except CheckpointError as exc:
            log.error("drift: rollback failed", extra={"error": str(exc)})

    def stop(self) -> None:
        self._io_thread.shutdown(wait=True)
