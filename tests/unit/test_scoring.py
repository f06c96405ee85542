"""Scoring without a broker: output values per task, a batch's messages by source partition,
the per-partition transactional producers, and the scorer's job from the settings."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from aiokafka import TopicPartition

from service.model.inputs import InputSpec
from service.model.task import Task
from service.scoring.fencing import PartitionTransactions, transactional_id
from service.scoring.follow import ScoreJob
from service.scoring.predictions import (
    PartitionOutput,
    codec_for,
    prediction_value,
    score_records,
)
from service.serving.snapshot import build_snapshot
from service.settings import Settings

CLASSES = ("cat", "dog", "eel")


@pytest.mark.parametrize(
    ("task", "row", "label", "expected"),
    [
        (Task(), [0.25], 1.0, {"probability": 0.25, "label": 1}),
        (
            Task("multiclass", CLASSES),
            [0.1, 0.7, 0.2],
            float("nan"),
            {"probabilities": [0.1, 0.7, 0.2], "class": "dog", "label": None},
        ),
        (Task("regression", ()), [1.5], 2.0, {"prediction": 1.5, "label": 2.0}),
    ],
    ids=["binary", "multiclass", "regression"],
)
def test_prediction_values_are_json_with_the_model_version(
    task: Task, row: list[float], label: float, expected: dict[str, Any]
) -> None:
    value = prediction_value(np.array(row), label, 7, task)
    assert json.loads(value) == {**expected, "model_version": 7}
    assert value == prediction_value(np.array(row), label, 7, task)  # byte-stable


def record(partition: int, offset: int, value: dict[str, Any] | bytes) -> SimpleNamespace:
    raw = value if isinstance(value, bytes) else json.dumps(value).encode()
    return SimpleNamespace(
        topic="events", partition=partition, offset=offset, key=None, value=raw, headers=()
    )


def test_a_multiclass_batch_of_named_records_by_source_partition() -> None:
    """Named JSON records of a multiclass model: unlabelled ones are scored, a bad one goes to
    the dead-letter topic, and every message is grouped under its source partition."""
    names = ("a", "b")
    task = Task("multiclass", CLASSES)
    rng = np.random.default_rng(0)
    snapshot = build_snapshot(
        [rng.standard_normal((2, 3)), np.zeros(3)],
        ["softmax"],
        np.zeros(2),
        np.ones(2),
        4,
        10,
        1,
        task,
        InputSpec.positional(2, names),
    )
    settings = Settings(message_format="json", task="multiclass", classes=CLASSES, features=names)
    records = [
        record(0, 10, {"a": 1.0, "b": 2.0, "label": "dog"}),
        record(1, 3, {"a": 0.5, "b": -1.0}),  # no label: scored, label null
        record(1, 4, {"a": "x", "b": 1.0, "label": "cat"}),  # bad type: dead letter
        record(0, 11, {"a": 0.0, "b": 0.0, "label": 2}),
    ]
    scored = score_records(codec_for(settings, snapshot), snapshot, records, "out", "events.dlq")
    parts = scored.by_partition({TopicPartition("events", 0): 12, TopicPartition("events", 1): 5})
    zero, one = parts[TopicPartition("events", 0)], parts[TopicPartition("events", 1)]
    assert (zero.next_offset, one.next_offset) == (12, 5)
    assert [m.key for m in zero.messages] == [b"events/0/10", b"events/0/11"]
    values = [json.loads(m.value or b"") for m in zero.messages]
    assert [v["label"] for v in values] == ["dog", "eel"]
    assert all(v["model_version"] == 4 and v["class"] in CLASSES for v in values)
    assert sum(values[0]["probabilities"]) == pytest.approx(1.0)
    prediction, letter = one.messages
    assert prediction.key == b"events/1/3" and json.loads(prediction.value or b"")["label"] is None
    assert letter.topic == "events.dlq" and dict(letter.headers)["source.offset"] == b"4"


@dataclass
class FakeProducer:
    """Records what a transactional producer was asked to do."""

    transactional_id: str
    log: list[tuple[str, ...]]

    def transaction(self) -> Any:
        producer = self

        class Transaction:
            async def __aenter__(self) -> None:
                producer.log.append(("begin", producer.transactional_id))

            async def __aexit__(self, *exc: object) -> None:
                outcome = "abort" if exc[0] else "commit"
                producer.log.append((outcome, producer.transactional_id))

        return Transaction()

    async def send_offsets_to_transaction(self, offsets: dict[Any, int], group: str) -> None:
        for tp, offset in offsets.items():
            self.log.append(("offsets", self.transactional_id, f"{tp.partition}:{offset}"))

    async def stop(self) -> None:
        self.log.append(("stop", self.transactional_id))


def test_one_transactional_producer_per_owned_partition(monkeypatch: pytest.MonkeyPatch) -> None:
    log: list[tuple[str, ...]] = []

    async def open_producer(_options: Any, _client: str, txn_id: str, mode: str) -> Any:
        assert mode == "on"
        log.append(("start", txn_id))  # InitProducerId: fences the previous owner of the id
        return FakeProducer(txn_id, log), True

    async def no_topics(*_: Any) -> None:
        return None

    async def writes(producer: FakeProducer, messages: list[Any], _hook: Any = None) -> None:
        producer.log.append(("write", producer.transactional_id, str(len(messages))))

    monkeypatch.setattr("service.scoring.fencing.track_topics", no_topics)
    monkeypatch.setattr("service.scoring.fencing.write_all", writes)
    p0, p1 = TopicPartition("events", 0), TopicPartition("events", 1)

    async def run() -> None:
        producers = PartitionTransactions({}, "scorers", ["out"], open_producer)
        await producers.acquire([p0, p1])
        await producers.publish(None, {p0: PartitionOutput([], 5)})  # type: ignore[arg-type]
        await producers.release([p1])
        assert producers.owned == {p0}
        with pytest.raises(LookupError):  # a partition given up is never written again
            await producers.publish(None, {p1: PartitionOutput([], 9)})  # type: ignore[arg-type]
        await producers.stop()

    asyncio.run(run())
    id0, id1 = transactional_id("scorers", p0), transactional_id("scorers", p1)
    assert id0 == "streamfit-score.scorers.events.0"
    assert log == [
        ("start", id0),
        ("start", id1),
        ("begin", id0),
        ("write", id0, "0"),
        ("offsets", id0, "0:5"),
        ("commit", id0),
        ("stop", id1),
        ("stop", id0),
    ]


def test_the_scorer_job_comes_from_the_score_settings() -> None:
    settings = Settings(role="scorer", score_topic="events", score_group_id="scorers")
    job = ScoreJob.of(settings)
    assert (job.topic, job.group_id, job.output_topic) == (
        "events",
        "scorers",
        "events.predictions",
    )
    assert (job.dead_letter_topic, job.transactions, job.batch_size) == ("events.dlq", "auto", 256)
    flags = ScoreJob.of(settings, topic="other", output_topic="p", transactions="off")
    assert (flags.topic, flags.output_topic, flags.transactions) == ("other", "p", "off")
