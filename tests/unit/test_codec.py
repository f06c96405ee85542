"""Codec: both message formats, every reject reason, mixed batches, the vectorized parse."""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np
import pytest

from service.codec import REASONS, Codec, DecodedBatch, encode_csv
from service.model.inputs import InputSpec
from service.model.task import Task
from tests.unit.conftest import make_record

WIDTH = 3
LIMIT = 256  # max_record_bytes used by the codecs below


def csv_codec() -> Codec:
    return Codec(num_features=WIDTH, message_format="csv", max_record_bytes=LIMIT)


def json_codec() -> Codec:
    return Codec(num_features=WIDTH, message_format="json", max_record_bytes=LIMIT)


def json_value(features: Any, label: Any = 1, **extra: Any) -> bytes:
    return json.dumps({"features": features, "label": label, **extra}).encode()


def decode_one(codec: Codec, record: Any) -> DecodedBatch:
    batch = codec.decode([record])
    assert len(batch) + len(batch.rejects) == 1
    return batch


# (key, value, expected reason) for one record in the csv format, width 3.
CSV_REJECTS = [
    pytest.param(b"1", b"", "empty", id="empty-bytes"),
    pytest.param(b"1", None, "empty", id="empty-none"),
    pytest.param(b"1", b"1,2," + b"0" * LIMIT + b"3", "oversize", id="oversize"),
    pytest.param(b"1", b"1,2,\xff", "encoding", id="encoding-ff"),
    pytest.param(b"0", b"1,\xc3\x28,3", "encoding", id="encoding-bad-continuation"),
    pytest.param(b"1", b"1,2", "width", id="width-short"),
    pytest.param(b"1", b"1,2,3,4", "width", id="width-long"),
    pytest.param(b"1", b"1,2,3,", "width", id="width-trailing-comma"),
    pytest.param(b"1", b"123", "width", id="width-one"),
    pytest.param(b"1", b"1,x,3", "non_numeric", id="non-numeric-letter"),
    pytest.param(b"1", b"1,,3", "non_numeric", id="non-numeric-blank"),
    pytest.param(b"0", b"0x10,1,2", "non_numeric", id="non-numeric-hex"),
    pytest.param(b"0", b"1,2,1e", "non_numeric", id="non-numeric-bad-exponent"),
    pytest.param(b"1", "1,2,\u00e9".encode(), "non_numeric", id="non-numeric-utf8-letter"),
    pytest.param(b"1", b"nan,1,2", "non_finite", id="nan"),
    pytest.param(b"1", b"1,NaN,2", "non_finite", id="NaN"),
    pytest.param(b"1", b"1,2,inf", "non_finite", id="inf"),
    pytest.param(b"0", b"-inf,1,2", "non_finite", id="minus-inf"),
    pytest.param(b"0", b"1,Infinity,2", "non_finite", id="Infinity"),
    pytest.param(b"0", b"1,2,1e400", "non_finite", id="float64-overflow"),
    pytest.param(b"0", b"1,2,1e39", "non_finite", id="float32-overflow"),
    pytest.param(None, b"1,2,3", "missing_key", id="missing-key"),
    pytest.param(b"2", b"1,2,3", "bad_label", id="label-2"),
    pytest.param(b"", b"1,2,3", "bad_label", id="label-empty"),
    pytest.param(b"true", b"1,2,3", "bad_label", id="label-true"),
    pytest.param(b" 1", b"1,2,3", "bad_label", id="label-space"),
    pytest.param(b"1.0", b"1,2,3", "bad_label", id="label-float-text"),
]

