"""Reading: partitions read up to their end, and where each partition's log starts and ends.

The end of a log is the high watermark a fetch response reports, as Kafka's own `records-lag`
uses: the embedded Tansu broker answers ListOffsets(latest) with the base offset of the last
record batch instead (SPEC.md, "The embedded broker"), so ListOffsets alone would put the end
inside the last batch.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition


class ReadStalled(Exception):
    """No record and no position change for the whole timeout while partitions remain."""


@dataclass(frozen=True)
class LogBounds:
    """Where a partition's log starts (oldest readable offset) and ends (high watermark)."""

    start: int
    end: int


async def high_watermarks(
    consumer: AIOKafkaConsumer,
    partitions: Sequence[TopicPartition],
    listed_ends: dict[TopicPartition, int],
    timeout_s: float = 5.0,
) -> dict[TopicPartition, int]:
    """The high watermark of each assigned partition, read from fetch responses.

    Fetches from just before each listed end (ListOffsets(latest)), so the response holds a
    record and its partition's high watermark. Moves the consumer's positions. A partition that
    gives no answer within `timeout_s` keeps its listed end.
    """
    for tp in partitions:
        consumer.seek(tp, max(listed_ends[tp] - 1, 0))
    deadline = time.monotonic() + timeout_s
    while any(consumer.highwater(tp) is None for tp in partitions):
        if time.monotonic() > deadline:
            break
        await consumer.getmany(*partitions, timeout_ms=100, max_records=1)
    ends = {}
    for tp in partitions:
        highwater = consumer.highwater(tp)
        ends[tp] = listed_ends[tp] if highwater is None else max(listed_ends[tp], int(highwater))
    return ends


async def log_bounds(
    consumer: AIOKafkaConsumer, partitions: Sequence[TopicPartition], timeout_s: float = 5.0
) -> dict[TopicPartition, LogBounds]:
    """Start and end of each partition's log, with a group-less consumer of its own.

    Assigns that consumer to `partitions` for the reading, and unassigns it afterwards: an
    assigned consumer keeps prefetching every new record in the background.
    """
    if not partitions:
        return {}
    consumer.assign(list(partitions))
    try:
        starts = await consumer.beginning_offsets(list(partitions))
        listed = await consumer.end_offsets(list(partitions))
        ends = await high_watermarks(consumer, partitions, listed, timeout_s)
    finally:
        consumer.unsubscribe()
    return {tp: LogBounds(int(starts[tp]), ends[tp]) for tp in partitions}


@dataclass
class Chunk:
    """What one poll of a bounded read brought.

    `records` are the polled records below their partition's end; `reached` is the new
    position (at most the end) of every partition whose position moved, including moves over
    offsets that hold no record for the reader (transaction markers, aborted records).
    """

    records: list[Any]
    reached: dict[TopicPartition, int] = field(default_factory=dict)


class BoundedRead:
    """Reads assigned partitions from their positions up to their ends as first seen.

    The end of a partition is fixed when the first fetch response reports it: the high
    watermark, or with `read_committed` the last stable offset (beyond it are open
    transactions). Records written meanwhile are left for later, so a read of a live topic
    ends. `ends` fills in as the read goes; `total` is known once every end is.
    """

    def __init__(
        self,
        consumer: AIOKafkaConsumer,
        partitions: Sequence[TopicPartition],
        *,
        max_records: int,
        read_committed: bool = False,
        timeout_s: float = 60.0,
        poll_ms: int = 500,
    ) -> None:
        self.consumer = consumer
        self.partitions = list(partitions)
        self.max_records = max_records
        self.read_committed = read_committed
        self.timeout_s = timeout_s
        self.poll_ms = poll_ms
        self.ends: dict[TopicPartition, int] = {}
        self.starts: dict[TopicPartition, int] = {}
        self.positions: dict[TopicPartition, int] = {}

    @property
    def total(self) -> int | None:
        """Records (offsets) between the start positions and the ends, once every end is known."""
        if len(self.ends) < len(self.partitions):
            return None
        return sum(max(self.ends[tp] - self.starts[tp], 0) for tp in self.partitions)

    @property
    def finished(self) -> bool:
        return len(self.ends) == len(self.partitions) and all(
            self.positions[tp] >= self.ends[tp] for tp in self.partitions
        )

    def _end(self, tp: TopicPartition) -> int | None:
        if self.read_committed:
            lso = self.consumer.last_stable_offset(tp)
            if lso is not None and lso >= 0:
                return int(lso)
        highwater = self.consumer.highwater(tp)
        return None if highwater is None else int(highwater)

    async def chunks(self) -> AsyncIterator[Chunk]:
        """Each poll that brought records or moved a position, until every partition's end."""
        for tp in self.partitions:
            self.starts[tp] = self.positions[tp] = await self.consumer.position(tp)
        deadline = time.monotonic() + self.timeout_s
        while not self.finished:
            batches = await self.consumer.getmany(
                timeout_ms=self.poll_ms, max_records=self.max_records
            )
            for tp in self.partitions:
                if tp not in self.ends:
                    end = self._end(tp)
                    if end is not None:
                        self.ends[tp] = end
            records = [
                record
                for tp in self.partitions
                if tp in self.ends
                for record in batches.get(tp, ())
                if record.offset < self.ends[tp]
            ]
            reached: dict[TopicPartition, int] = {}
            for tp in self.ends:
                position = min(await self.consumer.position(tp), self.ends[tp])
                if position > self.positions[tp]:
                    reached[tp] = position
            if records or reached:
                yield Chunk(records, reached)
                self.positions.update(reached)
                deadline = time.monotonic() + self.timeout_s
            elif time.monotonic() > deadline:
                missing = sorted(
                    f"{tp.topic}:{tp.partition}"
                    for tp in self.partitions
                    if tp not in self.ends or self.positions[tp] < self.ends[tp]
                )
                raise ReadStalled(f"no progress reading {missing} for {self.timeout_s:.0f}s")
