"""Follow loop: scores every new record of a topic for a consumer group until stopped.

`streamfit score --follow` and the `scorer` role. The loop is one asyncio task over an
aiokafka consumer subscribed with the group: poll a batch, score it with the served model
(off the event loop), publish it (predictions, dead letters and the batch's offsets, exactly
once: `PartitionTransactions` or `WriteThenCommit`), repeat. The model is whatever the
`CheckpointFollower` serves: the version the trainer's serve decision names, reloaded as it
changes, so a batch is scored by one version and says which.

Partitions move between the scorers of a group only between batches: the rebalance listener
(`Handover`) waits for the batch in flight to be committed before it gives partitions up, and
acquires new ones (fencing their previous owner's transactions) before any of their records
is scored.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError, ProducerFenced

from service import metrics
from service.codec import Codec
from service.kafka.clients import new_consumer
from service.kafka.topics import ensure_topic, topic_partitions
from service.scoring.errors import ScoringError
from service.scoring.fencing import PartitionTransactions
from service.scoring.output import AfterWrite, TransactionMode, WriteThenCommit, open_producer
from service.scoring.predictions import PartitionOutput, ScoredBatch, codec_for, score_records
from service.serving.snapshot import ModelSnapshot, SnapshotHolder
from service.settings import Settings

log = logging.getLogger(__name__)

POLL_MS = 200
RETRY_S = 1.0
STOP_TIMEOUT_S = 20.0


@dataclass(frozen=True)
class ScoreJob:
    """What a scorer scores: the input topic for a group, into an output topic."""

    topic: str
    group_id: str
    output_topic: str
    dead_letter_topic: str
    transactions: TransactionMode = "auto"
    batch_size: int = 256

    @classmethod
    def of(
        cls,
        settings: Settings,
        topic: str | None = None,
        group_id: str | None = None,
        output_topic: str | None = None,
        transactions: TransactionMode | None = None,
        batch_size: int | None = None,
    ) -> ScoreJob:
        """The job named by arguments, else by the SCORE_ settings (the `scorer` role)."""
        topic = topic or settings.score_topic
        group_id = group_id or settings.score_group_id
        if not topic or not group_id:
            raise ValueError("a scorer needs an input topic and a consumer group")
        return cls(
            topic=topic,
            group_id=group_id,
            output_topic=output_topic or settings.score_output_topic or f"{topic}.predictions",
            dead_letter_topic=settings.dlq_topic or f"{topic}.dlq",
            transactions=transactions or settings.score_transactions,
            batch_size=batch_size or settings.batch_size,
        )


class Writer(Protocol):
    """Publishes a batch exactly once; told when partitions arrive and leave."""

    transactional: bool

    async def acquire(self, partitions: Collection[TopicPartition]) -> None: ...

    async def release(self, partitions: Collection[TopicPartition]) -> None: ...

    async def publish(
        self, consumer: AIOKafkaConsumer, parts: Mapping[TopicPartition, PartitionOutput]
    ) -> None: ...

    async def stop(self) -> None: ...


class ScoreLag:
    """`streamfit_score_lag{group,topic,partition}` of the partitions this scorer owns:
    the log end (high watermark, or last stable offset under read_committed) minus the
    position, which after each batch is the group's committed offset."""

    def __init__(self, group_id: str, read_committed: bool) -> None:
        self.group_id = group_id
        self.read_committed = read_committed
        self.rows: dict[TopicPartition, int] = {}

    async def update(
        self, consumer: AIOKafkaConsumer, partitions: Collection[TopicPartition]
    ) -> None:
        for tp in partitions:
            end = consumer.last_stable_offset(tp) if self.read_committed else None
            end = end if end is not None and end >= 0 else consumer.highwater(tp)
            if end is None:
                continue
            lag = max(int(end) - await consumer.position(tp), 0)
            self.rows[tp] = lag
            metrics.SCORE_LAG.labels(self.group_id, tp.topic, str(tp.partition)).set(lag)

    def forget(self, partitions: Collection[TopicPartition]) -> None:
        for tp in partitions:
            if self.rows.pop(tp, None) is not None:
                with contextlib.suppress(KeyError):
                    metrics.SCORE_LAG.remove(self.group_id, tp.topic, str(tp.partition))


