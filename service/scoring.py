"""Scoring: exactly-once batch inference over a topic for a consumer group (`streamfit score`).

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
import contextlib
import json
import logging
import math
import os
import sys
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaConnectionError, KafkaError

from service.checkpoints import CheckpointError, store_for
from service.codec import Codec, Reject
from service.kafka.clients import new_consumer, new_producer
from service.kafka.commits import commit_offsets
from service.kafka.dead_letters import OutgoingMessage, dead_letter, send_messages
from service.kafka.reading import BoundedRead, ReadStalled
from service.kafka.topics import ensure_topic, topic_partitions
from service.model.inputs import Batch, concat
from service.model.task import Task
from service.online_stats import log_losses
from service.serving.snapshot import (
    ACTIVATIONS,
    ModelSnapshot,
    SnapshotError,
    snapshot_from_checkpoint,
)
from service.settings import FAULT_SCORE_EXIT_AFTER_WRITE, Settings

log = logging.getLogger(__name__)

TransactionMode = Literal["auto", "on", "off"]

CRASH_ENV = FAULT_SCORE_EXIT_AFTER_WRITE
CRASH_EXIT_CODE = 86


class ScoringError(Exception):
    """Scoring cannot run: no checkpoint, no such topic, transactions required but refused."""


# -- metrics ---------------------------------------------------------------------------------


def roc_auc(probabilities: np.ndarray, labels: np.ndarray) -> float | None:
    """Area under the ROC curve by ranks (Mann-Whitney U; ties get their average rank).

    >>> roc_auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1]))
    0.75
    >>> roc_auc(np.array([0.5, 0.5]), np.array([0, 1]))
    0.5
    """
    positives = int((labels == 1).sum())
    negatives = int(labels.shape[0]) - positives
    if positives == 0 or negatives == 0:
        return None
    _, inverse, counts = np.unique(probabilities, return_inverse=True, return_counts=True)
    average_rank = np.cumsum(counts) - (counts - 1) / 2.0
    ranks = average_rank[inverse]
    u = ranks[labels == 1].sum() - positives * (positives + 1) / 2.0
    return float(u / (positives * negatives))


@dataclass(frozen=True)
class Evaluation:
    """Accuracy (threshold 0.5), ROC AUC, log-loss and the confusion matrix of labelled rows.

    `confusion` is ((true negatives, false positives), (false negatives, true positives)):
    rows are the actual label, columns the predicted one.
    """

    count: int
    accuracy: float
    roc_auc: float | None
    log_loss: float
    confusion: tuple[tuple[int, int], tuple[int, int]]


def evaluate(probabilities: np.ndarray, labels: np.ndarray) -> Evaluation | None:
    """Metrics of probabilities against 0/1 labels; None if there are no labelled rows.

    >>> e = evaluate(np.array([0.9, 0.2, 0.6, 0.4]), np.array([1, 0, 0, 1]))
    >>> e.accuracy, e.confusion
    (0.5, ((1, 1), (1, 1)))
    """
    if labels.shape[0] == 0:
        return None
    y = labels.astype(np.int64)
    predicted = (probabilities >= 0.5).astype(np.int64)
    log_loss = float(log_losses(probabilities, y).mean())
    cells = np.bincount(2 * y + predicted, minlength=4)
    return Evaluation(
        count=int(y.shape[0]),
        accuracy=float((predicted == y).mean()),
        roc_auc=roc_auc(probabilities, y),
        log_loss=log_loss,
        confusion=((int(cells[0]), int(cells[1])), (int(cells[2]), int(cells[3]))),
    )


# -- the model and the records ---------------------------------------------------------------


def predict_rowwise(snapshot: ModelSnapshot, x: Batch) -> np.ndarray:
    """`ModelSnapshot.predict`'s answer (probabilities [n] for binary), row by row."""
    outputs = outputs_rowwise(snapshot, x)
    return outputs if snapshot.task.kind == "multiclass" else outputs[:, 0]


