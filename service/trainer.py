"""Trainer: the consumer task that moves records from Kafka through the learner to checkpoints.

One asyncio task owns the aiokafka consumer. Per mini-batch it decodes (codec), sends rejects
to the dead-letter topic, and hands the good rows to the learner on a single worker thread, so
the event loop keeps heartbeats, HTTP and the consumer alive. Offsets advance in memory only
after the learner has learned a batch; they reach Kafka only after a checkpoint holding them is
on disk (exactly-once effect, SPEC.md "Training semantics"). Any failure in a batch rewinds the
consumer to the learned offsets, so nothing is skipped or learned twice.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.structs import OffsetAndMetadata

from service import metrics
from service.checkpoints import Checkpoint, CheckpointStore, offset_key, parse_offset_key
from service.codec import Codec, DecodedBatch, Reject
from service.drift import DriftDetector, DriftPolicy
from service.feedback import PendingPredictions
from service.lag_health import LagHealth, LagStatus
from service.producer import ensure_topic
from service.serving import SnapshotHolder, snapshot_from_learner
from service.settings import Settings

log = logging.getLogger(__name__)

RECONNECT_BACKOFF_S = (0.5, 1.0, 2.0, 5.0)
PIPELINE_DEPTH = 2  # decoded batches queued for the learner thread
REFILL_WAIT_MS = 20  # with batches in flight, how long a poll waits for the next fetch
LAG_UPDATE_INTERVAL_S = 0.25
FETCH_BYTES_PER_RECORD = 64  # a conservative record size (a SUSY CSV record is ~200 bytes)


@dataclass
class _InFlight:
    """A batch being learned on the worker thread, and what it advances once learned."""

    future: asyncio.Future[None]
    batches: dict[TopicPartition, list[Any]]
    used: list[str]


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, trainer: Trainer) -> None:
        self._trainer = trainer

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        await self._trainer._on_revoked(list(revoked))

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        await self._trainer._on_assigned(list(assigned))


class Trainer:
    """Consumes the train topic into a Learner and checkpoints it; publishes snapshots."""

    def __init__(
        self,
        settings: Settings,
        snapshots: SnapshotHolder,
        pending: PendingPredictions | None = None,
    ) -> None:
        self.settings = settings
        self.snapshots = snapshots
        self.pending = pending
        self.store = CheckpointStore(settings.checkpoint_dir, settings.checkpoint_keep)
        self.codec = Codec(
            settings.num_features, settings.message_format, settings.max_record_bytes
        )
        self.learner: Any = None
        self.version = 0
        self.checkpoint_meta: dict[str, Any] | None = None
        self.offsets: dict[TopicPartition, int] = {}
        self.committed: dict[TopicPartition, int] = {}
        self.state = "starting"
        self.kafka_connected = False
        self.last_error: str | None = None
        self.paused = False
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._train_thread = ThreadPoolExecutor(1, thread_name_prefix="streamfit-learn")
        self._io_thread = ThreadPoolExecutor(1, thread_name_prefix="streamfit-checkpoint")
        self._decode_thread = ThreadPoolExecutor(1, thread_name_prefix="streamfit-decode")
        self._batch_lock = asyncio.Lock()
        self._checkpoint_lock = asyncio.Lock()
        self._learned_since_checkpoint = False
        self._rolled_back_to: int | None = None
        self._last_checkpoint = time.monotonic()
        self._last_record = time.monotonic()
        self._last_publish = 0.0
        self._unpublished = False
        self._stopping = asyncio.Event()
        self._uncommitted: dict[TopicPartition, int] | None = None
        self._task: asyncio.Task[None] | None = None
        self._inflight: deque[_InFlight] = deque()
        self._lag_updated = 0.0
        self.drift = DriftDetector(threshold=settings.drift_threshold)
        self.drift_policy = DriftPolicy(settings.drift_policy)
        self._rollback_before: int | None = None
        self.lag_health = LagHealth()
        self._last_timestamp: dict[TopicPartition, int] = {}
        self._heap_frozen = False

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Restore the newest checkpoint, publish a model, start consuming in the background."""
        await self._in_learner_thread(self._restore)
        self._task = asyncio.create_task(self._run(), name="streamfit-trainer")

    async def stop(self) -> None:
        """Stop fetching, finish the batch in flight, checkpoint, commit, leave the group."""
        self._stopping.set()
        if self._task is not None:
            await self._task
        self._train_thread.shutdown(wait=True)
        self._io_thread.shutdown(wait=True)
        self._decode_thread.shutdown(wait=True)

    async def _in_learner_thread(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._train_thread, fn, *args)

    def _restore(self) -> None:
        from service.learner import Learner  # TensorFlow loads here, off the event loop

        s = self.settings
        self.learner = Learner(
            s.num_features, s.model_arch, s.learning_rate, s.seed, threads=s.tf_threads
        )
        checkpoint = self.store.latest()
        if checkpoint is not None:
            self.learner.restore(checkpoint.state)
            self._restore_drift(checkpoint.state)
            self.version = checkpoint.version
            self.checkpoint_meta = checkpoint.metadata()
            self.offsets = {
                TopicPartition(*parse_offset_key(k)): v for k, v in checkpoint.offsets.items()
            }
            metrics.CHECKPOINT_TIMESTAMP.set(checkpoint.created_at)
            log.info(
                "restored checkpoint",
                extra={
                    "version": checkpoint.version,
                    "samples_trained": self.learner.samples_trained,
                    "offsets": checkpoint.offsets,
                },
            )
        # A new run numbers its checkpoints above anything on disk, even unreadable files.
        self.version = max(self.version, self.store.newest_version())
        self._publish()
        self._update_learning_metrics()

    def _restore_drift(self, state: dict[str, Any]) -> None:
        if "drift" in state:
            try:
                self.drift.restore(state["drift"])
            except (KeyError, TypeError, ValueError):
                log.warning("drift detector state unreadable; starting it afresh")

    def _publish(self) -> None:
        self.snapshots.publish(snapshot_from_learner(self.learner, self.version))
        metrics.MODEL_VERSION.set(self.version)

    def _update_learning_metrics(self) -> None:
        accuracy = self.learner.prequential.accuracy
        if accuracy is not None:
            metrics.PREQUENTIAL_ACCURACY.set(accuracy)
            metrics.PREQUENTIAL_LOSS.set(self.learner.prequential.loss)
        if self.learner.last_loss is not None:
            metrics.TRAIN_LOSS.set(self.learner.last_loss)

    # -- the consumer task -----------------------------------------------------------------

    async def _run(self) -> None:
        attempt = 0
        while not self._stopping.is_set() and self.state != "finished":
            try:
                await self._consume()
                attempt = 0
            except (KafkaError, OSError) as exc:
                self._set_disconnected(exc)
                delay = RECONNECT_BACKOFF_S[min(attempt, len(RECONNECT_BACKOFF_S) - 1)]
                attempt += 1
                log.warning(
                    "kafka unavailable, retrying", extra={"error": str(exc), "retry_in_s": delay}
                )
                try:
                    await asyncio.wait_for(self._stopping.wait(), timeout=delay)
                except TimeoutError:
                    pass
            except Exception as exc:  # a bug must not kill serving; it shows in /readyz
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.exception("trainer failed")
                self.state = "failed"
                return
        if self.state != "finished":
            self.state = "stopped"
        metrics.TRAINING_ACTIVE.set(0)

    def _set_disconnected(self, exc: BaseException) -> None:
        self.kafka_connected = False
        self.last_error = f"{type(exc).__name__}: {exc}"
        metrics.KAFKA_CONNECTED.set(0)

    def _consumer_options(self) -> dict[str, Any]:
        s = self.settings
        return {
            **s.kafka_client_options(),
            "group_id": s.group_id,
            "client_id": "streamfit-trainer",
            "enable_auto_commit": False,
            # A dead member's partitions move after this long; Tansu also waits about half
            # of it for members when a group forms.
            "session_timeout_ms": s.session_timeout_ms,
            # Static membership (KIP-345): a restarted pod with the same id takes its
            # partitions back without waiting for its old session to expire.
            "group_instance_id": s.group_instance_id,
            "heartbeat_interval_ms": max(s.session_timeout_ms // 5, 100),
            "auto_offset_reset": "earliest",
            "max_poll_records": s.batch_size,
            "fetch_max_bytes": 64 * 1024 * 1024,
            "max_partition_fetch_bytes": 8 * 1024 * 1024,
            # aiokafka keeps one fetch in flight per broker, and leaves out partitions that
            # still have buffered records; a fetch for caught-up partitions then long-polls,
            # and a partition that needs more records waits for it to end. 100 ms (not 500)
            # bounds that wait; measured: the last records of a backlog sat 420 ms.
            "fetch_max_wait_ms": 100,
            # On a live stream, let the broker gather about a batch (or wait out the 100 ms)
            # rather than answer every fetch with a handful of records: fewer, fuller
            # training steps leave more of the two cores and the GIL to HTTP.
            "fetch_min_bytes": s.batch_size * FETCH_BYTES_PER_RECORD,
        }

    async def _consume(self) -> None:
        s = self.settings
        consumer = AIOKafkaConsumer(**self._consumer_options())
        producer = AIOKafkaProducer(
            **s.kafka_client_options(), client_id="streamfit-dead-letter", acks="all", linger_ms=5
        )
        topics = [s.train_topic, *([s.labels_topic] if s.labels_topic else [])]
        consumer.subscribe(topics, listener=_Rebalance(self))
        # Set before start(): the first rebalance can run inside start(), and the rebalance
        # listener seeks through self._consumer.
        self._consumer, self._producer = consumer, producer
        try:
            await self._ensure_side_topics()
            await consumer.start()
            await producer.start()
            self.kafka_connected, self.last_error = True, None
            metrics.KAFKA_CONNECTED.set(1)
            metrics.TRAINING_ACTIVE.set(1)
            self.state = "paused" if self.paused else "running"
            self._last_record = time.monotonic()
            log.info("consuming", extra={"topic": s.train_topic, "group_id": s.group_id})
            probe = asyncio.create_task(self._probe_kafka(consumer))
            try:
                await self._loop(consumer)
            finally:
                probe.cancel()
        finally:
            self._consumer = None
            if (
                self.learner is not None
                and not self._stopping.is_set()
                and self.state != "finished"
            ):
                # Leaving on an error: keep what was learned, committing if Kafka allows.
                await self._checkpoint_quietly(consumer)
            await self._close(consumer, producer)

    async def _ensure_side_topics(self) -> None:
        s = self.settings
        for name in (s.dead_letter_topic, s.labels_topic):
            if name:
                try:
                    await ensure_topic(s.kafka_client_options(), name, 1)
                except (KafkaError, RuntimeError) as exc:  # e.g. no create permission
                    log.warning("cannot create topic", extra={"topic": name, "error": str(exc)})

    async def _probe_kafka(self, consumer: AIOKafkaConsumer) -> None:
        """Ask Kafka for metadata every second: a cut or a hung broker shows within seconds."""
        while True:
            await asyncio.sleep(1.0)
            try:
                await asyncio.wait_for(consumer.topics(), timeout=3.0)
            except (KafkaError, OSError, TimeoutError) as exc:
                if not isinstance(exc, TimeoutError) or str(exc):
                    self._set_disconnected(exc)
                else:
                    self._set_disconnected(TimeoutError("no metadata from Kafka within 3 s"))
            else:
                if not self.kafka_connected:
                    log.info("kafka reachable again")
                    if self.last_error and not self.last_error.startswith("checkpoint"):
                        self.last_error = None
                self.kafka_connected = True
                metrics.KAFKA_CONNECTED.set(1)

    async def _loop(self, consumer: AIOKafkaConsumer) -> None:
        s = self.settings
        while not self._stopping.is_set():
            if self.paused:
                consumer.pause(*consumer.assignment())
            else:
                consumer.resume(*consumer.assignment())
            # The pipeline full: take only what is buffered, settling must not wait. Partly
            # full: wait briefly for the fetch in flight (aiokafka refills its buffer only once
            # it is empty, so an instant poll often finds nothing while records are on the way);
            # draining the pipeline then would leave the learner idle for a fetch and a decode.
            if len(self._inflight) >= PIPELINE_DEPTH:
                wait_ms = 0
            elif self._inflight:
                wait_ms = REFILL_WAIT_MS
            else:
                wait_ms = 200
            batches = await consumer.getmany(timeout_ms=wait_ms, max_records=s.batch_size)
            if self._uncommitted is not None and (
                time.monotonic() - self._last_checkpoint >= s.checkpoint_interval_s
            ):
                self._last_checkpoint = time.monotonic()
                await self._commit(consumer, self._uncommitted)
            if self.paused and batches:  # paused while the fetch was in flight
                self._put_back(consumer, batches)
                batches = {}
            if any(batches.values()):
                self._last_record = time.monotonic()
                if not self.kafka_connected:  # records arriving: Kafka answers again
                    self.kafka_connected = True
                    metrics.KAFKA_CONNECTED.set(1)
                # Decoding overlaps with the previous batch learning on the worker thread.
                decoded, used = await self._decode(batches)
                if self.paused:  # paused while decoding
                    self._put_back(consumer, batches)
                    continue
                async with self._batch_lock:
                    # Up to PIPELINE_DEPTH batches queue for the worker thread, so it never
                    # waits for the event loop between batches.
                    while len(self._inflight) >= PIPELINE_DEPTH:
                        await self._settle_oldest(consumer)
                    try:
                        if decoded.rejects:
                            await self._dead_letter(decoded.rejects)
                    except BaseException:
                        for tp, part in batches.items():
                            self._rewind(consumer, tp, part[0].offset)
                        raise
                    self._inflight.append(_InFlight(self._submit(decoded), batches, used))
            elif len(self._inflight) >= PIPELINE_DEPTH:
                async with self._batch_lock:
                    await self._settle_oldest(consumer)
            elif self._inflight:  # no record for REFILL_WAIT_MS: the stream is idle
                async with self._batch_lock:
                    await self._settle(consumer)
            elif self._unpublished:
                self._unpublished = False
                await self._in_learner_thread(self._publish_from_thread)
            if time.monotonic() - self._lag_updated >= LAG_UPDATE_INTERVAL_S:
                self._update_lag(consumer)
            if self._rollback_before is not None:
                await self._rollback_after_drift()
            if self._learned_since_checkpoint and (
                time.monotonic() - self._last_checkpoint >= s.checkpoint_interval_s
            ):
                await self.checkpoint(consumer)
            if (
                s.stream_timeout_ms >= 0
                and not self.paused
                and (time.monotonic() - self._last_record) * 1000 > s.stream_timeout_ms
            ):
                log.info("stream timeout: no record for %d ms, training ends", s.stream_timeout_ms)
                await self.checkpoint(consumer)
                self.state = "finished"
                return
        await self.checkpoint(consumer)

    async def _decode(
        self, batches: dict[TopicPartition, list[Any]]
    ) -> tuple[DecodedBatch, list[str]]:
        """Decode train records, and join label records with pending predictions.

        The codec runs on its own thread: its parse releases the GIL, so it overlaps with
        HTTP on the event loop as well as with the learner. The join stays on the loop (the
        pending predictions are the HTTP handlers' too)."""
        labels_topic = self.settings.labels_topic
        records = [r for tp, part in batches.items() if tp.topic != labels_topic for r in part]
        decoded = await asyncio.get_running_loop().run_in_executor(
            self._decode_thread, self.codec.decode, records
        )
        used: list[str] = []
        if labels_topic and self.pending is not None:
            label_records = [
                r for tp, part in batches.items() if tp.topic == labels_topic for r in part
            ]
            if label_records:
                feedback, used = self.pending.join(label_records)
                decoded = decoded.extended(feedback)
        return decoded, used

    def _submit(self, decoded: DecodedBatch) -> asyncio.Future[None]:
        """Start learning a decoded batch on the worker thread."""
        if not len(decoded):
            done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            done.set_result(None)
            return done
        return asyncio.get_running_loop().run_in_executor(self._train_thread, self._learn, decoded)

    async def _settle(self, consumer: AIOKafkaConsumer | None) -> None:
        """Wait for every batch in flight, in order. Hold _batch_lock."""
        while self._inflight:
            await self._settle_oldest(consumer)

    async def _settle_oldest(self, consumer: AIOKafkaConsumer | None) -> None:
        """Wait for the oldest batch in flight; once learned, its offsets advance."""
        inflight = self._inflight.popleft()
        try:
            await inflight.future
        except BaseException:
            if consumer is not None:
                for tp, part in inflight.batches.items():
                    self._rewind(consumer, tp, part[0].offset)
            raise
        for tp, part in inflight.batches.items():
            self.offsets[tp] = part[-1].offset + 1
            self._last_timestamp[tp] = part[-1].timestamp
        self._learned_since_checkpoint = True
        if inflight.used and self.pending is not None:
            self.pending.forget(inflight.used)

    def _put_back(
        self, consumer: AIOKafkaConsumer, batches: dict[TopicPartition, list[Any]]
    ) -> None:
        """Un-fetch records not handed to the learner: seek to their first offsets (not to the
        learned position, which batches still in flight are ahead of)."""
        for tp, part in batches.items():
            try:
                consumer.seek(tp, part[0].offset)
            except Exception:  # the consumer may be closing; a restart seeks from the checkpoint
                log.debug("put back failed", exc_info=True)

    def _rewind(self, consumer: AIOKafkaConsumer, tp: TopicPartition, first: int) -> None:
        """Seek back to the next offset not yet learned (`first` of the batch if unknown)."""
        try:
            consumer.seek(tp, self.offsets.get(tp, first))
        except Exception:  # the consumer may be closing; a restart seeks from the checkpoint
            log.debug("rewind failed", exc_info=True)

    def _learn(self, batch: DecodedBatch) -> None:
        started = time.perf_counter()
        result = self.learner.learn(batch.features, batch.labels)
        if self.drift_policy is not DriftPolicy.NONE:
            self._watch_drift(result.prequential_loss, result.samples)
        now = time.monotonic()
        if now - self._last_publish >= self.settings.snapshot_interval_s:
            self._publish_from_thread()
            self._last_publish = now
            self._unpublished = False
        else:
            self._unpublished = True  # published when the stream pauses (see _loop)
        if not self._heap_frozen:
            self._freeze_heap()
        metrics.TRAIN_BATCH_DURATION.observe(time.perf_counter() - started)
        metrics.SAMPLES_TRAINED.inc(result.samples)
        metrics.BATCHES_TRAINED.inc()
        self._update_learning_metrics()

    def _freeze_heap(self) -> None:
        """Once warm (TensorFlow imported, the step traced), move every live object out of the
        garbage collector's reach (`gc.freeze`). A full collection walks TensorFlow's ~400k
        objects in ~150 ms with the GIL held, stalling HTTP and the learner alike; frozen, it
        takes well under a millisecond. Done once, after the first learned batch."""
        self._heap_frozen = True
        started = time.perf_counter()
        gc.collect()
        gc.freeze()
        log.info(
            "heap frozen for the garbage collector",
            extra={
                "objects": gc.get_freeze_count(),
                "ms": round(1e3 * (time.perf_counter() - started)),
            },
        )

    def _watch_drift(self, mean_loss: float, count: int) -> None:
        """Feed the drift detector; carry out the policy when it fires (worker thread)."""
        samples = self.learner.samples_trained
        if not self.drift.update(mean_loss, samples=samples, count=count):
            return
        info = dict(self.drift.last_drift or {})
        policy = self.drift_policy.value
        self.learner.history.event(samples, "drift", policy=policy, **info)
        metrics.DRIFT_DETECTED.labels(policy).inc()
        log.warning("concept drift detected", extra={"policy": policy, **info})
        if self.drift_policy is DriftPolicy.RESET_OPTIMIZER:
            for variable in self.learner.optimizer.variables:
                if not variable.path.endswith("learning_rate"):
                    variable.assign(variable.numpy() * 0)
        elif self.drift_policy is DriftPolicy.ROLLBACK:
            self._rollback_before = int(info.get("onset", samples))

    async def _rollback_after_drift(self) -> None:
        """Roll back to the newest retained checkpoint from before the drift's onset."""
        onset, self._rollback_before = self._rollback_before, None
        assert onset is not None
        candidates = [
            int(e["version"])
            for e in self.store.manifest()["checkpoints"]
            if e.get("samples_trained") is not None and int(e["samples_trained"]) <= onset
        ]
        if not candidates:
            log.warning("drift: no retained checkpoint before the onset; keeping the model")
            return
        await self.rollback(max(candidates))

    def _publish_from_thread(self) -> None:
        self.snapshots.publish(snapshot_from_learner(self.learner, self.version))

    async def _dead_letter(self, rejects: list[Reject]) -> None:
        assert self._producer is not None
        topic = self.settings.dead_letter_topic
        futures = []
        for reject in rejects:
            record = reject.record
            headers = [
                ("error", f"{reject.reason}: {reject.detail}".encode()),
                ("source.topic", record.topic.encode()),
                ("source.partition", str(record.partition).encode()),
                ("source.offset", str(record.offset).encode()),
            ]
            value = record.value
            if value is not None and len(value) > 512 * 1024:
                headers.append(("original.bytes", str(len(value)).encode()))
                value = value[: 512 * 1024]
            if record.key is None and value is None:
                batch = self._producer.create_batch()
                batch.append(key=None, value=None, timestamp=None, headers=headers)
                batch.close()
                futures.append(await self._producer.send_batch(batch, topic, partition=0))
                continue
            futures.append(
                await self._producer.send(topic, value=value, key=record.key, headers=headers)
            )
        try:
            await asyncio.gather(*futures)
        except KafkaError:
            metrics.DEAD_LETTER_FAILURES.inc()
            raise
        for reject in rejects:
            metrics.RECORDS_REJECTED.labels(reason=reject.reason).inc()
        log.warning(
            "records sent to the dead-letter topic",
            extra={"count": len(rejects), "topic": topic, "first_error": rejects[0].detail},
        )

    # -- checkpoints and offsets -----------------------------------------------------------

    async def checkpoint(self, consumer: AIOKafkaConsumer | None = None) -> Checkpoint | None:
        """Write a checkpoint of what has been learned, then commit its offsets to Kafka."""
        consumer = consumer or self._consumer
        async with self._checkpoint_lock:
            async with self._batch_lock:
                await self._settle(consumer)
                if not self._learned_since_checkpoint and self.version > 0:
                    return None
                state = await self._in_learner_thread(self._state_for_checkpoint, self.version + 1)
                offsets = dict(self.offsets)
                self._learned_since_checkpoint = False
            version = self.version + 1
            checkpoint = Checkpoint(
                version=version,
                state=state,
                offsets={offset_key(tp.topic, tp.partition): o for tp, o in offsets.items()},
                extra={"group_id": self.settings.group_id, "rolled_back_to": self._rolled_back_to},
            )
            started = time.perf_counter()
            try:
                await asyncio.get_running_loop().run_in_executor(
                    self._io_thread, self.store.save, checkpoint
                )
            except OSError as exc:
                self._learned_since_checkpoint = True
                self.last_error = f"checkpoint failed: {exc}"
                metrics.CHECKPOINT_FAILURES.inc()
                log.error("checkpoint failed, offsets not committed", extra={"error": str(exc)})
                self._last_checkpoint = time.monotonic()
                return None
            metrics.CHECKPOINT_DURATION.observe(time.perf_counter() - started)
            self._rolled_back_to = None
            if self.last_error and self.last_error.startswith("checkpoint failed"):
                self.last_error = None
            metrics.CHECKPOINT_TIMESTAMP.set(checkpoint.created_at)
            self.version = version
            self.checkpoint_meta = checkpoint.metadata()
            self._last_checkpoint = time.monotonic()
            current = self.snapshots.current
            if current is not None:
                self.snapshots.publish(replace(current, version=version))
            metrics.MODEL_VERSION.set(version)
            log.info(
                "checkpoint written",
                extra={"version": version, "samples_trained": state["samples_trained"]},
            )
        if consumer is not None:
            await self._commit(consumer, offsets)
        return checkpoint

    async def rollback(self, version: int) -> Checkpoint | None:
        """Serve and keep learning from retained checkpoint `version`'s model.

        Weights, optimizer state, standardizer and counters return to that version; the
        consumer keeps its position (records since then are not learned again). The result is
        written as a new, higher version. Raises CheckpointError if `version` is not readable.
        """
        checkpoint = await asyncio.to_thread(self.store.load, version)
        async with self._batch_lock:
            await self._settle(self._consumer)
            await self._in_learner_thread(self._adopt, checkpoint.state, version)
            self._learned_since_checkpoint = True
            self._rolled_back_to = version
        log.warning("rolled back", extra={"to_version": version})
        return await self.checkpoint()

    def _state_for_checkpoint(self, version: int) -> dict[str, Any]:
        self.learner.history.event(self.learner.samples_trained, "checkpoint", version=version)
        self._publish_from_thread()  # the served model is never older than a checkpoint
        state = self.learner.state()
        state["drift"] = self.drift.state()
        return state

    def _adopt(self, state: dict[str, Any], version: int) -> None:
        samples_before = self.learner.samples_trained
        self.learner.restore(state)
        self._restore_drift(state)
        self.learner.history.event(
            self.learner.samples_trained,
            "rollback",
            to_version=version,
            from_samples=samples_before,
        )
        self._publish_from_thread()
        self._update_learning_metrics()

    async def _checkpoint_quietly(self, consumer: AIOKafkaConsumer) -> None:
        try:
            await self.checkpoint(consumer)
        except Exception:
            log.warning("checkpoint on disconnect failed", exc_info=True)

    async def _commit(self, consumer: AIOKafkaConsumer, offsets: dict[TopicPartition, int]) -> None:
        assigned = consumer.assignment()
        to_commit = {tp: OffsetAndMetadata(o, "") for tp, o in offsets.items() if tp in assigned}
        if not to_commit:
            return
        try:
            await asyncio.wait_for(consumer.commit(to_commit), timeout=10)
        except (KafkaError, TimeoutError) as exc:
            # The checkpoint stays the truth; retried from the loop until it goes through.
            log.warning("offset commit failed", extra={"error": str(exc)})
            self._uncommitted = dict(offsets)
            return
        self._uncommitted = None
        for tp, meta in to_commit.items():
            self.committed[tp] = meta.offset

    async def _on_assigned(self, assigned: list[TopicPartition]) -> None:
        """Start each partition after everything learned, by this model or by the group.

        This model's checkpoint offset is what it has learned; the group's committed offset
        is what some member has learned and checkpointed (commits follow checkpoints). The
        larger of the two is where learning resumes: a single trainer resumes exactly at its
        checkpoint (committed <= checkpoint), and after a handover between trainers no record
        is learned by two members.
        """
        consumer = self._consumer
        if consumer is None:
            return
        for tp in assigned:
            try:
                committed = await consumer.committed(tp)
            except KafkaError:
                committed = None
            if committed is not None:
                self.committed[tp] = committed
            learned = self.offsets.get(tp)
            key = offset_key(tp.topic, tp.partition)
            own = {e.get("offsets", {}).get(key) for e in self.store.manifest()["checkpoints"]}
            if committed is not None and committed > (learned or 0) and committed in own:
                # Our own newer checkpoint committed it, and that one is lost: relearn.
                committed = None
                if learned is None:
                    consumer.seek_to_beginning(tp)
            start = (
                max(o for o in (learned, committed) if o is not None)
                if (learned is not None or committed is not None)
                else None
            )
            if start is not None:
                self.offsets[tp] = start
                consumer.seek(tp, start)
        log.info(
            "partitions assigned",
            extra={"partitions": [f"{t.topic}:{t.partition}" for t in assigned]},
        )

    async def _on_revoked(self, revoked: list[TopicPartition]) -> None:
        if not revoked or self._consumer is None:
            return
        # The next owner starts from the committed offsets: make them what we learned.
        await self._checkpoint_quietly(self._consumer)
        for tp in revoked:
            self.lag_health.forget(tp)
        log.info(
            "partitions revoked",
            extra={"partitions": [f"{t.topic}:{t.partition}" for t in revoked]},
        )

    async def _close(self, consumer: AIOKafkaConsumer, producer: AIOKafkaProducer) -> None:
        for client in (consumer, producer):
            try:
                await asyncio.wait_for(client.stop(), timeout=10)
            except Exception:
                log.debug("client stop failed", exc_info=True)

    # -- what the API reads ----------------------------------------------------------------

    def _update_lag(self, consumer: AIOKafkaConsumer) -> None:
        self._lag_updated = time.monotonic()
        now = time.time()
        for tp in consumer.assignment():
            highwater = consumer.highwater(tp)
            position = self.offsets.get(tp)
            if highwater is None or position is None:
                continue
            labels = (tp.topic, str(tp.partition))
            metrics.CONSUMER_LAG.labels(*labels).set(max(highwater - position, 0))
            self.lag_health.observe(
                tp, position, highwater, now, self._last_timestamp.pop(tp, None)
            )
            health = self.lag_health.evaluate(tp, now)
            metrics.CONSUMER_LAG_SECONDS.labels(*labels).set(health["lag_seconds"] or 0.0)
            for status in LagStatus:
                metrics.CONSUMER_LAG_STATUS.labels(*labels, status.value).set(
                    1 if status.value == health["status"] else 0
                )

    def lag_by_partition(self) -> list[dict[str, Any]]:
        """Per assigned partition: committed offset, learned position, log end and lag."""
        consumer = self._consumer
        if consumer is None:
            return []
        rows = []
        for tp in sorted(consumer.assignment()):
            highwater = consumer.highwater(tp)
            position = self.offsets.get(tp, self.committed.get(tp))
            lag = None
            if highwater is not None:
                lag = max(highwater - (position or 0), 0)
            row = {
                "topic": tp.topic,
                "partition": tp.partition,
                "committed_offset": self.committed.get(tp),
                "position": position,
                "log_end_offset": highwater,
                "lag": lag,
                "status": None,
                "lag_seconds": None,
            }
            if tp in self.lag_health:
                health = self.lag_health.evaluate(tp, log_end=highwater)
                row["status"], row["lag_seconds"] = health["status"], health["lag_seconds"]
            rows.append(row)
        return rows

    def drift_summary(self) -> dict[str, Any]:
        """Policy, detections and drift points (from the learning history) for /model."""
        events = self.learner.history.events if self.learner is not None else []
        return {
            "policy": self.drift_policy.value,
            "detections": self.drift.detections,
            "points": [e for e in events if e.get("kind") == "drift"],
        }

    def status(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "paused": self.paused,
            "kafka_connected": self.kafka_connected,
            "last_error": self.last_error,
        }
