"""Record batches per partition (`send_in_batches`): the partition `send` would choose, order
kept within a partition, a new batch when one is full."""

from __future__ import annotations

import asyncio
from typing import Any

from aiokafka.partitioner import murmur2

from service.kafka.dead_letters import OutgoingMessage, send_in_batches


class FakeBatch:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.records: list[tuple[bytes | None, bytes | None]] = []
        self.closed = False

    def append(self, *, key: Any, value: Any, timestamp: Any, headers: Any) -> object | None:
        if self.closed or (self.records and len(self.records) >= self.capacity):
            return None
        self.records.append((key, value))
        return object()

    def close(self) -> None:
        self.closed = True


class FakeProducer:
    """Three partitions per topic; batches of at most `capacity` records."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.sent: list[tuple[str, int, list[tuple[bytes | None, bytes | None]]]] = []

    async def partitions_for(self, topic: str) -> set[int]:
        return {0, 1, 2}

    def create_batch(self) -> FakeBatch:
        return FakeBatch(self.capacity)

    async def send_batch(self, batch: FakeBatch, topic: str, *, partition: int) -> Any:
        self.sent.append((topic, partition, batch.records))
        future = asyncio.get_running_loop().create_future()
        future.set_result(None)
        return future


def test_batches_per_partition_as_send_would_partition() -> None:
    keys = [f"events/0/{i}".encode() for i in range(10)]
    messages = [OutgoingMessage("out", key, b"v") for key in keys]
    messages.append(OutgoingMessage("out.dlq", None, None))  # a keyless tombstone
    producer = FakeProducer(capacity=2)

    async def run() -> int:
        return len(await send_in_batches(producer, messages))  # type: ignore[arg-type]

    futures = asyncio.run(run())
    assert futures == len(producer.sent)
    placed: dict[bytes, int] = {}
    for topic, partition, records in producer.sent:
        assert 1 <= len(records) <= 2
        for key, _ in records:
            if topic == "out":
                assert key is not None
                placed[key] = partition
            else:
                assert (partition, key) == (0, None)
    assert placed == {key: (murmur2(key) & 0x7FFFFFFF) % 3 for key in keys}
    by_partition: dict[int, list[bytes]] = {}
    for topic, partition, records in producer.sent:
        if topic == "out":
            by_partition.setdefault(partition, []).extend(k for k, _ in records if k)
    for ordered in by_partition.values():
        assert ordered == sorted(ordered, key=keys.index)  # order kept within a partition
