"""Fencing: one transactional producer per owned input partition (the follow loop's
transactional output).

A scorer in a consumer group writes the predictions of partition p, and commits p's offsets,
in transactions of the producer whose transactional id is `streamfit-score.<group>.<topic>.<p>`.
Whoever owns p holds the only live producer of that id: when the group moves p to another
scorer, the new owner's producer starts (InitProducerId) under the same id, which bumps the
producer epoch, aborts the old owner's open transaction and makes every later write, offset
commit or transaction commit of the old owner fail (ProducerFenced). A scorer that lost p
without knowing it (a long pause, a network split, a kill) can therefore never commit
predictions of p over its successor: read_committed readers see each input of p once.

This is Kafka Streams' first exactly-once design (one transactional id per input partition).
The later one (KIP-447: one producer per process, fenced by the group generation sent with
the offsets) needs `send_offsets_to_transaction` with the consumer's group metadata, which
aiokafka does not offer (it takes the group id only).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Collection, Mapping
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from service.scoring.output import AfterWrite, TransactionMode, track_topics, write_all
from service.scoring.predictions import PartitionOutput

log = logging.getLogger(__name__)

Opener = Callable[
    [dict[str, Any], str, str, TransactionMode], Awaitable[tuple[AIOKafkaProducer, bool]]
]


def transactional_id(group_id: str, tp: TopicPartition) -> str:
    """The transactional id of input partition `tp` for scorer group `group_id`.

    >>> transactional_id("scorers", TopicPartition("events", 3))
    'streamfit-score.scorers.events.3'
    """
    return f"streamfit-score.{group_id}.{tp.topic}.{tp.partition}"


class PartitionTransactions:
    """The transactional producers of the partitions this scorer owns, one per partition.

    `acquire` (on assignment) starts them, fencing the previous owner of each; `release` (on
    revocation, after the batch in flight is committed) stops them; `publish` commits one
    transaction per partition of a batch: its predictions, its dead letters and its next
    offset for the group.
    """

    transactional = True

    def __init__(
        self,
        client_options: dict[str, Any],
        group_id: str,
        topics: list[str],
        open_producer: Opener,
        after_write: AfterWrite | None = None,
    ) -> None:
        self.client_options = client_options
        self.group_id = group_id
        self.topics = topics  # the output and dead-letter topics, kept in metadata
        self.open_producer = open_producer
        self.after_write = after_write
        self._producers: dict[TopicPartition, AIOKafkaProducer] = {}

    @property
    def owned(self) -> set[TopicPartition]:
        return set(self._producers)

    async def acquire(self, partitions: Collection[TopicPartition]) -> None:
        """Start a producer for each partition; InitProducerId fences its previous owner."""
        for tp in partitions:
            if tp in self._producers:
                continue
            producer, _ = await self.open_producer(
                self.client_options,
                "streamfit-scorer",
                transactional_id(self.group_id, tp),
                "on",
            )
            await track_topics(producer, self.topics)
            self._producers[tp] = producer
            log.info(
                "transactional producer started (the previous owner is fenced)",
                extra={"transactional_id": transactional_id(self.group_id, tp)},
            )

    async def release(self, partitions: Collection[TopicPartition]) -> None:
        """Stop the producers of partitions given up (their batches are committed)."""
        for tp in partitions:
            producer = self._producers.pop(tp, None)
            if producer is not None:
                await producer.stop()

    async def publish(
        self, consumer: AIOKafkaConsumer, parts: Mapping[TopicPartition, PartitionOutput]
    ) -> None:
        """One transaction per partition; a failed one (ProducerFenced: the partition has a
        new owner) is aborted and raised, the others stand."""
        results = await asyncio.gather(
            *(self._commit(tp, part) for tp, part in parts.items()), return_exceptions=True
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result

    async def _commit(self, tp: TopicPartition, part: PartitionOutput) -> None:
        producer = self._producers.get(tp)
        if producer is None:
            raise LookupError(f"no transactional producer for {tp.topic}:{tp.partition}")
        async with producer.transaction():
            await write_all(producer, part.messages, self.after_write)
            await producer.send_offsets_to_transaction({tp: part.next_offset}, self.group_id)

    async def stop(self) -> None:
        await self.release(list(self._producers))