def outputs_rowwise(snapshot: ModelSnapshot, x: Batch) -> np.ndarray:
    """The snapshot's outputs [n, K], each row multiplied on its own (stacked 1-row matmuls).

    Gives bit-identical results for a row whatever rows share its batch, which a BLAS product
    of the whole batch does not (measured: last-bit differences), at ~10 us per row. Only a
    Dense-only model has this path; any other model is run by Keras on the whole batch (its
    values may differ in the last bits between replays).
    """
    if not snapshot.layers:
        return snapshot.outputs(x)
    h = np.asarray(x, dtype=np.float32)
    if snapshot.standardizes:
        # Standardized in float64 as `ModelSnapshot.outputs` does; then float32 like its layers.
        h = ((np.asarray(x, dtype=np.float64) - snapshot.mean) / snapshot.std).astype(np.float32)
    h = h[:, None, :]
    for layer in snapshot.layers:
        h = _rowwise(layer.activation)(np.matmul(h, layer.kernel) + layer.bias)
    return np.asarray(h[:, 0, :])


def _rowwise(activation: str) -> Any:
    if activation != "softmax":
        return ACTIVATIONS[activation]
    return lambda h: ACTIVATIONS["softmax"](h[:, 0, :])[:, None, :]


@dataclass(frozen=True)
class _StandIn:
    """An unlabelled record with a placeholder label, so the codec checks its features."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


def _placeholder(reject: Reject, codec: Codec) -> _StandIn | None:
    """A stand-in if the record was rejected only for lacking a label, else None."""
    record = reject.record
    if codec.message_format == "csv":
        if reject.reason != "missing_key":
            return None
        return _StandIn(record.topic, record.partition, record.offset, b"0", record.value)
    if codec.message_format != "json" or reject.reason not in ("bad_label", "missing_field"):
        return None
    message = json.loads(record.value)  # it parsed once already
    placeholder: Any = 0 if codec.task.kind != "regression" else 0.0
    if isinstance(message.get("features"), list):
        if message.get("label") is not None:
            return None
        value = json.dumps({"features": message["features"], "label": placeholder}).encode()
    else:
        if message.get(codec.label_field) is not None:
            return None
        value = json.dumps({**message, codec.label_field: placeholder}).encode()
    return _StandIn(record.topic, record.partition, record.offset, b"0", value)


@dataclass
class ScorableBatch:
    """Records to score with their features and labels (NaN: unlabelled), and the rejects."""

    records: list[Any]
    features: Batch
    labels: np.ndarray
    rejects: list[Reject]


def decode_for_scoring(codec: Codec, records: Sequence[Any]) -> ScorableBatch:
    """Decode like training does, except that a record without a label is scored, not rejected."""
    decoded = codec.decode(records)
    rejected = {id(reject.record) for reject in decoded.rejects}
    labelled = [record for record in records if id(record) not in rejected]
    if len(labelled) != len(decoded):  # the codec keeps the order and identity of good rows
        raise AssertionError("codec returned rows that do not match its input records")
    rejects: list[Reject] = []
    originals: dict[int, Any] = {}
    stand_ins: list[_StandIn] = []
    for reject in decoded.rejects:
        stand_in = _placeholder(reject, codec)
        if stand_in is None:
            rejects.append(reject)
        else:
            originals[id(stand_in)] = reject.record
            stand_ins.append(stand_in)
    unlabelled_records: list[Any] = []
    features = [decoded.features]
    if stand_ins:
        second = codec.decode(stand_ins)
        still_rejected = {id(reject.record) for reject in second.rejects}
        rejects.extend(Reject(originals[id(r.record)], r.reason, r.detail) for r in second.rejects)
        unlabelled_records = [originals[id(s)] for s in stand_ins if id(s) not in still_rejected]
        features.append(second.features)
    labels = np.concatenate(
        [decoded.labels, np.full(len(unlabelled_records), np.nan, dtype=np.float32)]
    )
    return ScorableBatch(labelled + unlabelled_records, concat(features), labels, rejects)


def prediction_key(record: Any) -> bytes:
    """`topic/partition/offset` of the source record: the same record always gets the same key."""
    return f"{record.topic}/{record.partition}/{record.offset}".encode()


def prediction_value(
    outputs: Any, label: float, model_version: int, task: Task | None = None
) -> bytes:
    """The task's prediction of one record, its label (null: unlabelled) and the model version,
    byte-stable: `{"probability": p, ...}` (binary), `{"probabilities": [...], "class": name,
    ...}` (multiclass), `{"prediction": v, ...}` (regression)."""
    task = task or Task()
    row = np.atleast_1d(np.asarray(outputs, dtype=np.float64))
    known = not math.isnan(label)
    body: dict[str, Any]
    if task.kind == "binary":
        body = {"probability": float(row[0]), "label": int(label) if known else None}
    elif task.kind == "multiclass":
        body = {
            "probabilities": row.tolist(),
            "class": task.classes[int(row.argmax())],
            "label": task.classes[int(label)] if known else None,
        }
    else:
        body = {"prediction": float(row[0]), "label": float(label) if known else None}
    body["model_version"] = model_version
    return json.dumps(body, separators=(",", ":")).encode()


def evaluate_task(task: Task, outputs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Metrics of a multiclass or regression task: accuracy and log-loss, or MAE, RMSE, R².

    >>> evaluate_task(Task("regression", ()), np.array([[1.0], [3.0]]), np.array([2.0, 3.0]))
    {'mae': 0.5, 'rmse': 0.7071067811865476, 'r2': -1.0}
    """
    if task.classification:
        correct, loss = task.batch_totals(outputs, labels)
        return {"accuracy": correct / len(labels), "log_loss": loss / len(labels)}
    error = outputs[:, 0].astype(np.float64) - labels
    spread = float(((labels - labels.mean()) ** 2).sum())
    r2 = 1.0 - float((error**2).sum()) / spread if spread > 0 else float("nan")
    return {
        "mae": float(np.abs(error).mean()),
        "rmse": float(np.sqrt((error**2).mean())),
        "r2": r2,
    }


