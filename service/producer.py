"""Producer: writes records to a topic (`streamfit produce`): the synthetic stream, or a CSV
file as CSV records (the default format) or JSON records, positional or named by its header."""

from __future__ import annotations

import asyncio
import csv
import gzip
import itertools
import json
import logging
import math
import time
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from service.codec import encode_csv
from service.kafka.clients import new_producer
from service.kafka.topics import ensure_topic
from service.synthetic import synthetic_susy

log = logging.getLogger(__name__)

Pair = tuple[bytes, bytes]


def synthetic_pairs(
    rows: int | None, seed: int, num_features: int, chunk: int = 10_000
) -> Iterator[Pair]:
    """(key, value) pairs of the synthetic SUSY-shaped stream; `rows=None` never ends."""
    produced = 0
    for start in itertools.count(step=chunk):
        size = chunk if rows is None else min(chunk, rows - produced)
        if size <= 0:
            return
        x, y = synthetic_susy(size, seed=seed, num_features=num_features, start=start)
        yield from encode_csv(x, y)
        produced += size


FORMATS = ("csv", "json")


class CsvLayoutError(ValueError):
    """The CSV file and the options disagree (no header to name fields, unknown column)."""


@dataclass(frozen=True)
class CsvLayout:
    """Where a CSV file's label is, and its column names when its first row is a header."""

    header: tuple[str, ...] | None
    label: int  # index of the label column, from 0

    @classmethod
    def of(cls, path: Path, label_column: int | str = 0) -> CsvLayout:
        """The layout of `path`; `label_column` is an index (negative from the end) or, with a
        header, a column name. CsvLayoutError when the column does not exist."""
        first = next(_rows(path), [])
        header = tuple(cell.strip() for cell in first) if is_header(first) else None
        width = len(first)
        column: int | str = label_column
        if isinstance(column, str):
            try:
                column = int(column)
            except ValueError:
                if header is None:
                    raise CsvLayoutError(
                        f"label column {column!r} is a name, but {path} has no header row"
                    ) from None
                if column not in header:
                    raise CsvLayoutError(
                        f"no column {column!r} in the header of {path}: {', '.join(header)}"
                    ) from None
                return cls(header, header.index(column))
        if not -width <= column < width:
            raise CsvLayoutError(f"label column {column} is outside the {width} columns of {path}")
        return cls(header, column % width)

    def feature_names(self) -> tuple[str, ...]:
        if self.header is None:
            raise CsvLayoutError("named records need a CSV file whose first row is a header")
        return self.header[: self.label] + self.header[self.label + 1 :]

    def split(self, row: list[str]) -> tuple[str, list[str]]:
        """A data row as (label text, feature cells), stripped (a short row's missing cells
        are missing: the service dead-letters the record)."""
        cells = [cell.strip() for cell in row]
        label = cells[self.label] if self.label < len(cells) else ""
        return label, cells[: self.label] + cells[self.label + 1 :]


def is_header(row: list[str]) -> bool:
    """A first row none of whose cells is a number is a header (SUSY.csv from UCI has none).

    >>> is_header(["amount", "country", "label"]), is_header(["5.1", "3.5", "setosa"])
    (True, False)
    """
    return bool(row) and not any(_number(cell.strip()) is not None for cell in row)


def _number(text: str) -> int | float | None:
    try:
        return int(text)
    except ValueError:
        pass
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def json_value(text: str) -> int | float | str | None:
    """A CSV cell as a JSON value: a number when it is one (int when integral text), null
    when empty, else the text.

    >>> json_value("3"), json_value("2.5e1"), json_value("FR"), json_value(""), json_value("nan")
    (3, 25.0, 'FR', None, 'nan')
    """
    if not text:
        return None
    number = _number(text)
    return text if number is None else number


def csv_key(label: str) -> bytes:
    """A label cell as a CSV record's key: `0`/`1` for the tutorial's 0.0/1.0, else the text."""
    number = _number(label)
    if number == 1:
        return b"1"
    if number == 0:
        return b"0"
    return label.encode()


