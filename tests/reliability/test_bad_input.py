"""Bad input at volume: every malformed record goes to the dead-letter topic exactly once.

A corpus with every reject reason of the format (tests/reliability/corpus.py) is shuffled into
thousands of good records over four partitions. The service must not crash, must train on
every good record, and must dead-letter every bad one exactly once, with its original key and
value, its source position and the reason it was rejected for.
"""

from __future__ import annotations

import time
from collections import Counter

import pytest

from tests.reliability.corpus import (
    MAX_RECORD_BYTES,
    good_pairs,
    malformed_csv,
    malformed_json,
    mixed,
)
from tests.reliability.probes import PoisonPill, metric
from tests.support import consume_all, produce_pairs, wait_for, write_raw

PARTITIONS = 4


@pytest.mark.parametrize(
    ("message_format", "good_rows", "repeats"),
    [("csv", 16_000, 40), ("json", 8_000, 30)],
)
def test_malformed_records_at_volume(broker, topic, spawn, message_format, good_rows, repeats):
    corpus = malformed_csv() if message_format == "csv" else malformed_json()
    pairs, reason_at = mixed(good_pairs(good_rows, message_format), corpus * repeats, seed=5)
    bad = len(reason_at)

    assert produce_pairs(broker.bootstrap, topic, pairs, partitions=PARTITIONS) == len(pairs)
    service = spawn(
        message_format=message_format,
        max_record_bytes=MAX_RECORD_BYTES,
        batch_size=512,
    ).start()
    service.wait_trained(good_rows, learn_s=240)

    dead = consume_all(broker.bootstrap, f"{topic}.dlq", expected=bad, timeout_s=60)
    positions = Counter(
        (int(dict(r.headers)["source.partition"]), int(dict(r.headers)["source.offset"]))
        for r in dead
    )
    twice = [p for p, n in positions.items() if n > 1]
    assert not twice, f"dead-lettered more than once: {twice[:10]}"
    assert len(dead) == bad, f"{len(dead)} dead letters for {bad} bad records"

    # produce() writes round-robin: record i is at partition i % P, offset i // P.
    expected = {(i % PARTITIONS, i // PARTITIONS): i for i in reason_at}
    assert set(positions) == set(expected), "dead letters are exactly the bad records"
    for record in dead:
        headers = {k: v.decode() for k, v in record.headers}
        index = expected[(int(headers["source.partition"]), int(headers["source.offset"]))]
        assert headers["source.topic"] == topic
        assert (record.key, record.value) == pairs[index], "original key and value kept"
        assert headers["error"].split(":")[0] == reason_at[index], (headers, pairs[index])

    text = service.get_text("/metrics")
    for reason, count in Counter(reason_at.values()).items():
        assert metric(text, "streamfit_records_rejected_total", reason=reason) == count, reason
    assert metric(text, "streamfit_samples_trained_total") == good_rows
    model = service.get("/model")
    assert model["trainer"]["state"] == "running" and model["samples_trained"] == good_rows
    assert '"trainer failed"' not in service.logs()


@pytest.mark.parametrize(
    ("key", "value"),
    [
        pytest.param(
            None,
            None,
            id="no-key-no-value",
        ),
        pytest.param(
            b"1",
            b"1," * 524_200,  # 1,048,400 bytes: the broker takes it, max_record_bytes rejects it
            id="near-the-broker-limit",
        ),
    ],
)
def test_one_unwritable_dead_letter_does_not_stop_training(broker, topic, spawn, key, value):
    produce_pairs(broker.bootstrap, topic, good_pairs(200, "csv", seed=1), partitions=2)
    write_raw(broker.bootstrap, topic, key, value)
    produce_pairs(broker.bootstrap, topic, good_pairs(200, "csv", seed=2), partitions=2)
    service = spawn().start()

    stalled_since: list[float] = []

    def settled() -> dict | None:
        """The model once all 400 are learned, the trainer failed, or it stalled for 8 s."""
        model = service.get("/model")
        trainer = model["trainer"]
        if model["samples_trained"] == 400 or trainer["state"] == "failed":
            return model
        if not trainer["last_error"]:
            stalled_since.clear()
        elif not stalled_since:
            stalled_since.append(time.monotonic())
        elif time.monotonic() - stalled_since[0] > 8:
            return model
        return None

    model = wait_for(
        settled,
        service.join_timeout_s + 45,
        what="400 samples learned, or the trainer failed or stalled",
    )
    if model["samples_trained"] != 400:
        raise PoisonPill(f"{model['samples_trained']} of 400 learned; trainer: {model['trainer']}")
    dead = consume_all(broker.bootstrap, f"{topic}.dlq", expected=1, timeout_s=20)
    assert len(dead) == 1
    assert dict(dead[0].headers)["source.partition"] == b"0"
