"""Codec: Kafka records to feature/label arrays, vectorized per batch; bad records are rejects.

Two message formats (SPEC.md, Messages):
- csv: key = label as text ("0"/"1"), value = `num_features` comma-separated decimals;
- json: value = {"features": [...], "label": 0|1}, key unused.

A record that cannot be decoded is never trained on: it comes back as a `Reject` carrying
the reason (the `reason` label of `streamfit_records_rejected_total`) and a readable detail,
and the trainer sends it to the dead-letter topic.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.csv as arrow_csv

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
    """Decoded features [n, num_features] float32, labels [n] float32, and the rejects."""

    features: np.ndarray
    labels: np.ndarray
    rejects: list[Reject] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def extended(self, other: DecodedBatch) -> DecodedBatch:
        """This batch followed by `other` (rows, labels and rejects)."""
        return DecodedBatch(
            np.concatenate([self.features, other.features]),
            np.concatenate([self.labels, other.labels]),
            [*self.rejects, *other.rejects],
        )


class Codec:
    """Decodes batches of records of one message format and width.

    >>> from types import SimpleNamespace as R
    >>> batch = Codec(num_features=2).decode([R(topic="t", partition=0, offset=0,
    ...     key=b"1", value=b"0.5,2"), R(topic="t", partition=0, offset=1, key=b"7", value=b"1,1")])
    >>> batch.features.tolist(), batch.labels.tolist(), [r.reason for r in batch.rejects]
    ([[0.5, 2.0]], [1.0], ['bad_label'])
    """

    def __init__(
        self, num_features: int, message_format: str = "csv", max_record_bytes: int = 1_000_000
    ) -> None:
        if message_format not in ("csv", "json"):
            raise ValueError(f"unknown message format {message_format!r}")
        self.num_features = num_features
        self.message_format = message_format
        self.max_record_bytes = max_record_bytes

    def decode(self, records: Sequence[Any]) -> DecodedBatch:
        """Decode a batch; order of the good records is kept."""
        if self.message_format == "csv":
            return self._decode_csv(records)
        return self._decode_json(records)

    def _empty(self, rejects: list[Reject]) -> DecodedBatch:
        return DecodedBatch(
            np.empty((0, self.num_features), np.float32), np.empty((0,), np.float32), rejects
        )

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
        clean = self._decode_clean_csv(records)
        if clean is not None:
            return clean
        rejects: list[Reject] = []
        good: list[Any] = []
        labels: list[float] = []
        commas = self.num_features - 1
        for record in records:
            reject = self._precheck(record)
            if reject is None:
                key = record.key
                if key is None:
                    reject = Reject(record, "missing_key", "key (the label) is missing")
                elif key == b"1" or key == b"0":
                    if record.value.count(b",") != commas:
                        width = record.value.count(b",") + 1
                        reject = Reject(
                            record, "width", f"{width} values, expected {self.num_features}"
                        )
                else:
                    reject = Reject(record, "bad_label", f"label {key[:32]!r} is not 0 or 1")
            if reject is None:
                good.append(record)
                labels.append(1.0 if record.key == b"1" else 0.0)
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
            if not isinstance(message, dict) or not isinstance(message.get("features"), list):
                rejects.append(
                    Reject(record, "bad_json", 'expected {"features": [...], "label": 0|1}')
                )
                continue
            label = message.get("label")
            if label not in (0, 1) or isinstance(label, bool):
                rejects.append(Reject(record, "bad_label", f"label {label!r:.32} is not 0 or 1"))
                continue
            row = message["features"]
            if len(row) != self.num_features:
                rejects.append(
                    Reject(record, "width", f"{len(row)} values, expected {self.num_features}")
                )
                continue
            if not set(map(type, row)) <= _JSON_NUMBERS:
                rejects.append(Reject(record, "non_numeric", "features must be JSON numbers"))
                continue
            good.append(record)
            rows.append(row)
            labels.append(float(label))
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