# (value, expected reason) for one record in the json format, width 3.
JSON_REJECTS = [
    pytest.param(b"", "empty", id="empty-bytes"),
    pytest.param(None, "empty", id="empty-none"),
    pytest.param(json_value([1, 2, 3], note="x" * LIMIT), "oversize", id="oversize"),
    pytest.param(b'{"features": [1, 2, 3], "label": 1, "n": "\xff"}', "encoding", id="encoding"),
    pytest.param(b"not json", "bad_json", id="not-json"),
    pytest.param(b'{"features": [1, 2, 3], "label": 1', "bad_json", id="truncated"),
    pytest.param(b"[1, 2, 3]", "bad_json", id="top-level-list"),
    pytest.param(b'"1,2,3"', "bad_json", id="top-level-string"),
    pytest.param(b'{"label": 1}', "bad_json", id="no-features"),
    pytest.param(json_value("1,2,3"), "bad_json", id="features-string"),
    pytest.param(json_value({"a": 1}), "bad_json", id="features-object"),
    pytest.param(json_value([1, 2]), "width", id="width-short"),
    pytest.param(json_value([1, 2, 3, 4]), "width", id="width-long"),
    pytest.param(json_value([]), "width", id="width-empty"),
    pytest.param(json_value([1, {}, 3]), "non_numeric", id="non-numeric-object"),
    pytest.param(json_value([1, "x", 3]), "non_numeric", id="non-numeric-string"),
    pytest.param(json_value([1, [2, 3], 3]), "non_numeric", id="non-numeric-ragged-list"),
    pytest.param(b'{"features": [1, NaN, 3], "label": 0}', "non_finite", id="NaN"),
    pytest.param(b'{"features": [1, Infinity, 3], "label": 0}', "non_finite", id="Infinity"),
    pytest.param(b'{"features": [-Infinity, 2, 3], "label": 1}', "non_finite", id="minus-inf"),
    pytest.param(b'{"features": [1e400, 2, 3], "label": 1}', "non_finite", id="float64-overflow"),
    pytest.param(b'{"features": [1e39, 2, 3], "label": 1}', "non_finite", id="float32-overflow"),
    pytest.param(json_value([1, 2, 3], label=2), "bad_label", id="label-2"),
    pytest.param(json_value([1, 2, 3], label="1"), "bad_label", id="label-string"),
    pytest.param(json_value([1, 2, 3], label=True), "bad_label", id="label-true"),
    pytest.param(json_value([1, 2, 3], label=None), "bad_label", id="label-null"),
    pytest.param(json_value([1, 2, 3], label=0.5), "bad_label", id="label-half"),
    pytest.param(b'{"features": [1, 2, 3]}', "bad_label", id="label-missing"),
]


NAMED = InputSpec(("amount", "country"), ("number", "string"), named=True, ranks=(2, 2))
COLORS = Task.from_settings("multiclass", classes=("red", "green", "blue"))


def named_codec(task: Task = COLORS) -> Codec:
    return Codec(message_format="json", max_record_bytes=LIMIT, inputs=NAMED, task=task)


def named_value(**fields: Any) -> bytes:
    return json.dumps({"amount": 1.5, "country": "FR", "label": "red", **fields}).encode()


# (value, expected reason) for one flat JSON object with named fields, multiclass.
NAMED_REJECTS = [
    pytest.param(
        json.dumps({"country": "FR", "label": "red"}).encode(), "missing_field", id="no-amount"
    ),
    pytest.param(named_value(country=None), "missing_field", id="null-is-missing"),
    pytest.param(
        json.dumps({"amount": 1, "country": "FR"}).encode(), "missing_field", id="no-label"
    ),
    pytest.param(named_value(amount="12"), "bad_type", id="number-as-string"),
    pytest.param(named_value(country=3), "bad_type", id="string-as-number"),
    pytest.param(named_value(amount=[1]), "bad_type", id="number-as-list"),
    pytest.param(named_value(label="purple"), "unknown_class", id="unknown-class-name"),
    pytest.param(named_value(label=3), "unknown_class", id="class-index-out-of-range"),
    pytest.param(named_value(amount=1e39), "non_finite", id="float32-overflow"),
]


def _reasons(params: list[Any]) -> set[str]:
    return {p.values[-1] for p in params}