class Handover(ConsumerRebalanceListener):
    """Moves partitions between scorers only between batches (built from the state it
    touches, as aiokafka's local-state example builds its listener)."""

    def __init__(
        self,
        consumer: AIOKafkaConsumer,
        in_flight: asyncio.Lock,
        owned: set[TopicPartition],
        writer: Writer,
        lag: ScoreLag,
    ) -> None:
        self.consumer = consumer
        self.in_flight = in_flight
        self.owned = owned
        self.writer = writer
        self.lag = lag
        # aiokafka logs and swallows a listener's exception: the loop raises it instead.
        self.error: BaseException | None = None

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        if not revoked:
            return
        # The batch in flight is published (and its offsets committed) before the next owner
        # reads the committed offsets; then nothing of these partitions is scored here.
        async with self.in_flight:
            self.owned.difference_update(revoked)
            await self.writer.release(revoked)
            self.lag.forget(revoked)
        log.info("partitions revoked", extra={"partitions": _names(revoked)})

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        if not assigned:
            return
        # Paused until their producers exist: records aiokafka fetches meanwhile wait.
        self.consumer.pause(*assigned)
        try:
            await self.writer.acquire(assigned)
            self.owned.update(assigned)
        except Exception as exc:
            self.error = exc
            raise
        finally:
            self.consumer.resume(*assigned)
        log.info("partitions assigned", extra={"partitions": _names(assigned)})


