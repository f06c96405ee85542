"""Clients: every aiokafka consumer and producer of the service, with its options in one place."""

from __future__ import annotations

from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

# One fetch may bring up to 64 MiB, 8 MiB per partition: a batch of thousands of records in
# one round trip, well under the memory a trainer pod is given.
FETCH_MAX_BYTES = 64 * 1024 * 1024
MAX_PARTITION_FETCH_BYTES = 8 * 1024 * 1024


def new_consumer(
    client_options: dict[str, Any],
    *,
    client_id: str,
    group_id: str | None = None,
    **options: Any,
) -> AIOKafkaConsumer:
    """A consumer that never commits on its own and starts unknown partitions at the earliest
    record: streamfit commits only what a checkpoint (or a scored batch) holds, and a
    partition nobody has learned from is learned from its start."""
    return AIOKafkaConsumer(
        **client_options,
        client_id=client_id,
        group_id=group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_bytes=FETCH_MAX_BYTES,
        max_partition_fetch_bytes=MAX_PARTITION_FETCH_BYTES,
        **options,
    )


def new_producer(
    client_options: dict[str, Any], *, client_id: str, **options: Any
) -> AIOKafkaProducer:
    """A producer that batches for 5 ms; `acks="all"` unless the caller (a transactional
    producer) sets its own."""
    options.setdefault("linger_ms", 5)
    if "transactional_id" not in options:
        options.setdefault("acks", "all")
    return AIOKafkaProducer(**client_options, client_id=client_id, **options)