def test_every_reason_is_covered_by_a_case() -> None:
    covered = _reasons(CSV_REJECTS) | _reasons(JSON_REJECTS) | _reasons(NAMED_REJECTS)
    # unknown_schema: an Avro schema id the registry does not know (tests/unit/test_avro.py
    # and the Avro codec test below).
    assert covered | {"unknown_schema"} == set(REASONS)


@pytest.mark.parametrize(("value", "reason"), NAMED_REJECTS)
def test_named_reject(value: bytes, reason: str) -> None:
    batch = decode_one(named_codec(), make_record(value))
    assert [r.reason for r in batch.rejects] == [reason]
    assert batch.rejects[0].detail


def test_named_records_by_name_with_extra_fields_ignored() -> None:
    records = [
        make_record(named_value(amount=2, country="DE", label="blue", note="extra")),
        make_record(named_value(amount=True, label=1)),  # an index, a bool as a number
        make_record(json.dumps({"features": [3, "US"], "label": "green"}).encode()),
        make_record(named_value(label="purple")),
    ]
    batch = named_codec().decode(records)
    assert isinstance(batch.features, dict)
    assert batch.features["amount"].tolist() == [[2.0], [1.0], [3.0]]
    assert batch.features["country"].tolist() == [["DE"], ["FR"], ["US"]]
    assert batch.labels.tolist() == [2.0, 1.0, 1.0]
    assert [r.reason for r in batch.rejects] == ["unknown_class"]


def test_named_fields_into_a_positional_model_follow_the_features_order() -> None:
    inputs = InputSpec.positional(3, ("c", "a", "b"))
    codec = Codec(message_format="json", inputs=inputs, task=Task.from_settings("regression"))
    value = json.dumps({"a": 1, "b": 2, "c": 3, "label": 0.25}).encode()
    batch = codec.decode([make_record(value)])
    assert batch.features.tolist() == [[3.0, 1.0, 2.0]]
    assert batch.labels.tolist() == [0.25]


def test_binary_named_records_take_class_names_and_booleans() -> None:
    task = Task.from_settings("binary", classes=("legit", "fraud"))
    codec = Codec(message_format="json", inputs=NAMED, task=task, label_field="is_fraud")
    values = [named_value(is_fraud=v) for v in ("fraud", "legit", True, 0, "maybe")]
    batch = codec.decode([make_record(v) for v in values])
    assert batch.labels.tolist() == [1.0, 0.0, 1.0, 0.0]
    assert [r.reason for r in batch.rejects] == ["unknown_class"]


@pytest.mark.parametrize(
    ("task", "key", "label"),
    [
        (Task.from_settings("regression"), b"-2.5", -2.5),
        (COLORS, b"blue", 2.0),
        (COLORS, b"1", 1.0),
        (Task.from_settings("multiclass", classes=("3", "1", "2")), b"1", 1.0),  # a name wins
    ],
)
def test_csv_keys_by_task(task: Task, key: bytes, label: float) -> None:
    codec = Codec(message_format="csv", inputs=InputSpec.positional(WIDTH), task=task)
    batch = codec.decode([make_record(b"1,2,3", key=key)])
    assert batch.labels.tolist() == [label] and not batch.rejects


def test_csv_is_refused_for_string_inputs() -> None:
    with pytest.raises(ValueError, match="string inputs"):
        Codec(message_format="csv", inputs=NAMED)


@pytest.mark.parametrize(("key", "value", "reason"), CSV_REJECTS)
def test_csv_reject(key: bytes | None, value: bytes | None, reason: str) -> None:
    record = make_record(value, key=key, offset=7)
    batch = decode_one(csv_codec(), record)
    assert len(batch) == 0
    assert batch.features.shape == (0, WIDTH) and batch.features.dtype == np.float32
    assert batch.labels.shape == (0,) and batch.labels.dtype == np.float32
    (reject,) = batch.rejects
    assert reject.record is record
    assert reject.reason == reason
    assert reject.reason in REASONS
    assert isinstance(reject.detail, str) and reject.detail