class StreamScorer:
    """Scores `job.topic` for `job.group_id` with the model `snapshots` holds, until `stop()`.

    `start()` opens the output and starts the loop task, which waits for a model, then
    subscribes. `stop()` lets the batch in flight finish and commit, then leaves the group.
    If the loop fails, `finished` completes with its error.
    """

    def __init__(
        self,
        settings: Settings,
        job: ScoreJob,
        snapshots: SnapshotHolder,
        after_write: AfterWrite | None = None,
    ) -> None:
        self.settings = settings
        self.job = job
        self.snapshots = snapshots
        self.after_write = after_write
        self.scored = 0
        self.rejected: Counter[str] = Counter()
        self.last_error: str | None = None
        self.subscribed = False
        self.owned: set[TopicPartition] = set()
        self._in_flight = asyncio.Lock()
        self._stopping = asyncio.Event()
        self._codec: tuple[int, Codec] | None = None
        self._writer: Writer | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self.lag: ScoreLag | None = None

    @property
    def finished(self) -> asyncio.Task[None]:
        assert self._task is not None, "start() first"
        return self._task

    @property
    def transactional(self) -> bool:
        return self._writer is not None and self._writer.transactional

    async def start(self) -> None:
        self._writer = await self._open_writer()
        self.lag = ScoreLag(self.job.group_id, self._writer.transactional)
        self._task = asyncio.create_task(self._run(), name="streamfit-scorer")

    async def stop(self) -> None:
        """Finish the batch in flight (published and committed), leave the group, close."""
        self._stopping.set()
        if self._task is not None and not self._task.done():
            try:
                await asyncio.wait_for(asyncio.shield(self._task), STOP_TIMEOUT_S)
            except TimeoutError:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
            except Exception:  # reported by whoever awaits `finished`
                pass
        if self._consumer is not None:
            await self._consumer.stop()  # leaves the group: its partitions move at once
        if self._writer is not None:
            await self._writer.stop()

    def status(self) -> dict[str, Any]:
        """What `/readyz` shows of the loop."""
        return {
            "topic": self.job.topic,
            "group_id": self.job.group_id,
            "output_topic": self.job.output_topic,
            "transactional": self.transactional,
            "subscribed": self.subscribed,
            "partitions": sorted(tp.partition for tp in self.owned),
            "scored": self.scored,
            "rejected": dict(self.rejected),
            "lag": sum(self.lag.rows.values()) if self.lag else None,
            "last_error": self.last_error,
        }

    async def _open_writer(self) -> Writer:
        """Transactions if the broker has them (per `job.transactions`), else write-then-commit.

        The probe starts a producer under the group's own transactional id (the one the
        batch run uses); in follow mode the writes go through per-partition ids.
        """
        options = self.settings.kafka_client_options()
        producer, transactional = await open_producer(
            options,
            "streamfit-scorer",
            f"streamfit-score.{self.job.group_id}.{self.job.topic}",
            self.job.transactions,
        )
        if not transactional:
            topics = [self.job.output_topic, self.job.dead_letter_topic]
            return WriteThenCommit(producer, self.after_write, topics)
        await producer.stop()
        return PartitionTransactions(
            options,
            self.job.group_id,
            [self.job.output_topic, self.job.dead_letter_topic],
            open_producer,
            self.after_write,
        )

    async def _ensure_output_topic(self, consumer: AIOKafkaConsumer) -> None:
        """The output topic, with as many partitions as the input (one if it is not there),
        before any producer looks it up (a broker may auto-create it otherwise)."""
        try:
            partitions = len(await topic_partitions(consumer, self.job.topic))
            await ensure_topic(
                self.settings.kafka_client_options(), self.job.output_topic, max(partitions, 1)
            )
        except Exception as exc:  # best effort: brokers that auto-create topics still work
            log.warning(
                "could not create the output topic; relying on auto-creation",
                extra={"topic": self.job.output_topic, "error": f"{type(exc).__name__}: {exc}"},
            )

    async def _run(self) -> None:
        assert self._writer is not None and self.lag is not None
        while self.snapshots.current is None:  # nothing is read before there is a model
            if self._stopping.is_set():
                return
            await asyncio.sleep(0.2)
        s = self.settings
        consumer = new_consumer(
            s.kafka_client_options(),
            client_id="streamfit-scorer",
            group_id=self.job.group_id,
            session_timeout_ms=s.session_timeout_ms,
            heartbeat_interval_ms=max(s.session_timeout_ms // 5, 100),
            group_instance_id=s.group_instance_id,
            isolation_level="read_committed" if self._writer.transactional else "read_uncommitted",
            max_poll_records=self.job.batch_size,
            fetch_max_wait_ms=100,
        )
        self._consumer = consumer
        await consumer.start()
        await self._ensure_output_topic(consumer)
        handover = Handover(consumer, self._in_flight, self.owned, self._writer, self.lag)
        consumer.subscribe([self.job.topic], listener=handover)
        self.subscribed = True
        log.info(
            "scoring",
            extra={
                "topic": self.job.topic,
                "group_id": self.job.group_id,
                "output_topic": self.job.output_topic,
                "transactional": self._writer.transactional,
            },
        )
        while not self._stopping.is_set():
            try:
                batches = await consumer.getmany(
                    timeout_ms=POLL_MS, max_records=self.job.batch_size
                )
            except KafkaError as exc:  # e.g. a failed group join: aiokafka joins again
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("polling failed; retrying", extra={"error": self.last_error})
                await asyncio.sleep(RETRY_S)
                continue
            if handover.error is not None:
                raise ScoringError(
                    f"cannot take over partitions: {type(handover.error).__name__}: "
                    f"{handover.error}"
                ) from handover.error
            async with self._in_flight:
                records = [r for tp, part in batches.items() if tp in self.owned for r in part]
                if records:
                    await self._score(consumer, records)
            await self.lag.update(consumer, [tp for tp in batches if tp in self.owned])

    async def _score(self, consumer: AIOKafkaConsumer, records: list[Any]) -> None:
        """Score and publish one batch; on a Kafka failure, rewind it to be scored again."""
        assert self._writer is not None
        snapshot = self.snapshots.current
        assert snapshot is not None
        firsts: dict[TopicPartition, int] = {}
        nexts: dict[TopicPartition, int] = {}
        for record in records:
            tp = TopicPartition(record.topic, record.partition)
            firsts.setdefault(tp, record.offset)
            nexts[tp] = record.offset + 1
        started = time.perf_counter()
        scored = await asyncio.to_thread(
            score_records,
            self._codec_for(snapshot),
            snapshot,
            records,
            self.job.output_topic,
            self.job.dead_letter_topic,
        )
        try:
            await self._writer.publish(consumer, scored.by_partition(nexts))
        except (KafkaError, TimeoutError, LookupError) as exc:
            self.last_error = f"{type(exc).__name__}: {exc}"
            log.warning(
                "batch not published; scoring it again",
                extra={"error": self.last_error, "partitions": _names(list(firsts))},
            )
            if isinstance(exc, ProducerFenced):
                await self._writer.release(list(firsts))  # another scorer owns them now
            for tp, offset in firsts.items():
                if tp in consumer.assignment():
                    consumer.seek(tp, offset)
            await asyncio.sleep(RETRY_S)
            return
        self.last_error = None
        self._count(scored, time.perf_counter() - started)

    def _codec_for(self, snapshot: ModelSnapshot) -> Codec:
        """The codec of the served version's model (rebuilt when the version changes)."""
        if self._codec is None or self._codec[0] != snapshot.version:
            self._codec = (snapshot.version, codec_for(self.settings, snapshot))
        return self._codec[1]

    def _count(self, scored: ScoredBatch, seconds: float) -> None:
        predictions = len(scored.batch.records)
        self.scored += predictions
        metrics.RECORDS_SCORED.inc(predictions)
        for reject in scored.batch.rejects:
            self.rejected[reject.reason] += 1
            metrics.RECORDS_REJECTED.labels(reason=reject.reason).inc()
        if scored.batch.rejects:
            log.warning(
                "records sent to the dead-letter topic",
                extra={
                    "count": len(scored.batch.rejects),
                    "topic": self.job.dead_letter_topic,
                    "first_error": scored.batch.rejects[0].detail,
                },
            )
        log.debug(
            "batch scored",
            extra={"records": predictions, "version": scored.model_version, "seconds": seconds},
        )


def _names(partitions: list[TopicPartition]) -> list[str]:
    return [f"{tp.topic}:{tp.partition}" for tp in partitions]
