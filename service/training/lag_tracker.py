"""Lag tracker: how far each assigned partition's learned position is behind its log end.

Positions come from `PartitionOffsets`, log ends from the consumer's high watermarks (fetch
responses, correct on Kafka and on Tansu). Exported as metrics at most every 0.25 s, and as
rows for `/lag`, with the Burrow-style status of `LagHealth`.
"""

from __future__ import annotations

import time
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from service import metrics
from service.lag_health import LagHealth, LagStatus
from service.training.offsets import PartitionOffsets

UPDATE_INTERVAL_S = 0.25


class LagTracker:
    """Per-partition lag in records and seconds, and its status, for metrics and `/lag`."""

    def __init__(self, offsets: PartitionOffsets, health: LagHealth | None = None) -> None:
        self.offsets = offsets
        self.health = health or LagHealth()
        self._updated = 0.0

    def update_if_due(self, consumer: AIOKafkaConsumer) -> None:
        if time.monotonic() - self._updated >= UPDATE_INTERVAL_S:
            self.update(consumer)

    def update(self, consumer: AIOKafkaConsumer) -> None:
        """Observe every assigned partition and set its lag metrics."""
        self._updated = time.monotonic()
        now = time.time()
        for tp in consumer.assignment():
            highwater = consumer.highwater(tp)
            position = self.offsets.position(tp)
            if highwater is None or position is None:
                continue
            labels = (tp.topic, str(tp.partition))
            metrics.CONSUMER_LAG.labels(*labels).set(max(highwater - position, 0))
            stamp = self.offsets.take_last_timestamp(tp)
            self.health.observe(tp, position, highwater, now, stamp)
            health = self.health.evaluate(tp, now)
            metrics.CONSUMER_LAG_SECONDS.labels(*labels).set(health["lag_seconds"] or 0.0)
            for status in LagStatus:
                metrics.CONSUMER_LAG_STATUS.labels(*labels, status.value).set(
                    1 if status.value == health["status"] else 0
                )

    def rows(self, consumer: AIOKafkaConsumer | None) -> list[dict[str, Any]]:
        """Per assigned partition: committed offset, learned position, log end, lag, status.

        Observes first, so a row's lag, status and lag in seconds describe the same position
        (the loop observes at most every 0.25 s, and positions move in between)."""
        if consumer is None:
            return []
        self.update(consumer)
        rows = []
        for tp in sorted(consumer.assignment()):
            highwater = consumer.highwater(tp)
            position = self.offsets.position(tp)
            if position is None:
                position = self.offsets.committed(tp)
            lag = None if highwater is None else max(highwater - (position or 0), 0)
            row: dict[str, Any] = {
                "topic": tp.topic,
                "partition": tp.partition,
                "committed_offset": self.offsets.committed(tp),
                "position": position,
                "log_end_offset": highwater,
                "lag": lag,
                "status": None,
                "lag_seconds": None,
            }
            if tp in self.health:
                health = self.health.evaluate(tp, log_end=highwater)
                row["status"], row["lag_seconds"] = health["status"], health["lag_seconds"]
            rows.append(row)
        return rows

    def worst(self) -> str:
        return self.health.worst()

    def rewound(self, tp: TopicPartition) -> None:
        self.health.rewound(tp)

    def forget(self, tp: TopicPartition) -> None:
        self.health.forget(tp)
