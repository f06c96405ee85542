"""Commits: the one way streamfit commits a consumer group's offsets."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import OffsetAndMetadata

COMMIT_TIMEOUT_S = 10.0


async def commit_offsets(
    consumer: AIOKafkaConsumer,
    offsets: Mapping[TopicPartition, int],
    timeout_s: float = COMMIT_TIMEOUT_S,
) -> None:
    """Commit `offsets` (the next offset to read, per partition) for the consumer's group.

    Raises KafkaError (refused) or TimeoutError (no answer in `timeout_s`): a commit that
    hangs must not hold the caller, whose checkpoint already holds the offsets.
    """
    if not offsets:
        return
    request = {tp: OffsetAndMetadata(offset, "") for tp, offset in offsets.items()}
    await asyncio.wait_for(consumer.commit(request), timeout=timeout_s)
