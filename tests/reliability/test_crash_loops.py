"""Crash loops: kill -9 at random moments, over and over, with bad records in the stream.

After any number of crashes the model has learned every good record exactly once (SPEC,
"Training semantics"), the newest checkpoint's offsets cover the whole topic, and every bad
record is in the dead-letter topic: at least once, since a crash between the dead-letter
write and the checkpoint sends it again (the dead-letter topic is at-least-once; consumers
deduplicate by the `source.partition`/`source.offset` headers).
"""

from __future__ import annotations

import random
import time
from collections import Counter

import pytest

from tests.reliability.corpus import MAX_RECORD_BYTES, good_pairs, malformed_csv, mixed
from tests.reliability.probes import assert_checkpoints_intact, newest_manifest_entry
from tests.support import consume_all, produce_pairs, wait_for


def _crash_loop(broker, topic, spawn, tmp_path, rounds: int, partitions: int, rows: int) -> None:
    rng = random.Random(rounds * 1000 + partitions)
    settings = {
        "batch_size": 32,
        "checkpoint_interval_s": 0.2,
        "max_record_bytes": MAX_RECORD_BYTES,
    }
    produced = good = bad = 0
    for round_number in range(rounds):
        pairs, reasons = mixed(
            good_pairs(rows, "csv", seed=round_number), malformed_csv()[:: 1 + round_number % 3]
        )
        produced += produce_pairs(broker.bootstrap, topic, pairs, partitions=partitions)
        good += rows
        bad += len(reasons)
        service = spawn(**settings).start()
        before = service.get("/model")["samples_trained"]
        wait_for(
            lambda s=service, b=before: s.get("/model")["samples_trained"] > b,
            service.join_timeout_s + 60,
            what="training",
        )
        time.sleep(rng.uniform(0.0, 1.5))
        service.kill()

    final = spawn(**settings).start()
    model = final.wait_trained(good, learn_s=300)
    assert model["samples_trained"] == good
    wait_for(
        lambda: sum(final.get("/model")["checkpoint"]["offsets"].values()) == produced,
        60,
        what="a checkpoint covering the whole topic",
    )
    assert final.terminate() == 0
    directory = tmp_path / "a"
    newest = newest_manifest_entry(directory)
    assert newest["samples_trained"] == good
    assert sum(newest["offsets"].values()) == produced
    assert len(newest["offsets"]) == partitions
    assert_checkpoints_intact(directory)

    dead = consume_all(broker.bootstrap, f"{topic}.dlq", expected=bad, timeout_s=60)
    positions = Counter(
        (dict(r.headers)["source.partition"], dict(r.headers)["source.offset"]) for r in dead
    )
    assert len(positions) == bad, f"{len(positions)} distinct dead letters for {bad} bad records"


def test_kill_9_loop_short(broker, topic, spawn, tmp_path):
    _crash_loop(broker, topic, spawn, tmp_path, rounds=2, partitions=4, rows=3000)


@pytest.mark.slow
def test_kill_9_loop_long(broker, topic, spawn, tmp_path):
    _crash_loop(broker, topic, spawn, tmp_path, rounds=12, partitions=8, rows=5000)
