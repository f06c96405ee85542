"""Output: the batch run's writer, exactly once with a transaction or write-then-commit."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
from collections.abc import Callable, Collection, Iterator, Mapping
from typing import Any, Literal

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaConnectionError, KafkaError

from service.kafka.clients import new_producer
from service.kafka.commits import commit_offsets
from service.kafka.dead_letters import OutgoingMessage, send_in_batches
from service.scoring.errors import ScoringError
from service.scoring.predictions import PartitionOutput
from service.settings import FAULT_SCORE_EXIT_AFTER_WRITE

log = logging.getLogger(__name__)

TransactionMode = Literal["auto", "on", "off"]

CRASH_ENV = FAULT_SCORE_EXIT_AFTER_WRITE
CRASH_EXIT_CODE = 86


AfterWrite = Callable[[], None]


def crash_hook_from_env() -> AfterWrite | None:
    """The fault hook `STREAMFIT_FAULT_SCORE_EXIT_AFTER_WRITE=1` (tests only, see
    `service.settings.FAULT_HOOKS`): exit hard after the first batch is written and before
    its offsets are committed."""
    if os.environ.get(CRASH_ENV) != "1":
        return None

    def crash() -> None:
        sys.stderr.write(f"{CRASH_ENV}=1: exiting after the first write, before its commit\n")
        sys.stderr.flush()
        os._exit(CRASH_EXIT_CODE)

    return crash


@contextlib.contextmanager
def _quiet(logger_name: str) -> Iterator[None]:
    """Silence a library logger while probing something expected to fail."""
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


async def open_producer(
    client_options: dict[str, Any],
    client_id: str,
    transactional_id: str,
    mode: TransactionMode,
) -> tuple[AIOKafkaProducer, bool]:
    """A started producer, and whether it is transactional (under `transactional_id`).

    `on` requires transactions, `off` never tries, `auto` tries and falls back to a plain
    producer (`acks=all`) when the broker refuses them. Starting a transactional producer
    fences any older producer with the same transactional id (InitProducerId bumps the epoch
    and aborts its open transaction).

    No linger: a batch's records are all queued at once and then awaited (acks before the
    commit), so waiting for more records would only delay every batch (measured on the
    embedded broker: 8.6 ms to write and acknowledge 256 predictions with 5 ms, 3.6 ms
    without).
    """
    if mode != "off":
        producer = new_producer(
            client_options, client_id=client_id, transactional_id=transactional_id, linger_ms=0
        )
        try:
            if mode == "auto":
                with _quiet("aiokafka.producer.sender"):
                    await producer.start()
            else:
                await producer.start()
        except KafkaError as exc:
            with contextlib.suppress(Exception):
                await producer.stop()
            if isinstance(exc, KafkaConnectionError):
                raise  # the broker is unreachable, not refusing
            if mode == "on":
                raise ScoringError(
                    f"the broker refused transactions ({type(exc).__name__}: {exc}); "
                    "use --transactions auto or off"
                ) from exc
            log.warning(
                "the broker refused transactions; falling back to idempotent output "
                "(write a batch, wait for its acks, then commit its offsets)",
                extra={"error": f"{type(exc).__name__}: {exc}"},
            )
        else:
            return producer, True
    producer = new_producer(client_options, client_id=client_id, linger_ms=0)
    try:
        await producer.start()
    except BaseException:
        with contextlib.suppress(Exception):
            await producer.stop()
        raise
    return producer, False


class Output:
    """Writes one batch's messages and commits its offsets for the group, exactly once.

    `transactional` is decided at `start`: `on` requires transactions, `off` never tries,
    `auto` tries and falls back to idempotent output (write, wait for acks, then commit).
    """

    def __init__(
        self,
        client_options: dict[str, Any],
        group_id: str,
        transactional_id: str,
        mode: TransactionMode = "auto",
        after_write: AfterWrite | None = None,
    ) -> None:
        self.client_options = client_options
        self.group_id = group_id
        self.transactional_id = transactional_id
        self.mode = mode
        self.after_write = after_write
        self.transactional = False
        self._producer: AIOKafkaProducer | None = None

    async def start(self) -> None:
        self._producer, self.transactional = await open_producer(
            self.client_options, "streamfit-score", self.transactional_id, self.mode
        )

    async def track(self, topic: str) -> None:
        """Keep `topic` in the producer's metadata.

        aiokafka tracks only topics it had to look up: one it already knew from the start-up
        metadata (all topics) is dropped from the cache when the first other topic is looked
        up (e.g. the dead-letter topic), failing its pending batches with NotLeaderForPartition.
        """
        assert self._producer is not None, "Output.start() first"
        await track_topics(self._producer, [topic])

    async def stop(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None

    async def publish(
        self,
        consumer: AIOKafkaConsumer,
        messages: list[OutgoingMessage],
        offsets: dict[TopicPartition, int],
    ) -> None:
        """Write `messages`, then commit `offsets` (next offset per partition) for the group."""
        producer = self._producer
        assert producer is not None, "Output.start() first"
        if self.transactional:
            async with producer.transaction():
                await self._write(producer, messages)
                await producer.send_offsets_to_transaction(offsets, self.group_id)
            return
        await self._write(producer, messages)
        await commit_offsets(consumer, offsets)

    async def _write(self, producer: AIOKafkaProducer, messages: list[OutgoingMessage]) -> None:
        await write_all(producer, messages, self.after_write)


async def write_all(
    producer: AIOKafkaProducer,
    messages: list[OutgoingMessage],
    after_write: AfterWrite | None = None,
) -> None:
    """Send `messages` and wait until the broker has every one; then the fault hook, if set."""
    await asyncio.gather(*await send_in_batches(producer, messages))
    if after_write is not None:
        after_write()


async def track_topics(producer: AIOKafkaProducer, topics: Collection[str]) -> None:
    """Keep `topics` in the producer's metadata (see `Output.track`)."""
    for topic in topics:
        await producer.client.add_topic(topic)


class WriteThenCommit:
    """The follow loop's idempotent output: write a batch, wait for its acks, then commit its
    offsets for the group. A crash in between re-scores the batch under the same keys.

    Any member of the group may write any partition's predictions: nothing to acquire or
    release when partitions move.
    """

    transactional = False

    def __init__(
        self,
        producer: AIOKafkaProducer,
        after_write: AfterWrite | None = None,
        topics: Collection[str] = (),
    ) -> None:
        self.producer = producer
        self.after_write = after_write
        self._untracked = list(topics)  # the output and dead-letter topics, tracked once

    async def acquire(self, partitions: Collection[TopicPartition]) -> None:
        return None

    async def release(self, partitions: Collection[TopicPartition]) -> None:
        return None

    async def publish(
        self, consumer: AIOKafkaConsumer, parts: Mapping[TopicPartition, PartitionOutput]
    ) -> None:
        if self._untracked:
            await track_topics(self.producer, self._untracked)
            self._untracked = []
        messages = [m for part in parts.values() for m in part.messages]
        await write_all(self.producer, messages, self.after_write)
        await commit_offsets(consumer, {tp: part.next_offset for tp, part in parts.items()})

    async def stop(self) -> None:
        await self.producer.stop()
