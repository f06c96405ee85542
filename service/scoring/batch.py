"""Batch run: exactly-once batch inference over a topic for a consumer group (`streamfit score`).

The tutorial's KafkaGroupIODataset flow, done right. The newest checkpoint becomes a serving
snapshot (NumPy forward pass, no TensorFlow). Every record of the input topic that consumer
group G has not committed is scored once; one prediction per record goes to the output topic,
keyed `topic/partition/offset` of its source record; records the codec rejects go to the
dead-letter topic; then the batch's offsets are committed for G. The run stops at the end of
every partition as it was when the run started (the high watermark from fetch responses).

Exactly-once, two ways:
- transactions (Apache Kafka): predictions, dead letters and the group's offsets are one
  Kafka transaction per batch; readers with `isolation_level=read_committed` see each
  prediction once, whatever crashes;
- idempotent output (brokers that refuse transactions, e.g. the embedded Tansu broker): the
  batch is written and acknowledged, THEN its offsets are committed. A crash in between makes
  the next run score that batch again with the same model: the same keys with byte-identical
  values, so the distinct keys of the output topic are exactly the input records.
  Byte-identical needs a forward pass whose result for a row does not depend on which rows
  share its batch; BLAS matrix products do not promise that, so scoring multiplies row by row.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from service.checkpoints import CheckpointError, store_for
from service.codec import Codec
from service.kafka.clients import new_consumer
from service.kafka.reading import BoundedRead, ReadStalled
from service.kafka.topics import ensure_topic, topic_partitions
from service.scoring.errors import ScoringError
from service.scoring.evaluation import Evaluation, evaluate, evaluate_task
from service.scoring.output import AfterWrite, Output, TransactionMode
from service.scoring.predictions import codec_for, score_records
from service.serving.snapshot import ModelSnapshot, SnapshotError, snapshot_from_checkpoint
from service.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScoreReport:
    """What one `streamfit score` run did."""

    topic: str
    group_id: str
    output_topic: str
    dead_letter_topic: str
    transactional: bool
    model_version: int
    scored: int
    unlabelled: int
    rejected: dict[str, int]
    evaluation: Evaluation | None
    task: str = "binary"
    task_metrics: dict[str, float] | None = None  # multiclass and regression


class Scorer:
    """Scores a topic for a consumer group into an output topic; see the module docstring."""

    def __init__(
        self,
        settings: Settings,
        topic: str,
        group_id: str,
        output_topic: str | None = None,
        transactions: TransactionMode = "auto",
        batch_size: int | None = None,
        progress: bool = True,
        after_write: AfterWrite | None = None,
        timeout_s: float = 60.0,
    ) -> None:
        self.settings = settings
        self.topic = topic
        self.group_id = group_id
        self.output_topic = output_topic or f"{topic}.predictions"
        # The scored topic's own dead-letter topic, unless one is configured explicitly.
        self.dead_letter_topic = settings.dlq_topic or f"{topic}.dlq"
        self.transactions = transactions
        self.batch_size = batch_size or settings.batch_size
        self.progress = progress
        self.after_write = after_write
        self.timeout_s = timeout_s
        self.codec: Codec | None = None  # for the checkpoint's model, once loaded
        self._outputs: list[np.ndarray] = []
        self._labels: list[np.ndarray] = []
        self._rejected: Counter[str] = Counter()
        self._scored = 0
        self._unlabelled = 0

    def load_snapshot(self) -> ModelSnapshot:
        """The served version as a serving snapshot: the one the trainer's serve policy
        names in the manifest (docs/PROMOTION.md), else the newest valid checkpoint."""
        store = store_for(self.settings)
        served = (store.serving() or {}).get("served_version")
        try:
            checkpoint = store.load(int(served)) if served is not None else store.latest()
        except CheckpointError as exc:
            raise ScoringError(f"the served version {served} cannot be loaded: {exc}") from exc
        if checkpoint is None:
            raise ScoringError(
                f"no checkpoint in {self.settings.checkpoint_dir}: run `streamfit fit` "
                "(or `streamfit serve`) first"
            )
        try:
            snapshot = snapshot_from_checkpoint(checkpoint)
        except SnapshotError as exc:
            raise ScoringError(str(exc)) from exc
        explicit = "num_features" in self.settings.model_fields_set
        if explicit and snapshot.num_features != self.settings.num_features:
            raise ScoringError(
                f"checkpoint {checkpoint.version} takes {snapshot.num_features} features, "
                f"STREAMFIT_NUM_FEATURES is {self.settings.num_features}"
            )
        self.codec = codec_for(self.settings, snapshot)
        return snapshot

    async def run(self) -> ScoreReport:
        """Score until every partition's end; commit per batch; return the report."""
        snapshot = self.load_snapshot()
        options = self.settings.kafka_client_options()
        output = Output(
            options,
            self.group_id,
            f"streamfit-score.{self.group_id}.{self.topic}",
            self.transactions,
            self.after_write,
        )
        await output.start()
        consumer = new_consumer(
            options,
            group_id=self.group_id,
            client_id="streamfit-score",
            isolation_level="read_committed" if output.transactional else "read_uncommitted",
            max_poll_records=self.batch_size,
        )
        try:
            await consumer.start()
            partitions = await topic_partitions(consumer, self.topic)
            if not partitions:
                raise ScoringError(f"topic {self.topic!r} does not exist")
            await self._ensure_output_topic(options, len(partitions))
            await output.track(self.output_topic)
            # Manual assignment: the group holds the offsets; one scorer per group is the
            # unit of work (a second one with the same transactional id fences the first).
            consumer.assign(partitions)
            await self._consume(consumer, output, snapshot, partitions)
        finally:
            await consumer.stop()
            await output.stop()
        outputs = np.concatenate(self._outputs) if self._outputs else np.empty((0, 1))
        labels = np.concatenate(self._labels) if self._labels else np.empty(0)
        task = snapshot.task
        return ScoreReport(
            topic=self.topic,
            group_id=self.group_id,
            output_topic=self.output_topic,
            dead_letter_topic=self.dead_letter_topic,
            transactional=output.transactional,
            model_version=snapshot.version,
            scored=self._scored,
            unlabelled=self._unlabelled,
            rejected=dict(self._rejected),
            evaluation=evaluate(outputs[:, 0], labels) if task.kind == "binary" else None,
            task=task.kind,
            task_metrics=evaluate_task(task, outputs, labels)
            if task.kind != "binary" and len(labels)
            else None,
        )

    async def _ensure_output_topic(self, options: dict[str, Any], partitions: int) -> None:
        try:
            await ensure_topic(options, self.output_topic, partitions)
        except Exception as exc:  # best effort: brokers that auto-create topics still work
            log.warning(
                "could not create the output topic; relying on auto-creation",
                extra={"topic": self.output_topic, "error": f"{type(exc).__name__}: {exc}"},
            )

    async def _consume(
        self,
        consumer: AIOKafkaConsumer,
        output: Output,
        snapshot: ModelSnapshot,
        partitions: list[TopicPartition],
    ) -> None:
        from tqdm import tqdm

        read = BoundedRead(
            consumer,
            partitions,
            max_records=self.batch_size,
            read_committed=output.transactional,
            timeout_s=self.timeout_s,
        )
        bar = tqdm(unit="rec", desc=f"scoring {self.topic}", disable=not self.progress)
        try:
            async for chunk in read.chunks():
                if bar.total is None and read.total is not None:
                    bar.total = read.total
                    bar.refresh()
                await self._score_batch(consumer, output, snapshot, chunk.records, chunk.reached)
                bar.update(sum(o - read.positions[tp] for tp, o in chunk.reached.items()))
        except ReadStalled as exc:
            raise ScoringError(str(exc)) from None
        finally:
            bar.close()

    async def _score_batch(
        self,
        consumer: AIOKafkaConsumer,
        output: Output,
        snapshot: ModelSnapshot,
        records: list[Any],
        offsets: dict[TopicPartition, int],
    ) -> None:
        assert self.codec is not None
        scored = score_records(
            self.codec, snapshot, records, self.output_topic, self.dead_letter_topic
        )
        batch, outputs = scored.batch, scored.outputs
        await output.publish(consumer, scored.messages, offsets)
        labelled = ~np.isnan(batch.labels)
        self._outputs.append(outputs[labelled])
        self._labels.append(batch.labels[labelled])
        self._scored += len(batch.records)
        self._unlabelled += int((~labelled).sum())
        self._rejected.update(reject.reason for reject in batch.rejects)
        if batch.rejects:
            log.warning(
                "records sent to the dead-letter topic",
                extra={
                    "count": len(batch.rejects),
                    "topic": self.dead_letter_topic,
                    "first_error": batch.rejects[0].detail,
                },
            )