@pytest.mark.parametrize(("value", "reason"), JSON_REJECTS)
def test_json_reject(value: bytes | None, reason: str) -> None:
    record = make_record(value, key=None, offset=3)
    batch = decode_one(json_codec(), record)
    assert len(batch) == 0
    assert batch.features.shape == (0, WIDTH)
    (reject,) = batch.rejects
    assert reject.record is record
    assert reject.reason == reason
    assert isinstance(reject.detail, str) and reject.detail


def test_oversize_limit_is_inclusive() -> None:
    at_limit = b"1,2," + b"0" * (LIMIT - 5) + b"3"
    assert len(at_limit) == LIMIT
    batch = csv_codec().decode([make_record(at_limit), make_record(at_limit + b"0")])
    assert batch.features.tolist() == [[1.0, 2.0, 3.0]]
    assert [r.reason for r in batch.rejects] == ["oversize"]


def test_csv_decodes_good_records() -> None:
    records = [
        make_record(b"1.5,-2,3e2", key=b"0"),
        make_record(b"0,0.25,-1e-3", key=b"1"),
        make_record(b"+1,.5,7.", key=b"1"),
    ]
    batch = csv_codec().decode(records)
    assert batch.rejects == []
    assert batch.features.dtype == np.float32 and batch.labels.dtype == np.float32
    np.testing.assert_array_equal(
        batch.features,
        np.array([[1.5, -2, 300], [0, 0.25, -1e-3], [1, 0.5, 7]], dtype=np.float32),
    )
    assert batch.labels.tolist() == [0.0, 1.0, 1.0]


def test_json_decodes_good_records_and_ignores_the_key() -> None:
    records = [
        make_record(json_value([1.5, -2, 300], label=0), key=None),
        make_record(json_value([0, 0.25, -0.001], label=1), key=b"whatever"),
        make_record(json_value([1, 2, 3], label=1.0), key=b"0"),
    ]
    batch = json_codec().decode(records)
    assert batch.rejects == []
    np.testing.assert_array_equal(
        batch.features,
        np.array([[1.5, -2, 300], [0, 0.25, -0.001], [1, 2, 3]], dtype=np.float32),
    )
    assert batch.labels.tolist() == [0.0, 1.0, 1.0]


@pytest.mark.parametrize("message_format", ["csv", "json"])
def test_empty_batch(message_format: str) -> None:
    batch = Codec(5, message_format).decode([])
    assert len(batch) == 0 and batch.rejects == []
    assert batch.features.shape == (0, 5) and batch.labels.shape == (0,)


def test_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="xml"):
        Codec(3, "xml")


def test_float32_max_is_accepted() -> None:
    batch = csv_codec().decode([make_record(b"3.4e38,-3.4e38,0")])
    assert batch.rejects == []
    assert np.isfinite(batch.features).all()


# Values finite in float64 but beyond float32's range (max ~3.4028e38) would become inf in the
# float32 features: they are rejected as non_finite like NaN and Inf.
@pytest.mark.parametrize(
    ("message_format", "value"),
    [
        ("csv", b"1,2,1e39"),
        ("csv", b"-1e39,2,3"),
        ("csv", b"1,3.5e38,3"),
        ("json", b'{"features": [1, 2, 1e39], "label": 1}'),
        ("json", b'{"features": [1, -1e39, 3], "label": 0}'),
    ],
)
def test_float32_overflow_is_non_finite(message_format: str, value: bytes) -> None:
    codec = Codec(WIDTH, message_format)
    good = b"1,2,3" if message_format == "csv" else json_value([1, 2, 3])
    overflowing = make_record(value)
    batch = codec.decode([overflowing, make_record(good, offset=1)])
    assert np.isfinite(batch.features).all()
    assert batch.features.tolist() == [[1.0, 2.0, 3.0]]
    assert [(r.record, r.reason) for r in batch.rejects] == [(overflowing, "non_finite")]


def test_json_nested_feature_lists_are_rejected_not_raised() -> None:
    record = make_record(json_value([[1], [2], [3]]))
    batch = json_codec().decode([record])
    assert len(batch) == 0
    assert [r.reason for r in batch.rejects] == ["non_numeric"]