def csv_record(layout: CsvLayout, row: list[str]) -> Pair:
    """The default format: key = label text, value = the features comma-separated."""
    label, features = layout.split(row)
    return csv_key(label), ",".join(features).encode()


def json_record(
    layout: CsvLayout, row: list[str], named: bool = False, label_field: str = "label"
) -> Pair:
    """A JSON record: `{"features": [...], "label": ...}`, or with `named` a flat object keyed
    by the header's column names and `label_field`. Numbers go as numbers, other cells as
    strings, empty cells as null. Key: the label text (not read by the service)."""
    label, features = layout.split(row)
    values = [json_value(cell) for cell in features]
    message: dict[str, Any]
    if named:
        message = dict(zip(layout.feature_names(), values, strict=False))
        message[label_field] = json_value(label)
    else:
        message = {"features": values, "label": json_value(label)}
    return label.encode(), json.dumps(message, separators=(",", ":")).encode()


def csv_pairs(
    path: Path,
    label_column: int | str = 0,
    message_format: str = "csv",
    named: bool = False,
    label_field: str = "label",
) -> Iterator[Pair]:
    """(key, value) pairs from a CSV file (optionally .gz), label taken from `label_column`
    (an index, or a header's column name), as `csv` or `json` records (`named`: flat objects
    keyed by the header's column names).

    SUSY.csv from UCI has no header and the label first, as "1.000000000000000000e+00". A
    first row without a single number is a header: it names the fields and is not sent.
    """
    if message_format not in FORMATS:
        raise CsvLayoutError(f"produce writes {' or '.join(FORMATS)} records, not {message_format}")
    layout = CsvLayout.of(path, label_column)
    if named:
        if message_format != "json":
            raise CsvLayoutError("named records are JSON: add --format json")
        names = layout.feature_names()
        if label_field in names:
            raise CsvLayoutError(f"the label field {label_field!r} is also a column of {path}")
    return _records(path, layout, message_format, named, label_field)


def _records(
    path: Path, layout: CsvLayout, message_format: str, named: bool, label_field: str
) -> Iterator[Pair]:
    rows = _rows(path)
    if layout.header is not None:
        next(rows, None)
    for row in rows:
        if message_format == "csv":
            yield csv_record(layout, row)
        else:
            yield json_record(layout, row, named, label_field)


def _rows(path: Path) -> Iterator[list[str]]:
    """The non-empty rows of a CSV file (gzip-compressed when it ends in .gz)."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", newline="") as handle:
        for row in csv.reader(handle):
            if row:
                yield row


async def produce(
    client_options: dict[str, Any],
    topic: str,
    pairs: Iterable[Pair],
    partitions: int = 1,
    rate: float = 0.0,
    total: int | None = None,
    progress: bool = True,
) -> int:
    """Send pairs round-robin over the partitions (at `rate` per second if > 0); return count."""
    from tqdm import tqdm

    await ensure_topic(client_options, topic, partitions)
    producer = new_producer(
        client_options, client_id="produce", linger_ms=10, max_batch_size=256 * 1024
    )
    await producer.start()
    sent = 0
    bar = tqdm(total=total, unit="rec", disable=not progress, desc=topic, smoothing=0.1)
    started = time.monotonic()
    try:
        pending: list[asyncio.Future[Any]] = []
        async for key, value in _paced(pairs, rate, started):
            pending.append(
                await producer.send(topic, key=key, value=value, partition=sent % partitions)
            )
            sent += 1
            if len(pending) >= 2000:
                await asyncio.gather(*pending)
                bar.update(len(pending))
                pending.clear()
        await asyncio.gather(*pending)
        bar.update(len(pending))
    finally:
        bar.close()
        await producer.stop()
    return sent


async def _paced(pairs: Iterable[Pair], rate: float, started: float) -> AsyncIterator[Pair]:
    for index, pair in enumerate(pairs):
        if rate > 0:
            due = started + index / rate
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        yield pair