def format_score_report(report: ScoreReport) -> str:
    """The lines `streamfit score` prints."""
    mode = "transactions" if report.transactional else "idempotent output, then commit"
    rejected = sum(report.rejected.values())
    reasons = ", ".join(f"{k}={v}" for k, v in sorted(report.rejected.items()))
    lines = [
        f"scored {report.scored} records of {report.topic} for group {report.group_id} "
        f"with model version {report.model_version} -> {report.output_topic} ({mode})",
        f"rejected {rejected} -> {report.dead_letter_topic}"
        + (f" ({reasons})" if reasons else "")
        + f"; unlabelled {report.unlabelled}",
    ]
    if report.task_metrics is not None:
        lines.append(
            f"labelled {report.scored - report.unlabelled} ({report.task}): "
            + "  ".join(f"{name} {value:.4f}" for name, value in report.task_metrics.items())
        )
        return "\n".join(lines)
    e = report.evaluation
    if e is None:
        lines.append("no labelled records scored: no metrics")
        return "\n".join(lines)
    auc = "n/a (one class only)" if e.roc_auc is None else f"{e.roc_auc:.4f}"
    (tn, fp), (fn, tp) = e.confusion
    width = max(len(str(v)) for v in (tn, fp, fn, tp, "pred 0"))
    lines += [
        f"labelled {e.count}: accuracy {e.accuracy:.4f}  roc_auc {auc}  log_loss {e.log_loss:.4f}",
        "confusion matrix (rows: actual label, columns: predicted at p >= 0.5)",
        f"{'':10}{'pred 0':>{width}}  {'pred 1':>{width}}",
        f"{'actual 0':10}{tn:>{width}}  {fp:>{width}}",
        f"{'actual 1':10}{fn:>{width}}  {tp:>{width}}",
    ]
    return "\n".join(lines)


def score(
    settings: Settings,
    topic: str,
    group_id: str,
    output_topic: str | None = None,
    transactions: TransactionMode = "auto",
    batch_size: int | None = None,
    progress: bool = True,
    after_write: AfterWrite | None = None,
) -> ScoreReport:
    """Run a `Scorer` to completion (the `streamfit score` command)."""
    scorer = Scorer(
        settings, topic, group_id, output_topic, transactions, batch_size, progress, after_write
    )
    try:
        return asyncio.run(scorer.run())
    except KafkaError as exc:
        raise ScoringError(
            f"Kafka failed ({type(exc).__name__}: {exc}); committed batches stay scored, "
            "run again to continue"
        ) from exc
