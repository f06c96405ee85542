"""Predictions: records decoded for scoring, the forward pass, and the output records.

One prediction per source record, keyed `topic/partition/offset`, valued with the task's
prediction fields and the model version (docs/SCORING.md). The batch run (`batch`) and the
follow loop (`follow`) both build their output records here.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from aiokafka import TopicPartition

from service.codec import Codec, Reject
from service.kafka.dead_letters import OutgoingMessage, dead_letter
from service.model.inputs import Batch, concat
from service.model.task import Task
from service.scoring.errors import ScoringError
from service.serving.snapshot import ACTIVATIONS, ModelSnapshot
from service.settings import Settings


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


@dataclass(frozen=True)
class PartitionOutput:
    """What one input partition's records of a batch produced, and the offset to commit."""

    messages: list[OutgoingMessage]
    next_offset: int


@dataclass
class ScoredBatch:
    """A batch's predictions and dead letters, each with the partition of its source record."""

    batch: ScorableBatch
    outputs: np.ndarray
    model_version: int
    messages: list[OutgoingMessage]
    sources: list[TopicPartition]

    def by_partition(
        self, next_offsets: dict[TopicPartition, int]
    ) -> dict[TopicPartition, PartitionOutput]:
        """The messages of each partition in `next_offsets` (also those that produced none)."""
        grouped: dict[TopicPartition, list[OutgoingMessage]] = {tp: [] for tp in next_offsets}
        for message, tp in zip(self.messages, self.sources, strict=True):
            grouped[tp].append(message)
        return {tp: PartitionOutput(grouped[tp], next_offsets[tp]) for tp in next_offsets}


def score_records(
    codec: Codec,
    snapshot: ModelSnapshot,
    records: Sequence[Any],
    output_topic: str,
    dead_letter_topic: str,
) -> ScoredBatch:
    """Decode, run the row-wise forward pass and build one prediction per scorable record and
    one dead letter per reject. CPU-bound: the follow loop runs it off the event loop."""
    batch = decode_for_scoring(codec, records)
    outputs = (
        outputs_rowwise(snapshot, batch.features)
        if len(batch.records)
        else np.empty((0, snapshot.task.outputs))
    )
    messages = [
        OutgoingMessage(
            output_topic,
            prediction_key(record),
            prediction_value(row, label, snapshot.version, snapshot.task),
        )
        for record, row, label in zip(batch.records, outputs, batch.labels.tolist(), strict=True)
    ]
    sources = [TopicPartition(r.topic, r.partition) for r in batch.records]
    messages.extend(dead_letter(reject, dead_letter_topic) for reject in batch.rejects)
    sources.extend(TopicPartition(r.record.topic, r.record.partition) for r in batch.rejects)
    return ScoredBatch(batch, outputs, snapshot.version, messages, sources)


def codec_for(settings: Settings, snapshot: ModelSnapshot) -> Codec:
    """The codec of the records `snapshot`'s model takes (ScoringError if the settings and
    the model disagree)."""
    try:
        return Codec.for_settings(settings, snapshot.input_spec, snapshot.task)
    except ValueError as exc:
        raise ScoringError(f"checkpoint {snapshot.version}'s model: {exc}") from None