@pytest.mark.parametrize("with_bad_neighbour", [False, True])
def test_json_huge_integer_is_rejected_not_raised(with_bad_neighbour: bool) -> None:
    huge = make_record(b'{"features": [1, 2, 1' + b"0" * 400 + b'], "label": 1}', offset=0)
    records = [huge]
    if with_bad_neighbour:
        records.append(make_record(json_value([1, {}, 3]), offset=1))
    batch = Codec(WIDTH, "json").decode(records)
    assert len(batch) == 0
    assert huge in [r.record for r in batch.rejects]


def _verdict(batch: DecodedBatch, record: Any) -> tuple[str, Any]:
    for reject in batch.rejects:
        if reject.record is record:
            return ("rejected", reject.reason)
    return ("accepted", batch.features[0].tolist())


@pytest.mark.parametrize(
    ("message_format", "value"),
    [
        pytest.param("json", json_value(["1.5", "2", "3"]), id="json-strings"),
        pytest.param("json", json_value([True, False, True]), id="json-booleans"),
        pytest.param("json", json_value([None, 2, 3]), id="json-null"),
        pytest.param("csv", b"1\x00,2,3", id="csv-trailing-nul"),
    ],
)
def test_verdict_does_not_depend_on_neighbours(message_format: str, value: bytes) -> None:
    codec = Codec(WIDTH, message_format)
    bad = json_value([1, {}, 3]) if message_format == "json" else b"1,x,3"
    record = make_record(value)
    alone = _verdict(codec.decode([record]), record)
    record_again = make_record(value)
    together = codec.decode([record_again, make_record(bad, offset=1)])
    assert _verdict(together, record_again) == alone


def _random_good_row(rng: np.random.Generator, width: int) -> tuple[list[float], bytes]:
    row = (rng.standard_normal(width) * 10.0 ** rng.integers(-3, 4, width)).tolist()
    return row, ",".join(repr(v) for v in row).encode()


@pytest.mark.parametrize("message_format", ["csv", "json"])
@pytest.mark.parametrize("slow_path", [False, True], ids=["fast-path", "row-by-row"])
def test_mixed_batch_keeps_good_records_in_order(message_format: str, slow_path: bool) -> None:
    rng = np.random.default_rng(11 + slow_path)
    cases = CSV_REJECTS if message_format == "csv" else JSON_REJECTS
    slow_reasons = {"non_numeric", "encoding"}
    bad_cases = [p.values for p in cases if slow_path or p.values[-1] not in slow_reasons]
    codec = Codec(WIDTH, message_format, max_record_bytes=LIMIT)

    records: list[Any] = []
    expected_rows: list[list[float]] = []
    expected_labels: list[float] = []
    expected_reason: dict[int, str] = {}
    bad_budget = 3 * len(bad_cases)
    for offset in range(400):
        if bad_budget and rng.random() < 0.3:
            bad_budget -= 1
            *key_and_value, reason = bad_cases[int(rng.integers(len(bad_cases)))]
            if message_format == "csv":
                key, value = key_and_value
            else:
                key, value = None, key_and_value[0]
            record = make_record(value, key=key, offset=offset)
            expected_reason[id(record)] = reason
        else:
            row, text = _random_good_row(rng, WIDTH)
            label = int(rng.integers(2))
            if message_format == "csv":
                record = make_record(text, key=str(label).encode(), offset=offset)
            else:
                record = make_record(json_value(row, label=label), key=None, offset=offset)
            expected_rows.append(row)
            expected_labels.append(float(label))
        records.append(record)
    assert expected_reason and expected_rows

    batch = codec.decode(records)

    np.testing.assert_array_equal(batch.features, np.array(expected_rows, dtype=np.float32))
    assert batch.labels.tolist() == expected_labels
    rejected_ids = [id(r.record) for r in batch.rejects]
    assert sorted(rejected_ids) == sorted(expected_reason)  # each bad record exactly once
    assert {id(r.record): r.reason for r in batch.rejects} == expected_reason
    assert len(batch) + len(batch.rejects) == len(records)


