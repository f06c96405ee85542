"""Topics: create one if missing, and list a topic's partitions from fresh metadata."""

from __future__ import annotations

from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError


async def ensure_topic(client_options: dict[str, Any], topic: str, partitions: int) -> bool:
    """Create `topic` with `partitions` partitions unless it exists; True if created."""
    admin = AIOKafkaAdminClient(**client_options)
    await admin.start()
    try:
        response = await admin.create_topics([NewTopic(topic, partitions, 1)])
    except TopicAlreadyExistsError:
        return False
    finally:
        await admin.close()
    for _name, code, *_rest in getattr(response, "topic_errors", []):
        if code == TopicAlreadyExistsError.errno:
            return False
        if code != 0:
            raise RuntimeError(f"cannot create topic {topic!r}: error code {code}")
    return True


async def topic_partitions(consumer: AIOKafkaConsumer, topic: str) -> list[TopicPartition]:
    """Every partition of `topic` (none if it does not exist), from fresh metadata.

    Asks for all topics rather than this one, so a broker that auto-creates topics on
    metadata requests does not create it.
    """
    partitions = consumer.partitions_for_topic(topic)
    if not partitions:
        cluster = await consumer._client.fetch_all_metadata()  # noqa: SLF001 - no public API
        partitions = cluster.partitions_for_topic(topic)
    return [TopicPartition(topic, p) for p in sorted(partitions or ())]
