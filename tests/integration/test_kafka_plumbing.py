"""Kafka plumbing on the real broker: where a log starts and ends, read as the resume rule needs."""

from __future__ import annotations

import asyncio

from aiokafka import TopicPartition

from service.kafka.clients import new_consumer
from service.kafka.reading import LogBounds, log_bounds
from tests.support import produce_synthetic


def test_log_bounds_end_at_the_high_watermark_and_leave_the_consumer_unassigned(broker, topic):
    """Tansu answers ListOffsets(latest) with the last batch's base offset; the bounds must be
    the high watermark (records produced in batches of many, so the two differ), an empty
    partition reads as (0, 0), and the reader prefetches nothing once done."""
    produce_synthetic(broker.bootstrap, topic, rows=1000, partitions=2, seed=1)
    empty = f"{topic}-empty"
    produce_synthetic(broker.bootstrap, empty, rows=0, partitions=1)

    async def read() -> tuple[dict[TopicPartition, LogBounds], dict[TopicPartition, int], int]:
        consumer = new_consumer({"bootstrap_servers": broker.bootstrap}, client_id="bounds-test")
        await consumer.start()
        try:
            tps = [TopicPartition(topic, 0), TopicPartition(topic, 1), TopicPartition(empty, 0)]
            consumer.assign(tps[:2])
            listed = await consumer.end_offsets(tps[:2])
            bounds = await log_bounds(consumer, tps)
            again = await log_bounds(consumer, tps[:1])
            assert again[tps[0]] == bounds[tps[0]], "the reader can be used again"
            return bounds, listed, len(consumer.assignment())
        finally:
            await consumer.stop()

    bounds, listed, assigned = asyncio.run(read())
    assert bounds == {
        TopicPartition(topic, 0): LogBounds(0, 500),
        TopicPartition(topic, 1): LogBounds(0, 500),
        TopicPartition(empty, 0): LogBounds(0, 0),
    }
    assert assigned == 0
    # What makes the fetch necessary on the embedded broker (on Kafka both are 500).
    assert all(offset <= 500 for offset in listed.values())
