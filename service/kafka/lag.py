"""Lag: a consumer group's committed offsets against each partition's log end, from outside.

Log end is the high watermark from a fetch response, as Kafka's own `records-lag` uses:
Tansu's ListOffsets(latest) answers the base offset of the last batch instead of the high
watermark (SPEC.md, "The embedded broker"), so ListOffsets alone would under-report lag.
The group is never joined and nothing is committed.
"""

from __future__ import annotations

from typing import Any

from service.kafka.clients import new_consumer
from service.kafka.reading import high_watermarks
from service.kafka.topics import topic_partitions


async def group_lag(
    client_options: dict[str, Any], group_id: str, topic: str, timeout_s: float = 10.0
) -> list[dict[str, Any]]:
    """Rows of topic, partition, committed_offset, log_end_offset, lag for one topic."""
    consumer = new_consumer(client_options, group_id=group_id, client_id="streamfit-lag")
    await consumer.start()
    try:
        tps = await topic_partitions(consumer, topic)
        if not tps:
            return []
        consumer.assign(tps)
        committed = {tp: await consumer.committed(tp) for tp in tps}
        ends = await high_watermarks(consumer, tps, await consumer.end_offsets(tps), timeout_s)
        rows = []
        for tp in tps:
            log_end = ends[tp]
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
