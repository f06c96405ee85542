"""Producer: writes records in the default format to a topic (`streamfit produce`)."""

from __future__ import annotations

import asyncio
import csv
import gzip
import itertools
import logging
import time
from collections.abc import AsyncIterator, Iterable, Iterator
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


def csv_pairs(path: Path, label_column: int = 0, skip_header: bool | None = None) -> Iterator[Pair]:
    """(key, value) pairs from a CSV file (optionally .gz), label taken from `label_column`.

    SUSY.csv from UCI has no header and the label first, as "1.000000000000000000e+00".
    A first row whose label is not a number is taken as a header and skipped.
    """
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", newline="") as handle:
        reader = csv.reader(handle)
        for line_number, row in enumerate(reader):
            if not row:
                continue
            label_text = row[label_column].strip()
            try:
                label = float(label_text)
            except ValueError:
                if line_number == 0 and skip_header is not False:
                    continue
                label = float("nan")
            key = b"1" if label == 1.0 else b"0" if label == 0.0 else label_text.encode()
            features = (
                row[:label_column] + row[label_column + 1 :] if label_column >= 0 else row[:-1]
            )
            yield key, ",".join(f.strip() for f in features).encode()


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
