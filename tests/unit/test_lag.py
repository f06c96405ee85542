"""Lag table: `kafka-consumer-groups.sh --describe` layout, aligned, '-' for no commit."""

from __future__ import annotations

import re

from service.kafka.lag import format_table

HEADER = ["GROUP", "TOPIC", "PARTITION", "CURRENT-OFFSET", "LOG-END-OFFSET", "LAG"]


def _column_starts(line: str) -> list[int]:
    return [m.start() for m in re.finditer(r"\S+", line)]


def test_columns_align_and_missing_commit_shows_dash() -> None:
    rows = [
        {
            "topic": "susy-train",
            "partition": 0,
            "committed_offset": 1200,
            "log_end_offset": 1234567,
            "lag": 1233367,
        },
        {
            "topic": "susy-train",
            "partition": 10,
            "committed_offset": None,
            "log_end_offset": 42,
            "lag": 42,
        },
        {
            "topic": "a-much-longer-topic-name",
            "partition": 2,
            "committed_offset": 7,
            "log_end_offset": 7,
            "lag": 0,
        },
    ]
    table = format_table("my-group", rows)
    lines = table.split("\n")
    assert len(lines) == 1 + len(rows)
    assert lines[0].split() == HEADER

    starts = _column_starts(lines[0])
    expected_cells = [
        ["my-group", "susy-train", "0", "1200", "1234567", "1233367"],
        ["my-group", "susy-train", "10", "-", "42", "42"],
        ["my-group", "a-much-longer-topic-name", "2", "7", "7", "0"],
    ]
    for line, cells in zip(lines[1:], expected_cells, strict=True):
        assert line.split() == cells
        assert _column_starts(line) == starts  # every cell starts under its header
    for line in lines:
        assert line == line.rstrip()
    # Columns are separated by at least two spaces, even after the widest cell.
    widest_topic = max(len(r["topic"]) for r in rows)
    assert starts[2] - starts[1] >= widest_topic + 2


def test_no_rows_gives_just_the_header() -> None:
    table = format_table("g", [])
    assert table.split() == HEADER
    assert "\n" not in table
