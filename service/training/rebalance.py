"""Rebalance: partitions assigned to and revoked from the trainer's consumer.

Built from the objects that own the state it touches (as aiokafka's local-state example builds
its listener from the state object): the positions (`PartitionOffsets`), the checkpoint
sequence (`Checkpointer`), the lag tracker, and the learner thread for history events.
"""

from __future__ import annotations

import logging

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError

from service import metrics
from service.kafka.reading import LogBounds, log_bounds
from service.training.checkpointing import Checkpointer
from service.training.lag_tracker import LagTracker
from service.training.learner_thread import LearnerThread
from service.training.offsets import PartitionOffsets, Resume

log = logging.getLogger(__name__)


class Rebalance(ConsumerRebalanceListener):
    """Resumes each assigned partition by the resume rule; checkpoints before a handover.

    `bounds_consumer` is a group-less consumer of its own, used to read where each assigned
    partition's log starts and ends, so a position that no longer fits the log is seen.

    aiokafka fetches a newly assigned partition from the group's committed offset while this
    listener still awaits, and `getmany` hands those records out: they would be learned, then
    fetched again after the seek. So assigned partitions stay paused (`positioning`) until
    they are seeked; a seek drops whatever was fetched before it.
    """

    def __init__(
        self,
        consumer: AIOKafkaConsumer,
        bounds_consumer: AIOKafkaConsumer,
        offsets: PartitionOffsets,
        checkpointer: Checkpointer,
        lag: LagTracker,
        learner: LearnerThread,
    ) -> None:
        self.consumer = consumer
        self.bounds_consumer = bounds_consumer
        self.offsets = offsets
        self.checkpointer = checkpointer
        self.lag = lag
        self.learner = learner
        self.positioning: set[TopicPartition] = set()

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        if not revoked:
            return
        # The next owner starts from the committed offsets: make them what this model learned.
        await self.checkpointer.checkpoint_quietly(self.consumer)
        for tp in revoked:
            self.lag.forget(tp)
        log.info("partitions revoked", extra={"partitions": _names(revoked)})

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        # Before the first await: nothing fetched from the old position reaches getmany.
        self.positioning.update(assigned)
        self.consumer.pause(*assigned)
        try:
            await self._position(list(assigned))
        finally:
            self.positioning.difference_update(assigned)
            self.consumer.resume(*assigned)
        log.info("partitions assigned", extra={"partitions": _names(assigned)})

    async def _position(self, assigned: list[TopicPartition]) -> None:
        """Seek each assigned partition to where the resume rule says."""
        bounds = await self._bounds(assigned)
        for tp in assigned:
            try:
                committed = await self.consumer.committed(tp)
            except KafkaError:
                committed = None
            resume = self.offsets.resume(
                tp, committed, self.checkpointer.own_commits(tp), bounds.get(tp)
            )
            if resume.offset is None:
                await self.consumer.seek_to_beginning(tp)
            else:
                self.consumer.seek(tp, resume.offset)
            if resume.reset is not None:
                await self._report_reset(tp, resume)

    async def _bounds(self, assigned: list[TopicPartition]) -> dict[TopicPartition, LogBounds]:
        """Each partition's log start and end; none (offsets trusted as they are) if Kafka
        does not answer, as a rebalance must not fail on it."""
        try:
            return await log_bounds(self.bounds_consumer, assigned)
        except (KafkaError, OSError) as exc:
            log.warning("cannot read the log bounds", extra={"error": str(exc)})
            return {}

    async def _report_reset(self, tp: TopicPartition, resume: Resume) -> None:
        assert resume.reset is not None
        reason = resume.reset.value
        details = {
            "topic": tp.topic,
            "partition": tp.partition,
            "reason": reason,
            "from_offset": resume.stale,
            "to_offset": resume.offset,
            "lost": resume.lost,
        }
        log.warning(
            "position does not fit the log: "
            + (
                "the log was replaced (topic recreated or truncated); learning restarts at "
                "the log start"
                if reason == "replaced"
                else "retention deleted records before they were learned; learning goes on "
                "from the log start"
            ),
            extra=details,
        )
        metrics.OFFSET_RESETS.labels(tp.topic, str(tp.partition), reason).inc()
        if resume.lost:
            metrics.RECORDS_LOST.labels(tp.topic, str(tp.partition)).inc(resume.lost)
        self.lag.rewound(tp)
        await self.learner.record_event("offset_reset", **details)


def _names(partitions: list[TopicPartition]) -> list[str]:
    return [f"{tp.topic}:{tp.partition}" for tp in partitions]
