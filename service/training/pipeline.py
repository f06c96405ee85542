"""Pipeline: fetched records -> decode (a thread of its own) -> learn (the learner thread).

Up to `PIPELINE_DEPTH` decoded batches queue for the learner thread, so it never waits for the
event loop between batches, while the next fetch and decode overlap with learning. A batch's
rejects go to the dead-letter topic before it is handed to the learner; its offsets advance
(in `PartitionOffsets`) only once it is learned, in fetch order.

A fetched batch holds up to `handoff_records(BATCH_SIZE)` records: several mini-batches when
they are small, which the learner thread learns one after another in a single hand-off (and,
unless a challenger or a reset of the optimizer must act between them, in one compiled call:
`Learner.learn_in_order`). Each hand-off costs a fetch, a decode hand-off, a future and a
settle on the event loop, and wake-ups of both threads, all under the one interpreter lock the
learner thread needs between calls. Paid per mini-batch of 32, they made a mini-batch take
2.9 ms on the learner thread against 1.8 ms in one hand-off of 32 mini-batches (medians of
eleven paired benchmark runs); learned in one call, hand-offs of 4096 records brought the
service to 0.90-0.95 of the learner alone at batch 32, 256 and 1024, against 0.80-0.93 with
hand-offs of 1024 (quick benchmark runs). A live stream is not held back by the size: a fetch
returns what has arrived, so at 10,000 records/s hand-offs stay small.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from service.codec import Codec, DecodedBatch
from service.feedback import PendingPredictions
from service.kafka.dead_letters import DeadLetterWriter
from service.serving.workers import lower_this_thread
from service.training.learner_thread import LearnerThread
from service.training.offsets import PartitionOffsets

log = logging.getLogger(__name__)

PIPELINE_DEPTH = 2  # decoded batches queued for the learner thread
HANDOFF_RECORDS = 4096  # records per hand-off to the learner thread, in whole mini-batches
REFILL_WAIT_MS = 20  # with batches in flight, how long a poll waits for the next fetch
IDLE_WAIT_MS = 200  # nothing in flight: how long a poll waits for records

Batches = Mapping[TopicPartition, list[Any]]


def handoff_records(batch_size: int) -> int:
    """The most records one fetch brings and one hand-off gives the learner thread: whole
    mini-batches of `batch_size`, about HANDOFF_RECORDS, at least one.

    >>> handoff_records(32), handoff_records(256), handoff_records(1000), handoff_records(8192)
    (4096, 4096, 4000, 8192)
    """
    return max(1, HANDOFF_RECORDS // batch_size) * batch_size


class LearnFailed(Exception):
    """A batch failed on the learner thread; later batches were learned past it, so the model
    no longer matches any offsets and must not be checkpointed."""


@dataclass
class _InFlight:
    """A batch being learned on the learner thread, and what it advances once learned."""

    future: asyncio.Future[None]
    batches: Batches
    used: list[str]  # request ids of delayed labels it joined


class LearnPipeline:
    """Decodes fetched batches, dead-letters their rejects and queues them for learning.

    `lock` serializes the steps that change what is in flight: feeding a batch, settling, and
    the checkpoint and rollback sequences (which settle first).
    """

    def __init__(
        self,
        codec: Codec | None,
        learner: LearnerThread,
        offsets: PartitionOffsets,
        labels_topic: str | None = None,
        pending: PendingPredictions | None = None,
    ) -> None:
        self.codec = codec  # set once the model (and so its inputs) is known
        self.learner = learner
        self.offsets = offsets
        self.labels_topic = labels_topic
        self.pending = pending
        self.lock = asyncio.Lock()
        self.failed: BaseException | None = None
        self._inflight: deque[_InFlight] = deque()
        self._decode_thread = ThreadPoolExecutor(
            1,
            thread_name_prefix="streamfit-decode",
            initializer=lower_this_thread,
            initargs=(learner.nice,),  # the learner thread's priority
        )

    def poll_wait_ms(self) -> int:
        """How long the next poll may wait for records.

        Full: take only what is buffered, settling must not wait. Partly full: wait briefly
        for the fetch in flight (aiokafka refills its buffer only once it is empty, so an
        instant poll often finds nothing while records are on the way); draining the pipeline
        then would leave the learner idle for a fetch and a decode.
        """
        if len(self._inflight) >= PIPELINE_DEPTH:
            return 0
        return REFILL_WAIT_MS if self._inflight else IDLE_WAIT_MS

    async def decode(self, batches: Batches) -> tuple[DecodedBatch, list[str]]:
        """Decode train records, and join label records with pending predictions.

        The codec runs on its own thread: its parse releases the GIL, so it overlaps with
        HTTP on the event loop as well as with the learner. The join stays on the loop (the
        pending predictions are the HTTP handlers' too)."""
        assert self.codec is not None, "decoding before the model is known"
        records = [r for tp, part in batches.items() if tp.topic != self.labels_topic for r in part]
        decoded = await asyncio.get_running_loop().run_in_executor(
            self._decode_thread, self.codec.decode, records
        )
        used: list[str] = []
        if self.labels_topic and self.pending is not None:
            labels = [
                r for tp, part in batches.items() if tp.topic == self.labels_topic for r in part
            ]
            if labels:
                feedback, used = self.pending.join(labels)
                decoded = decoded.extended(feedback)
        return decoded, used

    async def submit(
        self,
        batches: Batches,
        decoded: DecodedBatch,
        used: list[str],
        dead_letters: DeadLetterWriter,
    ) -> None:
        """Dead-letter the batch's rejects, then queue its rows for the learner thread (after
        making room by settling the oldest batch)."""
        async with self.lock:
            while len(self._inflight) >= PIPELINE_DEPTH:
                await self._settle_oldest()
            await dead_letters.write(decoded.rejects)
            self._inflight.append(_InFlight(self.learner.learn(decoded), batches, used))

    async def idle(self) -> None:
        """A poll brought nothing: settle a full pipeline's oldest batch, or all batches once
        the stream is idle. (What they taught is served already: the learner thread serves its
        update once nothing is queued.)"""
        if len(self._inflight) >= PIPELINE_DEPTH:
            async with self.lock:
                await self._settle_oldest()
        elif self._inflight:
            async with self.lock:
                await self.settle()

    async def settle(self) -> None:
        """Wait for every batch in flight, in order; their offsets advance. Hold `lock`."""
        while self._inflight:
            await self._settle_oldest()

    async def _settle_oldest(self) -> None:
        inflight = self._inflight.popleft()
        try:
            await inflight.future
        except BaseException as exc:
            # The batches queued behind it are learned regardless: wait for them, but advance
            # nothing, and refuse checkpoints from now on.
            self.failed = exc
            pending, self._inflight = list(self._inflight), deque()
            await asyncio.gather(*(p.future for p in pending), return_exceptions=True)
            raise LearnFailed(f"{type(exc).__name__}: {exc}") from exc
        for tp, part in inflight.batches.items():
            self.offsets.learned(tp, part[-1].offset + 1, part[-1].timestamp)
        if inflight.used and self.pending is not None:
            self.pending.forget(inflight.used)

    @staticmethod
    def put_back(consumer: AIOKafkaConsumer, batches: Batches) -> None:
        """Un-fetch records not handed to the learner: seek to their first offsets (not to the
        learned position, which batches still in flight are ahead of)."""
        for tp, part in batches.items():
            try:
                consumer.seek(tp, part[0].offset)
            except Exception:  # the consumer may be closing; a restart seeks from the checkpoint
                log.debug("put back failed", exc_info=True)

    def stop(self) -> None:
        self._decode_thread.shutdown(wait=True)