def _random_text_rows(rng: np.random.Generator, rows: int, width: int) -> list[bytes]:
    """Decimal text in the spellings producers use: repr, fixed, scientific, integers."""
    values = rng.standard_normal((rows, width)) * 10.0 ** rng.integers(-4, 5, (rows, width))
    styles = rng.integers(0, 5, (rows, width))
    spell = [
        repr,
        lambda v: f"{v:.6f}",
        lambda v: f"{v:.4e}",
        lambda v: str(int(v)),
        lambda v: f"{v:+.3f}",
    ]
    return [
        ",".join(spell[s](v) for s, v in zip(style_row, value_row, strict=True)).encode()
        for style_row, value_row in zip(styles.tolist(), values.tolist(), strict=True)
    ]


def test_vectorized_parse_equals_numpy_text_parse() -> None:
    rng = np.random.default_rng(5)
    width = 18
    values = _random_text_rows(rng, 1000, width)
    labels = rng.integers(0, 2, 1000)
    records = [
        make_record(v, key=str(label).encode(), offset=i)
        for i, (v, label) in enumerate(zip(values, labels.tolist(), strict=True))
    ]
    expected = np.loadtxt(
        io.StringIO(b"\n".join(values).decode()), delimiter=",", dtype=np.float64, ndmin=2
    ).astype(np.float32)

    fast = Codec(width).decode(records)
    assert fast.rejects == []
    np.testing.assert_array_equal(fast.features, expected)
    np.testing.assert_array_equal(fast.labels, labels.astype(np.float32))

    # One bad record sends the whole batch through the row-by-row fallback: same numbers.
    bad = make_record(b",".join([b"x"] * width), offset=1000)
    slow = Codec(width).decode([*records[:500], bad, *records[500:]])
    assert [r.record for r in slow.rejects] == [bad]
    np.testing.assert_array_equal(slow.features, expected)
    np.testing.assert_array_equal(slow.labels, labels.astype(np.float32))


def test_encode_csv_round_trips_through_decode() -> None:
    rng = np.random.default_rng(8)
    features = (rng.standard_normal((500, 7)) * 10.0 ** rng.integers(-3, 6, (500, 7))).astype(
        np.float32
    )
    labels = rng.integers(0, 2, 500).astype(np.int8)
    pairs = encode_csv(features, labels)
    assert len(pairs) == 500
    assert {key for key, _ in pairs} <= {b"0", b"1"}
    records = [make_record(value, key=key, offset=i) for i, (key, value) in enumerate(pairs)]

    batch = Codec(7).decode(records)

    assert batch.rejects == []
    np.testing.assert_array_equal(batch.labels, labels.astype(np.float32))
    # encode_csv keeps six decimals; decoding gives exactly those numbers back.
    np.testing.assert_array_equal(
        batch.features, features.astype(np.float64).round(6).astype(np.float32)
    )
    np.testing.assert_allclose(batch.features, features, rtol=1e-6, atol=5e-7)


def test_delayed_labels_follow_the_task() -> None:
    from service.feedback import PendingPredictions

    pending = PendingPredictions(WIDTH, task=COLORS)
    pending.remember("r1", np.zeros((2, WIDTH), np.float32))
    pending.remember("r2", np.ones((1, WIDTH), np.float32))
    batch, used = pending.join(
        [make_record(b'["blue", 0]', key=b"r1"), make_record(b'"purple"', key=b"r2")]
    )
    assert batch.labels.tolist() == [2.0, 0.0] and used == ["r1"]
    assert [r.reason for r in batch.rejects] == ["unknown_class"]
    regression = PendingPredictions(WIDTH, task=Task.from_settings("regression"))
    regression.remember("r3", np.zeros((1, WIDTH), np.float32))
    batch, _ = regression.join([make_record(b"2.5", key=b"r3")])
    assert batch.labels.tolist() == [2.5]
