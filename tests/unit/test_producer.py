"""Producer: CSV files as records, CSV or JSON (positional, or named by the header)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from service.codec import Codec
from service.model.inputs import InputSpec
from service.model.task import Task
from service.producer import CsvLayout, CsvLayoutError, csv_pairs, is_header, json_value

HEADED = "amount,country,hour,label\n12.5,FR,3,0\n100,US,23.5,1\n\n,DE,1,0\n"


@pytest.fixture
def headed(tmp_path: Path) -> Path:
    path = tmp_path / "fraud.csv"
    path.write_text(HEADED)
    return path


def values(pairs: object) -> list[object]:
    return [json.loads(value) for _, value in pairs]  # type: ignore[attr-defined]


def test_named_json_objects_keyed_by_the_header(headed: Path) -> None:
    pairs = list(csv_pairs(headed, "label", "json", named=True))
    assert values(pairs) == [
        {"amount": 12.5, "country": "FR", "hour": 3, "label": 0},
        {"amount": 100, "country": "US", "hour": 23.5, "label": 1},
        {"amount": None, "country": "DE", "hour": 1, "label": 0},
    ]
    assert [key for key, _ in pairs] == [b"0", b"1", b"0"]


def test_named_json_with_another_label_field_and_column(headed: Path) -> None:
    (first, *_) = csv_pairs(headed, "country", "json", named=True, label_field="target")
    assert json.loads(first[1]) == {"amount": 12.5, "hour": 3, "label": 0, "target": "FR"}


def test_positional_json_and_csv_skip_the_header(headed: Path) -> None:
    assert values(csv_pairs(headed, -1, "json"))[1] == {"features": [100, "US", 23.5], "label": 1}
    assert list(csv_pairs(headed, "3"))[:2] == [(b"0", b"12.5,FR,3"), (b"1", b"100,US,23.5")]


def test_named_records_decode_by_name(headed: Path) -> None:
    """What produce writes is what the codec reads (the two agree on the format)."""
    spec = InputSpec(("amount", "country", "hour"), ("number", "string", "number"), named=True)
    codec = Codec(3, message_format="json", inputs=spec, task=Task())
    records = [
        _Record(offset, key, value)
        for offset, (key, value) in enumerate(csv_pairs(headed, "label", "json", named=True))
    ]
    decoded = codec.decode(records)
    assert decoded.labels.tolist() == [0.0, 1.0]
    assert decoded.features["country"].ravel().tolist() == ["FR", "US"]
    assert [(r.reason, r.record.offset) for r in decoded.rejects] == [("missing_field", 2)]


def test_a_headerless_file_keeps_its_first_row(tmp_path: Path) -> None:
    path = tmp_path / "iris.csv.gz"
    with gzip.open(path, "wt") as handle:
        handle.write("5.1,3.5,1.4,0.2,setosa\n6.3,3.3,6.0,2.5,virginica\n")
    assert list(csv_pairs(path, -1)) == [
        (b"setosa", b"5.1,3.5,1.4,0.2"),
        (b"virginica", b"6.3,3.3,6.0,2.5"),
    ]
    assert CsvLayout.of(path, -1) == CsvLayout(None, 4)


def test_susy_labels_become_the_tutorials_keys(tmp_path: Path) -> None:
    path = tmp_path / "SUSY.csv"
    path.write_text("1.000000000000000000e+00,0.5,2\n0.000000000000000000e+00,1,2\n")
    assert list(csv_pairs(path)) == [(b"1", b"0.5,2"), (b"0", b"1,2")]


@pytest.mark.parametrize(
    ("label_column", "message_format", "named", "problem"),
    [
        ("label", "csv", True, "named records are JSON"),
        ("price", "json", True, "no column 'price'"),
        (7, "csv", False, "outside the 4 columns"),
        ("label", "avro", False, "csv or json"),
    ],
)
def test_layout_problems_are_reported_before_any_record(
    headed: Path, label_column: int | str, message_format: str, named: bool, problem: str
) -> None:
    with pytest.raises(CsvLayoutError, match=problem):
        csv_pairs(headed, label_column, message_format, named)


def test_named_records_need_a_header(tmp_path: Path) -> None:
    path = tmp_path / "plain.csv"
    path.write_text("1,2,0\n")
    with pytest.raises(CsvLayoutError, match="header"):
        csv_pairs(path, -1, "json", named=True)
    with pytest.raises(CsvLayoutError, match="no header"):
        csv_pairs(path, "label")


def test_cells_as_json_values() -> None:
    assert [json_value(c) for c in ("0", "-3", "1e3", "0.25", "inf", "FR", "")] == [
        0,
        -3,
        1000.0,
        0.25,
        "inf",
        "FR",
        None,
    ]
    assert is_header(["a", "b"]) and not is_header(["a", "1"]) and not is_header([])
    assert np.isclose(json_value("3.4e38"), 3.4e38)  # type: ignore[arg-type]


class _Record:
    topic = "t"
    partition = 0

    def __init__(self, offset: int, key: bytes, value: bytes) -> None:
        self.offset, self.key, self.value = offset, key, value
