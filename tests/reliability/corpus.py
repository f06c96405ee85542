"""Corpus: malformed Kafka records of every reject reason (codec.REASONS), mixed with good ones.

Each malformed record has exactly one defect, so its reason is unambiguous. The corpora cover
every reason of their format: `bad_json` exists only in the JSON format.
"""

from __future__ import annotations

import json
import random

from service.synthetic import synthetic_susy

Pair = tuple[bytes | None, bytes | None]
MAX_RECORD_BYTES = 4096  # the services under test run with this limit


def _row(width: int, value: str = "0.5") -> list[str]:
    return [value] * width


def _csv(fields: list[str]) -> bytes:
    return ",".join(fields).encode()


def malformed_csv(width: int = 18) -> list[tuple[str, Pair]]:
    """(reason, (key, value)) for the default format: label key, comma-separated features."""
    row = _row(width)

    def one(index: int, text: str) -> bytes:
        fields = list(row)
        fields[index] = text
        return _csv(fields)

    return [
        ("empty", (b"1", b"")),
        ("empty", (b"0", None)),  # a tombstone
        ("oversize", (b"1", _csv(_row(width, "1" * (MAX_RECORD_BYTES // width + 8))))),
        ("encoding", (b"1", b"\xff\xfe" + _csv(row)[2:])),
        ("encoding", (b"0", _csv(row).replace(b"0.5", b"0.5\xe9", 1))),  # Latin-1
        ("width", (b"1", _csv(row[:-1]))),
        ("width", (b"0", _csv([*row, "0.5"]))),
        ("width", (b"1", b"0.5")),
        ("width", (b"1", _csv(row) + b",")),
        ("non_numeric", (b"1", one(0, "abc"))),
        ("non_numeric", (b"0", one(5, ""))),
        ("non_numeric", (b"1", one(17 % width, "1.0.0"))),
        ("non_numeric", (b"0", one(1, "0x1F"))),
        ("non_finite", (b"1", one(2, "nan"))),
        ("non_finite", (b"0", one(4, "inf"))),
        ("non_finite", (b"1", one(6, "-inf"))),
        ("non_finite", (b"0", one(7, "1e400"))),  # beyond float64
        ("non_finite", (b"1", one(8, "1e39"))),  # beyond float32
        ("missing_key", (None, _csv(row))),
        ("bad_label", (b"2", _csv(row))),
        ("bad_label", (b"1.0", _csv(row))),
        ("bad_label", (b"true", _csv(row))),
        ("bad_label", (b"-1", _csv(row))),
        ("bad_label", (b"\xff", _csv(row))),
    ]


def malformed_json(width: int = 18) -> list[tuple[str, Pair]]:
    """(reason, (key, value)) for STREAMFIT_MESSAGE_FORMAT=json: {"features": [...], "label"}."""
    row = [0.5] * width

    def message(**fields: object) -> bytes:
        return json.dumps({"features": row, "label": 1, **fields}).encode()

    def with_feature(value: str) -> bytes:
        return (
            b'{"features": [' + b", ".join([b"0.5"] * (width - 1) + [value.encode()]) + b"], "
            b'"label": 0}'
        )

    return [
        ("empty", (None, b"")),
        ("oversize", (None, message(padding="x" * MAX_RECORD_BYTES))),
        ("encoding", (None, message(note="?").replace(b"?", b"\xff"))),
        ("bad_json", (None, b"not json")),
        ("bad_json", (None, b'{"features": [0.5, 0.5')),
        ("bad_json", (None, b"[0.5, 0.5]")),
        ("bad_json", (None, b"null")),
        ("bad_json", (None, json.dumps({"label": 1}).encode())),
        ("bad_json", (None, json.dumps({"features": "0.5", "label": 1}).encode())),
        ("bad_label", (None, message(label=2))),
        ("bad_label", (None, message(label=True))),
        ("bad_label", (None, message(label="1"))),
        ("bad_label", (None, message(label=None))),
        ("width", (None, message(features=row[:-1]))),
        ("width", (None, message(features=[]))),
        ("non_numeric", (None, message(features=[*row[:-1], "0.5"]))),
        ("non_numeric", (None, message(features=[*row[:-1], None]))),
        ("non_numeric", (None, message(features=[*row[:-1], [0.5]]))),
        ("non_numeric", (None, message(features=[*row[:-1], True]))),
        ("non_finite", (None, with_feature("NaN"))),
        ("non_finite", (None, with_feature("Infinity"))),
        ("non_finite", (None, with_feature("1e400"))),
        ("non_finite", (None, with_feature("1" * 400))),  # an integer beyond float64
        ("non_finite", (None, with_feature("1e39"))),  # beyond float32
    ]


def good_pairs(rows: int, message_format: str, seed: int = 0, width: int = 18) -> list[Pair]:
    x, y = synthetic_susy(rows, seed=seed, num_features=width)
    if message_format == "json":
        return [
            (None, json.dumps({"features": r, "label": int(label)}).encode())
            for r, label in zip(x.tolist(), y.tolist(), strict=True)
        ]
    return [
        (b"1" if label else b"0", ",".join(f"{v:.6f}" for v in r).encode())
        for r, label in zip(x.tolist(), y.tolist(), strict=True)
    ]


def mixed(
    good: list[Pair], bad: list[tuple[str, Pair]], seed: int = 0
) -> tuple[list[Pair], dict[int, str]]:
    """Good and bad records shuffled together; returns them and {index of a bad one: reason}."""
    tagged: list[tuple[Pair, str | None]] = [(pair, None) for pair in good]
    tagged += [(pair, reason) for reason, pair in bad]
    random.Random(seed).shuffle(tagged)
    pairs = [pair for pair, _ in tagged]
    return pairs, {i: reason for i, (_, reason) in enumerate(tagged) if reason is not None}