# -- output: transactional or idempotent -----------------------------------------------------

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
        if self.mode != "off":
            producer = new_producer(
                self.client_options,
                client_id="streamfit-score",
                transactional_id=self.transactional_id,
            )
            try:
                if self.mode == "auto":
                    with _quiet("aiokafka.producer.sender"):
                        await producer.start()
                else:
                    await producer.start()
            except KafkaError as exc:
                with contextlib.suppress(Exception):
                    await producer.stop()
                if isinstance(exc, KafkaConnectionError):
                    raise  # the broker is unreachable, not refusing
                if self.mode == "on":
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
                self._producer, self.transactional = producer, True
                return
        producer = new_producer(self.client_options, client_id="streamfit-score")
        try:
            await producer.start()
        except BaseException:
            with contextlib.suppress(Exception):
                await producer.stop()
            raise
        self._producer = producer

    async def track(self, topic: str) -> None:
        """Keep `topic` in the producer's metadata.

        aiokafka tracks only topics it had to look up: one it already knew from the start-up
        metadata (all topics) is dropped from the cache when the first other topic is looked
        up (e.g. the dead-letter topic), failing its pending batches with NotLeaderForPartition.
        """
        assert self._producer is not None, "Output.start() first"
        await self._producer.client.add_topic(topic)

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
        await asyncio.gather(*await send_messages(producer, messages))
        if self.after_write is not None:
            self.after_write()


# -- the run ---------------------------------------------------------------------------------


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
        try:
            self.codec = Codec.for_settings(self.settings, snapshot.input_spec, snapshot.task)
        except ValueError as exc:
            raise ScoringError(f"checkpoint {checkpoint.version}'s model: {exc}") from None
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
        batch = decode_for_scoring(self.codec, records)
        outputs = (
            outputs_rowwise(snapshot, batch.features)
            if len(batch.records)
            else np.empty((0, snapshot.task.outputs))
        )
        messages = [
            OutgoingMessage(
                self.output_topic,
                prediction_key(record),
                prediction_value(row, label, snapshot.version, snapshot.task),
            )
            for record, row, label in zip(
                batch.records, outputs, batch.labels.tolist(), strict=True
            )
        ]
        messages.extend(dead_letter(reject, self.dead_letter_topic) for reject in batch.rejects)
        await output.publish(consumer, messages, offsets)
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
