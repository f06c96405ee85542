"""Codec: Kafka records to model inputs and labels, vectorized per batch; bad records are rejects.

Message formats (SPEC.md, Messages; docs/RECORDS.md):
- csv: key = label as text (a class name or index, or a decimal target for regression),
  value = the features as comma-separated decimals, in feature order;
- json: value = {"features": [...], "label": ...} (positional), or, with named features, a flat
  object {"<feature>": value, ..., "<label field>": label}; key unused;
- avro: the Confluent wire format, its schema from the Schema Registry, fields read by name as
  for a flat JSON object.
Labels are parsed by the task (`service.model.task.Task`); features by the model's inputs
(`service.model.inputs.InputSpec`).

A record that cannot be decoded is never trained on: it comes back as a `Reject` carrying
the reason (the `reason` label of `streamfit_records_rejected_total`) and a readable detail,
and the trainer sends it to the dead-letter topic.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.csv as arrow_csv

from service.model.inputs import Batch, InputSpec, batch_rows, concat, take
from service.model.task import LabelError, Task

_JSON_NUMBERS = {int, float}
_LABEL_KEYS = {b"0", b"1"}

# The batch's fields, one per line, as a single float64 column: Arrow's CSV reader parses
# them with the GIL released (several times faster than NumPy's parsers, which hold it), so
# the learner thread keeps running Python while the event loop decodes the next batch.
# No quoting, no empty lines skipped, no null spellings: anything but a number is an error.
_ARROW_READ = arrow_csv.ReadOptions(column_names=["value"], use_threads=False)
_ARROW_PARSE = arrow_csv.ParseOptions(quote_char=False, ignore_empty_lines=False)
_ARROW_CONVERT = arrow_csv.ConvertOptions(
    column_types={"value": pa.float64()}, null_values=[], strings_can_be_null=False
)

REASONS = (
    "empty",
    "oversize",
    "encoding",
    "width",
    "non_numeric",
    "non_finite",
    "missing_key",
    "bad_label",
    "bad_json",
    "missing_field",
    "bad_type",
    "unknown_class",
    "unknown_schema",
)


class Record(Protocol):
    """What the codec needs of a Kafka record (aiokafka's ConsumerRecord has it)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


@dataclass(frozen=True)
class Reject:
    """A record that cannot be trained on, and why."""

    record: Any
    reason: str
    detail: str


@dataclass
class DecodedBatch:
    """Decoded model inputs (a float32 matrix [n, F], or one column per named input), labels
    [n] float32 (a class index, or the target), and the rejects."""

    features: Batch
    labels: np.ndarray
    rejects: list[Reject] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def extended(self, other: DecodedBatch) -> DecodedBatch:
        """This batch followed by `other` (rows, labels and rejects)."""
        if not len(other):
            return DecodedBatch(self.features, self.labels, [*self.rejects, *other.rejects])
        if not len(self):
            return DecodedBatch(other.features, other.labels, [*self.rejects, *other.rejects])
        return DecodedBatch(
            concat([self.features, other.features]),
            np.concatenate([self.labels, other.labels]),
            [*self.rejects, *other.rejects],
        )

    def mini_batches(self, size: int) -> Iterator[tuple[Batch, np.ndarray]]:
        """Features and labels of the rows in order, `size` at a time (the last may be fewer).

        >>> batch = DecodedBatch(np.zeros((5, 2), np.float32), np.arange(5, dtype=np.float32))
        >>> [labels.tolist() for _, labels in batch.mini_batches(2)]
        [[0.0, 1.0], [2.0, 3.0], [4.0]]
        """
        for start in range(0, len(self), size):
            rows = slice(start, start + size)
            yield take(self.features, rows), self.labels[rows]


class Codec:
    """Decodes batches of records of one message format for one model's inputs and task.

    >>> from types import SimpleNamespace as R
    >>> batch = Codec(num_features=2).decode([R(topic="t", partition=0, offset=0,
    ...     key=b"1", value=b"0.5,2"), R(topic="t", partition=0, offset=1, key=b"7", value=b"1,1")])
    >>> batch.features.tolist(), batch.labels.tolist(), [r.reason for r in batch.rejects]
    ([[0.5, 2.0]], [1.0], ['bad_label'])
    """

    def __init__(
        self,
        num_features: int | None = None,
        message_format: str = "csv",
        max_record_bytes: int = 1_000_000,
        *,
        inputs: InputSpec | None = None,
        task: Task | None = None,
        label_field: str = "label",
        avro: Any = None,
    ) -> None:
        if message_format not in ("csv", "json", "avro"):
            raise ValueError(f"unknown message format {message_format!r}")
        if inputs is None:
            inputs = InputSpec.positional(num_features or 0)
        if message_format == "avro" and avro is None:
            raise ValueError("the avro format needs an AvroDecoder")
        if message_format != "json" or not inputs.numeric:
            if message_format == "csv" and not inputs.numeric:
                raise ValueError(
                    "CSV records are numeric: the model's string inputs need json or avro"
                )
        if message_format == "avro" and not inputs.has_names:
            raise ValueError("Avro fields are read by name: set STREAMFIT_FEATURES")
        self.inputs = inputs
        self.task = task or Task()
        self.num_features = inputs.width
        self.message_format = message_format
        self.max_record_bytes = max_record_bytes
        self.label_field = label_field
        self.avro = avro

    @classmethod
    def for_settings(cls, settings: Any, inputs: InputSpec, task: Task) -> Codec:
        """The codec a service with these settings uses for a model with these inputs."""
        avro = None
        if settings.message_format == "avro":
            from service.avro import AvroDecoder
            from service.schema_registry import SchemaRegistry

            avro = AvroDecoder(SchemaRegistry(settings.schema_registry_url))
        return cls(
            message_format=settings.message_format,
            max_record_bytes=settings.max_record_bytes,
            inputs=inputs,
            task=task,
            label_field=settings.label_field,
            avro=avro,
        )

    def decode(self, records: Sequence[Any]) -> DecodedBatch:
        """Decode a batch; order of the good records is kept. A Schema Registry that cannot
        be reached raises `RegistryUnavailable` (the batch is retried, never dead-lettered)."""
        if self.message_format == "csv":
            batch = self._decode_csv(records)
        elif self.message_format == "json":
            batch = self._decode_json(records)
        else:
            batch = self._decode_avro(records)
        if self.inputs.named and not isinstance(batch.features, dict):
            batch.features = self.inputs.from_matrix(batch.features)
        return batch

    def _empty(self, rejects: list[Reject]) -> DecodedBatch:
        return DecodedBatch(
            np.empty((0, self.num_features), np.float32), np.empty((0,), np.float32), rejects
        )

    def _label(self, record: Any, value: Any, positional: bool = False) -> float | Reject:
        if positional and self.task.is_default_binary:
            # The tutorial's records: 0 or 1 as a JSON number, nothing else (no names, no
            # booleans), as before named records existed.
            if value in (0, 1) and not isinstance(value, bool):
                return float(value)
            return Reject(record, "bad_label", f"label {value!r:.32} is not 0 or 1")
        label = self.task.label(value)
        if isinstance(label, LabelError):
            return Reject(record, label.reason, label.detail)
        return label

    def _precheck(self, record: Any) -> Reject | None:
        value = record.value
        if not value:
            return Reject(record, "empty", "record value is empty")
        if len(value) > self.max_record_bytes:
            return Reject(
                record, "oversize", f"value is {len(value)} bytes, limit {self.max_record_bytes}"
            )
        if b"\x00" in value or b"\n" in value or b"\r" in value:
            return Reject(record, "non_numeric", "value contains NUL or line-break bytes")
        return None

    def _decode_csv(self, records: Sequence[Any]) -> DecodedBatch:
        clean = self._decode_clean_csv(records) if self.task.is_default_binary else None
        if clean is not None:
            return clean
        rejects: list[Reject] = []
        good: list[Any] = []
        labels: list[float] = []
        commas = self.num_features - 1
        default_binary = self.task.is_default_binary
        for record in records:
            reject = self._precheck(record)
            label = 0.0
            if reject is None:
                key = record.key
                if key is None:
                    reject = Reject(record, "missing_key", "key (the label) is missing")
                elif default_binary and key not in _LABEL_KEYS:
                    reject = Reject(record, "bad_label", f"label {key[:32]!r} is not 0 or 1")
                else:
                    parsed = self.task.key_label(key)
                    if isinstance(parsed, LabelError):
                        reject = Reject(record, parsed.reason, parsed.detail)
                    else:
                        label = parsed
                if reject is None and record.value.count(b",") != commas:
                    width = record.value.count(b",") + 1
                    reject = Reject(
                        record, "width", f"{width} values, expected {self.num_features}"
                    )
            if reject is None:
                good.append(record)
                labels.append(label)
            else:
                rejects.append(reject)
        if not good:
            return self._empty(rejects)
        try:
            # One parse for the whole batch; every good record has num_features fields.
            features = _parse_fields(b",".join(r.value for r in good))
            if features.size != len(good) * self.num_features:
                raise ValueError(f"parsed {features.size} values")
            features = features.reshape(len(good), self.num_features)
            keep = np.ones(len(good), dtype=bool)
        except (ValueError, UnicodeDecodeError):  # pa.ArrowInvalid is a ValueError
            features, keep = self._parse_rows_slowly(good, rejects)
        return self._finish(good, features, keep, labels, rejects)

    def _decode_clean_csv(self, records: Sequence[Any]) -> DecodedBatch | None:
        """The common case, checked and parsed for the whole batch at once: every record has
        a 0/1 key and a value of the right width without forbidden bytes. None when any record
        does not; the record-by-record path then finds which, and why."""
        values = [r.value for r in records]
        keys = [r.key for r in records]
        if not values or None in values or not set(keys) <= _LABEL_KEYS:
            return None
        lengths = list(map(len, values))
        if min(lengths) == 0 or max(lengths) > self.max_record_bytes:
            return None
        if {v.count(b",") for v in values} != {self.num_features - 1}:
            return None
        joined = b",".join(values)
        if b"\n" in joined or b"\r" in joined or b"\x00" in joined:
            return None
        try:
            features = _parse_fields(joined).reshape(len(values), self.num_features)
        except ValueError:
            return None
        labels = np.frombuffer(b"".join(keys), dtype=np.uint8) == ord("1")
        keep = np.ones(len(values), dtype=bool)
        return self._finish(list(records), features, keep, labels, [])

    def _parse_rows_slowly(
        self, good: list[Any], rejects: list[Reject]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Row-by-row parse, only when the batch parse failed, to find the bad rows."""
        features = np.zeros((len(good), self.num_features), dtype=np.float64)
        keep = np.zeros(len(good), dtype=bool)
        for index, record in enumerate(good):
            try:
                text = record.value.decode("utf-8")
            except UnicodeDecodeError as exc:
                rejects.append(Reject(record, "encoding", f"value is not UTF-8: {exc.reason}"))
                continue
            try:
                features[index] = np.array(text.split(","), dtype=np.float64)
            except ValueError as exc:
                rejects.append(Reject(record, "non_numeric", str(exc)[:200]))
                continue
            keep[index] = True
        return features, keep

    def _decode_json(self, records: Sequence[Any]) -> DecodedBatch:
        rejects: list[Reject] = []
        good: list[Any] = []
        rows: list[list[Any]] = []
        labels: list[float] = []
        named: list[tuple[Any, dict[str, Any]]] = []  # flat objects, decoded by name
        for record in records:
            reject = self._precheck(record)
            if reject is not None:
                rejects.append(reject)
                continue
            try:
                message = json.loads(record.value)
            except UnicodeDecodeError as exc:
                rejects.append(Reject(record, "encoding", f"value is not UTF-8: {exc.reason}"))
                continue
            except ValueError as exc:
                rejects.append(Reject(record, "bad_json", f"invalid JSON: {exc}"[:200]))
                continue
            if not isinstance(message, dict):
                rejects.append(Reject(record, "bad_json", self._json_shape()))
                continue
            if not isinstance(message.get("features"), list):
                if self.inputs.has_names and "features" not in message:
                    if good:  # positional rows earlier in this batch: they go the named way too
                        named.extend(self._as_objects(good, rows, labels))
                        good, rows, labels = [], [], []
                    named.append((record, message))
                else:
                    rejects.append(Reject(record, "bad_json", self._json_shape()))
                continue
            label = self._label(record, message.get("label"), positional=True)
            if isinstance(label, Reject):
                rejects.append(label)
                continue
            row = message["features"]
            if len(row) != self.num_features:
                rejects.append(
                    Reject(record, "width", f"{len(row)} values, expected {self.num_features}")
                )
                continue
            if not self.inputs.numeric or named:
                # Strings among the features, or named records earlier in this batch: every
                # row goes the named way, so the good rows keep the records' order.
                named.append(
                    (
                        record,
                        {
                            **dict(zip(self.inputs.names, row, strict=True)),
                            self.label_field: message["label"],
                        },
                    )
                )
                continue
            if not set(map(type, row)) <= _JSON_NUMBERS:
                rejects.append(Reject(record, "non_numeric", "features must be JSON numbers"))
                continue
            good.append(record)
            rows.append(row)
            labels.append(label)
        if not named:
            return self._positional_rows(good, rows, labels, rejects)
        objects = self._decode_objects(named)
        objects.rejects[:0] = rejects
        return objects

    def _as_objects(
        self, good: list[Any], rows: list[list[Any]], labels: list[float]
    ) -> list[tuple[Any, dict[str, Any]]]:
        index_labels = {"binary", "multiclass"}
        return [
            (
                record,
                {
                    **dict(zip(self.inputs.names, row, strict=True)),
                    self.label_field: int(label) if self.task.kind in index_labels else label,
                },
            )
            for record, row, label in zip(good, rows, labels, strict=True)
        ]

    def _json_shape(self) -> str:
        if self.inputs.has_names:
            names = ", ".join(f'"{n}": ...' for n in self.inputs.names[:3])
            return (
                f'expected {{{names}, "{self.label_field}": ...}} '
                'or {"features": [...], "label": ...}'
            )
        return 'expected {"features": [...], "label": ...}'

    def _positional_rows(
        self, good: list[Any], rows: list[list[Any]], labels: list[float], rejects: list[Reject]
    ) -> DecodedBatch:
        if not good:
            return self._empty(rejects)
        try:
            features = np.array(rows, dtype=np.float64)
            keep = np.ones(len(good), dtype=bool)
        except OverflowError:  # an integer beyond float64: find it row by row
            features = np.zeros((len(good), self.num_features), dtype=np.float64)
            keep = np.zeros(len(good), dtype=bool)
            for index, row in enumerate(rows):
                try:
                    features[index] = row
                    keep[index] = True
                except OverflowError:
                    rejects.append(Reject(good[index], "non_finite", "number beyond float64 range"))
        return self._finish(good, features, keep, labels, rejects)

    def _decode_avro(self, records: Sequence[Any]) -> DecodedBatch:
        from service.avro import AvroReject

        rejects: list[Reject] = []
        named: list[tuple[Any, dict[str, Any]]] = []
        for record in records:
            value = record.value
            if not value:
                rejects.append(Reject(record, "empty", "record value is empty"))
                continue
            if len(value) > self.max_record_bytes:
                rejects.append(
                    Reject(
                        record,
                        "oversize",
                        f"value is {len(value)} bytes, limit {self.max_record_bytes}",
                    )
                )
                continue
            try:
                named.append((record, self.avro.decode(value)))
            except AvroReject as exc:
                rejects.append(Reject(record, exc.reason, exc.detail))
        objects = self._decode_objects(named)
        objects.rejects[:0] = rejects
        return objects

    def _decode_objects(self, named: list[tuple[Any, dict[str, Any]]]) -> DecodedBatch:
        """Flat objects (named JSON, Avro): the label field by the task, the features by name."""
        rejects: list[Reject] = []
        records: list[Any] = []
        objects: list[dict[str, Any]] = []
        labels: list[float] = []
        for record, message in named:
            if message.get(self.label_field) is None:
                rejects.append(
                    Reject(record, "missing_field", f"field {self.label_field!r} is missing")
                )
                continue
            label = self._label(record, message[self.label_field])
            if isinstance(label, Reject):
                rejects.append(label)
                continue
            records.append(record)
            objects.append(message)
            labels.append(label)
        if not objects:
            return self._empty(rejects)
        features, errors = self.inputs.from_objects(objects)
        for index, (reason, detail) in sorted(errors.items()):
            rejects.append(Reject(records[index], reason, detail))
        kept = np.asarray([label for i, label in enumerate(labels) if i not in errors], np.float32)
        if not batch_rows(features) and not self.inputs.named:
            return self._empty(rejects)
        return DecodedBatch(features, kept, rejects)

    def _finish(
        self,
        good: list[Any],
        features: np.ndarray,
        keep: np.ndarray,
        labels: list[float] | np.ndarray,
        rejects: list[Reject],
    ) -> DecodedBatch:
        """Reject rows that are not finite in float32 (NaN, Inf, or beyond float32's range)."""
        with np.errstate(over="ignore"):
            narrow = features.astype(np.float32)
        finite = np.isfinite(narrow).all(axis=1)
        for row in np.flatnonzero(keep & ~finite):
            rejects.append(Reject(good[row], "non_finite", "NaN, infinite or beyond float32 range"))
        keep &= finite
        return DecodedBatch(narrow[keep], np.asarray(labels, dtype=np.float32)[keep], rejects)


def _parse_fields(data: bytes) -> np.ndarray:
    """Every comma-separated decimal of `data`, in order, as float64 (ValueError if any is not)."""
    table = arrow_csv.read_csv(
        pa.py_buffer(data.replace(b",", b"\n")),
        read_options=_ARROW_READ,
        parse_options=_ARROW_PARSE,
        convert_options=_ARROW_CONVERT,
    )
    return table.column(0).to_numpy()


def encode_csv(features: np.ndarray, labels: np.ndarray) -> list[tuple[bytes, bytes]]:
    """(key, value) pairs in the default format, one per row: the producer's side."""
    text_rows = [",".join(map(repr, row)) for row in features.astype(np.float64).round(6).tolist()]
    return [
        (b"1" if label else b"0", row.encode())
        for label, row in zip(labels.tolist(), text_rows, strict=True)
    ]
