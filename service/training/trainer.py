"""Trainer: the consumer task that moves records from Kafka through the learner to checkpoints.

One asyncio task owns the Kafka clients of a session and runs the loop, a short sequence of
calls to the objects that own each step: poll -> `LearnPipeline` (decode on its own thread,
rejects to the dead-letter topic, learn on the learner thread) -> `LagTracker` ->
`DriftResponse` -> `Checkpointer` (checkpoint, then commit). `Rebalance` resumes assigned
partitions by the resume rule of `PartitionOffsets`. A lost connection ends the session with a
checkpoint; the next session starts after a backoff (SPEC.md, "Training semantics").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaError

from service import metrics
from service.checkpoints import Checkpoint, CheckpointError, store_for
from service.codec import Codec
from service.errors import NotTraining, VersionUnusable
from service.feedback import PendingPredictions
from service.kafka.clients import new_consumer, new_producer
from service.kafka.connectivity import ConnectivityProbe
from service.kafka.dead_letters import DeadLetterWriter
from service.kafka.topics import ensure_topic
from service.lease import Lease, LeaseLost
from service.model.task import Task
from service.online_stats import PrequentialWindow
from service.schema_registry import RegistryUnavailable
from service.serving.snapshot import ModelSnapshot, SnapshotHolder
from service.settings import Settings
from service.storage import StorageUnavailable
from service.training.checkpointing import Checkpointer
from service.training.drift_response import DriftResponse
from service.training.fencing import LeaseKeeper
from service.training.lag_tracker import LagTracker
from service.training.learner_thread import LearnerThread
from service.training.offsets import PartitionOffsets
from service.training.pipeline import Batches, LearnPipeline, handoff_records
from service.training.promotion import Promotion
from service.training.rebalance import Rebalance
from service.training.status import TrainerStatus

log = logging.getLogger(__name__)

RECONNECT_BACKOFF_S = (0.5, 1.0, 2.0, 5.0)
FETCH_BYTES_PER_RECORD = 64  # a conservative record size (a SUSY CSV record is ~200 bytes)
# Freshness on a slow stream against steps per second: at 1,000 rec/s a fetch brings ~25
# records every 25 ms (40 steps/s); at 100 ms the served model was 70 ms (p50) and 114 ms
# (p95) behind the stream.
FETCH_MAX_WAIT_MS = 25


def consumer_options(settings: Settings) -> dict[str, Any]:
    """The trainer consumer's group and fetch options (beyond `new_consumer`'s)."""
    return {
        "group_id": settings.group_id,
        # A dead member's partitions move after this long; Tansu also waits about half of it
        # for members when a group forms.
        "session_timeout_ms": settings.session_timeout_ms,
        # Static membership (KIP-345): a restarted pod with the same id takes its partitions
        # back without waiting for its old session to expire.
        "group_instance_id": settings.group_instance_id,
        "heartbeat_interval_ms": max(settings.session_timeout_ms // 5, 100),
        # Several mini-batches per fetch when they are small: the learner thread learns them
        # in one hand-off (see service.training.pipeline).
        "max_poll_records": handoff_records(settings.batch_size),
        # aiokafka keeps one fetch in flight per broker, and leaves out partitions that still
        # have buffered records; a fetch for caught-up partitions then long-polls, and a
        # partition that needs more records waits for it to end. FETCH_MAX_WAIT_MS (not 500)
        # bounds that wait (measured at 500: the last records of a backlog sat 420 ms), and
        # how long a record of a slow stream waits for its batch to fill.
        "fetch_max_wait_ms": FETCH_MAX_WAIT_MS,
        # On a live stream, let the broker gather about a batch (or wait out the
        # FETCH_MAX_WAIT_MS) rather than answer every fetch with a handful of records: fewer,
        # fuller training steps.
        "fetch_min_bytes": settings.batch_size * FETCH_BYTES_PER_RECORD,
    }


class _Session:
    """One connected stretch: the consumer, its rebalance listener, the dead-letter writer."""

    def __init__(
        self, consumer: AIOKafkaConsumer, rebalance: Rebalance, dead_letters: DeadLetterWriter
    ) -> None:
        self.consumer = consumer
        self.rebalance = rebalance
        self.dead_letters = dead_letters


class Trainer:
    """Consumes the train topic into the learner and checkpoints it; what the API reads of it."""

    def __init__(
        self,
        settings: Settings,
        snapshots: SnapshotHolder,
        pending: PendingPredictions | None = None,
        nice: int = 0,
    ) -> None:
        self.settings = settings
        self.status = TrainerStatus()
        self.offsets = PartitionOffsets()
        self.drift = DriftResponse(settings.drift_policy, settings.drift_threshold)
        self.live = SnapshotHolder()  # what the learner publishes; `snapshots` is what is served
        self.challenger_live = SnapshotHolder()  # the challenger's (CHALLENGER_MODEL)
        self.learner = LearnerThread(settings, self.live, self.drift, self.challenger_live, nice)
        self.pipeline = LearnPipeline(
            None,  # the codec follows the model's inputs: built in `start`
            self.learner,
            self.offsets,
            settings.labels_topic,
            pending,
        )
        store = store_for(settings)
        self.lease = LeaseKeeper(Lease(store.storage, settings.lease_ttl_s), self.status)
        self.promotion = Promotion(settings, store, self.live, snapshots)
        self.checkpointer = Checkpointer(
            store,
            self.offsets,
            self.learner,
            self.pipeline,
            self.promotion,
            self.status,
            settings.group_id,
            settings.checkpoint_interval_s,
            fence=self.lease.check,
        )
        self.lag = LagTracker(self.offsets)
        self._session: _Session | None = None
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._last_record = time.monotonic()
        self._registry_failures = 0

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Lease the checkpoint prefix, restore its newest checkpoint, serve its model, start
        consuming in the background."""
        await self.lease.acquire(self._stopping)
        checkpoint = await self._restore()
        await self.learner.start(
            checkpoint.state if checkpoint else None, self.checkpointer.version
        )
        await asyncio.to_thread(self.promotion.restore, self.checkpointer.version)
        learner = self.learner.learner
        self.pipeline.codec = Codec.for_settings(self.settings, learner.inputs, learner.task)
        if checkpoint is not None:
            log.info(
                "restored checkpoint",
                extra={
                    "version": checkpoint.version,
                    "samples_trained": self.learner.learner.samples_trained,
                    "offsets": checkpoint.offsets,
                    **({"roles": roles.state()} if (roles := self.learner.roles) else {}),
                },
            )
        self._task = asyncio.create_task(self._run(), name="streamfit-trainer")

    async def _restore(self) -> Checkpoint | None:
        """The newest checkpoint, retried while the store does not answer: starting from an
        empty model would learn the topic twice. Nothing is consumed meanwhile, and `/readyz`
        says why it is not ready."""
        attempt = 0
        while True:
            try:
                checkpoint = await asyncio.to_thread(self.checkpointer.restore)
            except StorageUnavailable as exc:
                delay = RECONNECT_BACKOFF_S[min(attempt, len(RECONNECT_BACKOFF_S) - 1)]
                attempt += 1
                self.status.last_error = f"checkpoint store unavailable: {exc}"
                log.warning(
                    "checkpoint store unavailable, restore retried",
                    extra={"error": str(exc), "retry_in_s": delay},
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), timeout=delay)
                if self._stopping.is_set():
                    raise
                continue
            self.status.last_error = None
            return checkpoint

    def request_stop(self) -> None:
        """Ask a start that is still retrying, or the loop, to end (`stop` then waits)."""
        self._stopping.set()

    async def stop(self) -> None:
        """Stop fetching, finish the batches in flight, checkpoint, commit, leave the group."""
        self._stopping.set()
        if self._task is not None:
            await self._task
        self.learner.stop()
        self.pipeline.stop()
        self.checkpointer.stop()
        await self.lease.release()

    async def _run(self) -> None:
        """Sessions until stopped or finished; Kafka errors reconnect after a backoff."""
        attempt = 0
        while not self._stopping.is_set() and self.status.state != "finished":
            try:
                await self._consume()
                attempt = 0
            except (KafkaError, OSError) as exc:
                self.status.kafka_unreachable(exc)
                delay = RECONNECT_BACKOFF_S[min(attempt, len(RECONNECT_BACKOFF_S) - 1)]
                attempt += 1
                log.warning(
                    "kafka unavailable, retrying", extra={"error": str(exc), "retry_in_s": delay}
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), timeout=delay)
            except LeaseLost as exc:
                log.error("checkpoint prefix taken over, training stops", extra={"error": str(exc)})
                self.status.fenced(exc)
                return
            except Exception as exc:  # a bug must not kill serving; it shows in /readyz
                log.exception("trainer failed")
                self.status.failed(exc)
                return
        self.status.stopped()

    async def _consume(self) -> None:
        """One session: connect, loop until stopped or disconnected, checkpoint on the way out."""
        async with self._connected() as session:
            self.status.consuming()
            self._last_record = time.monotonic()
            s = self.settings
            log.info("consuming", extra={"topic": s.train_topic, "group_id": s.group_id})
            probe = ConnectivityProbe(
                session.consumer, self.status.kafka_reachable, self.status.kafka_unreachable
            )
            probe.start()
            try:
                await self._loop(session)
            finally:
                await probe.stop()

    @contextlib.asynccontextmanager
    async def _connected(self) -> AsyncIterator[_Session]:
        s = self.settings
        options = s.kafka_client_options()
        consumer = new_consumer(options, client_id="streamfit-trainer", **consumer_options(s))
        # Reads log bounds on each assignment: a fetch of an empty partition long-polls, and
        # the assignment waits for it.
        bounds = new_consumer(options, client_id="streamfit-trainer-bounds", fetch_max_wait_ms=100)
        producer = new_producer(options, client_id="streamfit-dead-letter")
        rebalance = Rebalance(
            consumer, bounds, self.offsets, self.checkpointer, self.lag, self.learner
        )
        consumer.subscribe(
            [s.train_topic, *([s.labels_topic] if s.labels_topic else [])], listener=rebalance
        )
        session = _Session(consumer, rebalance, DeadLetterWriter(producer, s.dead_letter_topic))
        try:
            await self._ensure_side_topics()
            await bounds.start()  # before the consumer: its first rebalance runs in start()
            await consumer.start()
            await producer.start()
            self._session = session
            yield session
        finally:
            self._session = None
            if (
                self.learner.ready
                and not self._stopping.is_set()
                and not self._finished
                and self.lease.lost is None
            ):
                # Leaving on an error: keep what was learned, committing if Kafka allows.
                await self.checkpointer.checkpoint_quietly(consumer)
            for client in (consumer, producer, bounds):
                try:
                    await asyncio.wait_for(client.stop(), timeout=10)
                except Exception:
                    log.debug("client stop failed", exc_info=True)

    async def _ensure_side_topics(self) -> None:
        s = self.settings
        for name in (s.dead_letter_topic, s.labels_topic):
            if name:
                try:
                    await ensure_topic(s.kafka_client_options(), name, 1)
                except (KafkaError, RuntimeError) as exc:  # e.g. no create permission
                    log.warning("cannot create topic", extra={"topic": name, "error": str(exc)})

    # -- the loop ----------------------------------------------------------------------------

    async def _loop(self, session: _Session) -> None:
        consumer = session.consumer
        while not self._stopping.is_set():
            if self.lease.lost is not None:
                raise self.lease.lost
            self._apply_pause(session)
            batches = await consumer.getmany(timeout_ms=self.pipeline.poll_wait_ms())
            await self.checkpointer.retry_commit_if_due(consumer)
            if any(batches.values()):
                await self._learn(session, batches)
            else:
                await self.pipeline.idle()
            self.lag.update_if_due(consumer)
            await self._respond_to_drift(consumer)
            await self.checkpointer.checkpoint_if_due(consumer)
            if await self._stream_timed_out(session):
                log.info(
                    "stream timeout: no record for %d ms, training ends",
                    self.settings.stream_timeout_ms,
                )
                await self.checkpointer.checkpoint(consumer)
                self.status.finished()
                return
        await self.checkpointer.checkpoint(consumer)

    def _apply_pause(self, session: _Session) -> None:
        assigned = session.consumer.assignment()
        if self.status.paused:
            session.consumer.pause(*assigned)
        else:  # partitions still being positioned stay paused (see Rebalance)
            session.consumer.resume(*(assigned - session.rebalance.positioning))

    async def _learn(self, session: _Session, batches: Batches) -> None:
        """Decode (overlapping the batches in flight), then queue for the learner; records
        fetched or decoded while a pause began are put back."""
        if not self.status.paused:
            self._record_arrived()
            try:
                decoded, used = await self.pipeline.decode(batches)
            except RegistryUnavailable as exc:
                await self._registry_unavailable(exc)
                self.pipeline.put_back(session.consumer, batches)
                return
            self._registry_available()
            if not self.status.paused:
                await self.pipeline.submit(batches, decoded, used, session.dead_letters)
                return
        self.pipeline.put_back(session.consumer, batches)

    async def _registry_unavailable(self, exc: RegistryUnavailable) -> None:
        """The Schema Registry is down: nothing is dead-lettered for it; the batch is put back
        and fetched again after a backoff (consuming pauses meanwhile)."""
        delay = RECONNECT_BACKOFF_S[min(self._registry_failures, len(RECONNECT_BACKOFF_S) - 1)]
        self._registry_failures += 1
        self.status.schema_registry_error = str(exc)
        metrics.SCHEMA_REGISTRY_UP.set(0)
        log.warning(
            "schema registry unavailable, retrying", extra={"error": str(exc), "retry_in_s": delay}
        )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), timeout=delay)

    def _registry_available(self) -> None:
        if self._registry_failures or self.status.schema_registry_error:
            log.info("schema registry reachable again")
        self._registry_failures = 0
        self.status.schema_registry_error = None
        if self.settings.message_format == "avro":
            metrics.SCHEMA_REGISTRY_UP.set(1)

    def _record_arrived(self) -> None:
        self._last_record = time.monotonic()
        if not self.status.kafka_connected:  # records arriving: Kafka answers again
            self.status.kafka_reachable()

    async def _respond_to_drift(self, consumer: AIOKafkaConsumer) -> None:
        onset = self.drift.take_rollback_onset()
        if onset is not None:
            await self.checkpointer.rollback_before(onset, consumer)

    async def _stream_timed_out(self, session: _Session) -> bool:
        """No record for STREAM_TIMEOUT_MS while caught up: the clock runs only while
        partitions are assigned and positioned (no record can arrive during a join or a
        rebalance) and every assigned partition is fetched up to its known end (a broker slow
        to answer a fetch must not end training with records left; transaction markers are
        past the fetch position, so they do not count as records left)."""
        timeout_ms = self.settings.stream_timeout_ms
        if timeout_ms < 0 or self.status.paused:
            return False
        if await self._still_reading(session.consumer, session.rebalance):
            self._last_record = time.monotonic()
            return False
        return (time.monotonic() - self._last_record) * 1000 > timeout_ms

    @staticmethod
    async def _still_reading(consumer: AIOKafkaConsumer, rebalance: Rebalance) -> bool:
        """Not assigned, positioning, or some partition not fetched up to its known end."""
        assigned = consumer.assignment()
        if not assigned or rebalance.positioning:
            return True
        for tp in assigned:
            high = consumer.highwater(tp)
            if high is None:
                continue
            try:
                position = await consumer.position(tp)
            except Exception:  # no position yet (being reset): not caught up either
                return True
            if position < high:
                return True
        return False

    @property
    def _finished(self) -> bool:
        return self.status.state in ("finished", "fenced")

    # -- what the API asks (a ModelSource, and the admin operations) ---------------------------

    def _require_learner(self) -> None:
        if not self.learner.ready:
            raise NotTraining("the trainer has not started yet")

    def pause(self) -> dict[str, Any]:
        """Stop learning (the consumer stays in its group); predictions go on."""
        self._require_learner()
        self.status.pause()
        return self.status.as_dict()

    def resume(self) -> dict[str, Any]:
        self._require_learner()
        self.status.resume()
        return self.status.as_dict()

    async def checkpoint(self) -> Checkpoint | None:
        """Write a checkpoint now and commit its offsets (None: nothing new to write)."""
        self._require_learner()
        return await self.checkpointer.checkpoint(self._consumer)

    async def rollback(self, version: int) -> Checkpoint | None:
        """Go back to retained checkpoint `version`'s model, saved as a new, higher version."""
        self._require_learner()
        try:
            return await self.checkpointer.rollback(version, self._consumer)
        except CheckpointError as exc:
            raise VersionUnusable(f"checkpoint version {version} is unusable: {exc}") from exc

    async def pin(self, version: int) -> dict[str, Any]:
        """Serve stored `version` until unpinned (VersionNotFound if not stored)."""
        self._require_learner()
        return await self.checkpointer.pin(version)

    async def unpin(self) -> dict[str, Any]:
        self._require_learner()
        return await self.checkpointer.unpin()

    @property
    def _consumer(self) -> AIOKafkaConsumer | None:
        return self._session.consumer if self._session else None

    def checkpoint_info(self) -> dict[str, Any] | None:
        return self.checkpointer.info()

    def prequential(self) -> dict[str, Any]:
        learner = self.learner.learner
        if learner is None:
            return PrequentialWindow(task=Task.of(self.settings)).metrics()
        return learner.prequential.metrics()

    def history(self) -> dict[str, Any]:
        learner = self.learner.learner
        if learner is None:
            return {"every": None, "points": [], "events": []}
        history = dict(learner.history.state())
        challenger = self.learner.challenger
        if challenger is not None:
            history["model"] = learner.plan.spec
            history["challenger"] = {
                "model": challenger.plan.spec,
                "points": list(challenger.history.points),
            }
        return history

    def challenger_info(self) -> dict[str, Any] | None:
        """The challenger's spec and prequential metrics (None without CHALLENGER_MODEL)."""
        challenger = self.learner.challenger
        if challenger is None:
            return None
        return {
            "model": challenger.plan.spec,
            "samples_trained": challenger.samples_trained,
            "prequential": challenger.prequential.metrics(),
        }

    def challenger_snapshot(self) -> ModelSnapshot | None:
        """The challenger's live model (label `challenger`); None without one."""
        return self.challenger_live.current if self.learner.challenger is not None else None

    def not_ready_reason(self) -> str:
        return self.status.last_error or "loading model"

    def serving_info(self) -> dict[str, Any] | None:
        return self.promotion.info()

    def latest_snapshot(self) -> ModelSnapshot | None:
        """The live model (label `latest`): fresher than its checkpoint."""
        return self.live.current

    def trainer_status(self) -> dict[str, Any] | None:
        return self.status.as_dict()

    def drift_summary(self) -> dict[str, Any] | None:
        learner = self.learner.learner
        return self.drift.summary(learner.history.events) if learner is not None else None

    def lag_rows(self) -> list[dict[str, Any]]:
        return self.lag.rows(self._consumer)

    def lag_status(self) -> str | None:
        return self.lag.worst()
