"""Lag: a consumer group's committed offsets against each partition's log end, from outside.

Log end is the high watermark from a fetch response, as Kafka's own `records-lag` uses:
Tansu's ListOffsets(latest) answers the base offset of the last batch instead of the high
watermark (SPEC.md, "The embedded broker"), so ListOffsets alone would under-report lag.
The group is never joined and nothing is committed.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition


async def group_lag(
    client_options: dict[str, Any], group_id: str, topic: str, timeout_s: float = 10.0
) -> list[dict[str, Any]]:
    """Rows of topic, partition, committed_offset, log_end_offset, lag for one topic."""
    consumer = AIOKafkaConsumer(
        **client_options,
        group_id=group_id,
        enable_auto_commit=False,
        client_id="streamfit-lag",
    )
    await consumer.start()
    try:
        partitions = consumer.partitions_for_topic(topic)
        if partitions is None:
            await consumer._client.force_metadata_update()  # noqa: SLF001 - no public refresh
            partitions = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        if not tps:
            return []
        consumer.assign(tps)
        committed = {tp: await consumer.committed(tp) for tp in tps}
        listed = await consumer.end_offsets(tps)
        for tp in tps:
            # Fetch from the listed end: the response carries the true high watermark.
            consumer.seek(tp, max(listed[tp] - 1, 0))
        deadline = asyncio.get_running_loop().time() + timeout_s
        while any(consumer.highwater(tp) is None for tp in tps):
            if asyncio.get_running_loop().time() > deadline:
                break
            await consumer.getmany(timeout_ms=200, max_records=1)
        rows = []
        for tp in tps:
            highwater = consumer.highwater(tp)
            log_end = max(listed[tp], highwater) if highwater is not None else listed[tp]
            current = committed[tp]
            rows.append(
                {
                    "topic": tp.topic,
                    "partition": tp.partition,
                    "committed_offset": current,
                    "log_end_offset": log_end,
                    "lag": log_end - current if current is not None else log_end,
                }
            )
        return rows
    finally:
        await consumer.stop()


def format_table(group_id: str, rows: list[dict[str, Any]]) -> str:
    """The `kafka-consumer-groups.sh --describe` layout."""
    header = ("GROUP", "TOPIC", "PARTITION", "CURRENT-OFFSET", "LOG-END-OFFSET", "LAG")
    lines = [header] + [
        (
            group_id,
            r["topic"],
            str(r["partition"]),
            "-" if r["committed_offset"] is None else str(r["committed_offset"]),
            str(r["log_end_offset"]),
            str(r["lag"]),
        )
        for r in rows
    ]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in lines
    )
