"""`streamfit fit` and `streamfit score`: the tutorial's batch flows, against real brokers.

The embedded Tansu broker refuses transactions, so there `score` runs its fallback (write,
wait for acks, then commit), crash included. The transactional path runs against librdkafka's
mock cluster (confluent-kafka), which speaks the transaction protocol but does not keep
offsets sent to a transaction (see `test_transactional_rerun_scores_nothing`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from aiokafka import TopicPartition

from service.broker import EmbeddedBroker
from service.checkpoints import CheckpointStore
from service.producer import synthetic_pairs
from service.scoring import CRASH_ENV, CRASH_EXIT_CODE
from tests.support import (
    ServiceProcess,
    predictions_by_key,
    produce_pairs,
    produce_synthetic,
    read_to_end,
    run_cli,
    write_raw,
)

# A broker that keeps transactional offsets, for test_transactional_rerun_scores_nothing.
TXN_BOOTSTRAP = os.environ.get("STREAMFIT_TEST_TXN_BOOTSTRAP")
TRAIN_ROWS = 4000
TEST_ROWS = 2000
BAD_PAIRS: list[tuple[bytes | None, bytes | None]] = [(b"1", b"1,2,3"), (b"7", b"0.5," * 17 + b"1")]


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def metric(pattern: str, text: str) -> float:
    match = re.search(pattern, text)
    assert match, f"{pattern!r} not in:\n{text}"
    return float(match.group(1))


def brute_force_auc(probabilities: np.ndarray, labels: np.ndarray) -> float:
    positive, negative = probabilities[labels == 1], probabilities[labels == 0]
    wins = (positive[:, None] > negative[None, :]).sum() + 0.5 * (
        positive[:, None] == negative[None, :]
    ).sum()
    return float(wins / (len(positive) * len(negative)))


@pytest.fixture(scope="module")
def fitted(broker: EmbeddedBroker, tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """A train topic (4k records and 2 bad ones) fitted for 2 epochs by the CLI."""
    topic = unique("train")
    produce_synthetic(broker.bootstrap, topic, rows=TRAIN_ROWS, partitions=3, seed=1)
    produce_pairs(broker.bootstrap, topic, BAD_PAIRS)
    checkpoints = tmp_path_factory.mktemp("fit") / "checkpoints"
    env = {
        "STREAMFIT_KAFKA_BOOTSTRAP": broker.bootstrap,
        "STREAMFIT_CHECKPOINT_DIR": str(checkpoints),
        "STREAMFIT_GROUP_ID": unique("serve"),
    }
    result = run_cli(["fit", "--topic", topic, "--epochs", "2", "--quiet"], env)
    assert result.returncode == 0, result.stderr[-3000:]
    return SimpleNamespace(topic=topic, checkpoints=checkpoints, env=env, stdout=result.stdout)


@pytest.fixture
def test_topic(broker: EmbeddedBroker) -> Iterator[SimpleNamespace]:
    """A held-out topic: 2k synthetic records, 2 bad ones and 1 without a label."""
    topic = unique("test")
    produce_synthetic(broker.bootstrap, topic, rows=TEST_ROWS, partitions=3, seed=9)
    unlabelled_value = next(synthetic_pairs(1, 5, 18))[1]
    produce_pairs(broker.bootstrap, topic, [*BAD_PAIRS, (None, unlabelled_value)])
    records, ends, _ = read_to_end(broker.bootstrap, topic)
    bad = set(BAD_PAIRS)
    expected = {
        f"{r.topic}/{r.partition}/{r.offset}": r for r in records if (r.key, r.value) not in bad
    }
    assert len(expected) == TEST_ROWS + 1
    yield SimpleNamespace(
        topic=topic, ends=ends, expected=expected, unlabelled_value=unlabelled_value
    )


# -- fit -------------------------------------------------------------------------------------


def test_fit_checkpoints_at_topic_end_and_serve_continues_from_there(
    fitted, broker, tmp_path: Path
):
    assert "rejected (not trained): 2" in fitted.stdout
    assert 0.6 < metric(r"accuracy ([\d.]+)", fitted.stdout) <= 1.0
    checkpoint = CheckpointStore(fitted.checkpoints).latest()
    assert checkpoint is not None and checkpoint.version == 1
    assert checkpoint.state["samples_trained"] == 2 * TRAIN_ROWS
    _, ends, _ = read_to_end(broker.bootstrap, fitted.topic)
    assert checkpoint.offsets == {f"{fitted.topic}:{p}": end for p, end in ends.items()}
    _, _, committed = read_to_end(
        broker.bootstrap, fitted.topic, group=fitted.env["STREAMFIT_GROUP_ID"]
    )
    assert committed == ends

    # Warm start: serve restores the fit and learns only what comes after it.
    directory = tmp_path / "checkpoints"
    shutil.copytree(fitted.checkpoints, directory)
    service = ServiceProcess(
        {
            "STREAMFIT_KAFKA_BOOTSTRAP": broker.bootstrap,
            "STREAMFIT_TRAIN_TOPIC": fitted.topic,
            "STREAMFIT_GROUP_ID": fitted.env["STREAMFIT_GROUP_ID"],
            "STREAMFIT_CHECKPOINT_DIR": str(directory),
            "STREAMFIT_CHECKPOINT_INTERVAL_S": "1",
        },
        tmp_path / "service.log",
    )
    try:
        service.start()
        assert service.get("/model")["samples_trained"] == 2 * TRAIN_ROWS
        produce_synthetic(broker.bootstrap, fitted.topic, rows=300, partitions=3, seed=2)
        model = service.wait_trained(2 * TRAIN_ROWS + 300)
        assert model["version"] >= 1
    finally:
        service.stop()


@pytest.mark.usefixtures("without_test_switches")
def test_fit_resumes_from_the_newest_checkpoint_unless_fresh(fitted, tmp_path: Path):
    from service.settings import load_settings
    from service.training.fitting import fit, format_fit_report

    directory = tmp_path / "checkpoints"
    shutil.copytree(fitted.checkpoints, directory)
    settings = load_settings(
        kafka_bootstrap=fitted.env["STREAMFIT_KAFKA_BOOTSTRAP"],
        checkpoint_dir=directory,
        group_id=unique("serve"),
        export_dir=tmp_path / "exports",
    )

    resumed = fit(settings, fitted.topic, epochs=1, progress=False)
    assert (resumed.resumed_from, resumed.version) == (1, 2)
    assert resumed.exported == str(tmp_path / "exports" / "susy" / "2")
    assert "exported for TF Serving" in format_fit_report(resumed)
    assert resumed.records >= TRAIN_ROWS  # another test may have added records since
    assert resumed.samples_trained == 2 * TRAIN_ROWS + resumed.records

    fresh = fit(settings, fitted.topic, epochs=1, fresh=True, progress=False)
    assert (fresh.resumed_from, fresh.version) == (None, 3)
    assert fresh.samples_trained == fresh.records == resumed.records
    assert fresh.offsets == resumed.offsets
    assert sorted(os.listdir(tmp_path / "exports" / "susy")) == ["2", "3"]


def test_rowwise_forward_pass_matches_serving_and_ignores_batch_neighbours(fitted):
    from service.scoring import predict_rowwise
    from service.serving.snapshot import snapshot_from_state
    from service.synthetic import synthetic_susy

    checkpoint = CheckpointStore(fitted.checkpoints).latest()
    assert checkpoint is not None
    snapshot = snapshot_from_state(checkpoint.state, checkpoint.version)
    x, _ = synthetic_susy(1000, seed=11)
    rowwise = predict_rowwise(snapshot, x)
    np.testing.assert_allclose(rowwise, snapshot.predict(x), rtol=0, atol=1e-5)
    for start, stop in ((0, 1), (3, 300), (299, 1000)):
        assert np.array_equal(predict_rowwise(snapshot, x[start:stop]), rowwise[start:stop])


# -- score: idempotent fallback on the embedded broker ---------------------------------------


def test_score_once_per_group_with_metrics_matching_the_output(fitted, broker, test_topic):
    output = f"{test_topic.topic}.predictions"
    first = run_cli(["score", "--topic", test_topic.topic, "--group", "g1", "--quiet"], fitted.env)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "falling back to idempotent output" in first.stderr
    assert metric(r"scored (\d+) records", first.stdout) == TEST_ROWS + 1
    assert "rejected 2" in first.stdout and "unlabelled 1" in first.stdout

    records, _, _ = read_to_end(broker.bootstrap, output)
    assert len(records) == TEST_ROWS + 1
    values = predictions_by_key(records)
    assert set(values) == set(test_topic.expected)
    decoded = {key: json.loads(next(iter(v))) for key, v in values.items()}
    assert {d["model_version"] for d in decoded.values()} == {1}
    unlabelled = [k for k, r in test_topic.expected.items() if r.key is None]
    assert [decoded[k]["label"] for k in unlabelled] == [None]

    # The printed metrics are those of the output topic's predictions.
    labelled = [d for d in decoded.values() if d["label"] is not None]
    p = np.array([d["probability"] for d in labelled])
    y = np.array([d["label"] for d in labelled])
    assert metric(r"accuracy ([\d.]+)", first.stdout) == pytest.approx(
        ((p >= 0.5) == y).mean(), abs=1e-4
    )
    assert metric(r"roc_auc ([\d.]+)", first.stdout) == pytest.approx(
        brute_force_auc(p, y), abs=1e-4
    )
    assert metric(r"accuracy ([\d.]+)", first.stdout) > 0.65

    dead, _, _ = read_to_end(broker.bootstrap, f"{test_topic.topic}.dlq")
    assert sorted((r.key, r.value) for r in dead) == sorted(BAD_PAIRS)
    headers = dict(dead[0].headers)
    assert set(headers) == {"error", "source.topic", "source.partition", "source.offset"}
    assert headers["source.topic"] == test_topic.topic.encode()
    assert headers["error"].split(b":")[0] in (b"width", b"bad_label")

    _, _, committed = read_to_end(broker.bootstrap, test_topic.topic, group="g1")
    assert committed == test_topic.ends

    again = run_cli(["score", "--topic", test_topic.topic, "--group", "g1", "--quiet"], fitted.env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert metric(r"scored (\d+) records", again.stdout) == 0
    assert len(read_to_end(broker.bootstrap, output)[0]) == TEST_ROWS + 1

    other = run_cli(
        ["score", "--topic", test_topic.topic, "--group", "g2", "--batch-size", "97", "--quiet"],
        fitted.env,
    )
    assert other.returncode == 0, other.stderr[-3000:]
    assert metric(r"scored (\d+) records", other.stdout) == TEST_ROWS + 1
    records, _, _ = read_to_end(broker.bootstrap, output)
    assert len(records) == 2 * (TEST_ROWS + 1)
    # Other batches, same bytes: each key still has exactly one distinct value.
    assert {key: len(v) for key, v in predictions_by_key(records).items()} == dict.fromkeys(
        test_topic.expected, 1
    )


def test_score_dead_letters_a_keyless_tombstone_and_an_oversize_record(fitted, broker):
    """A record with neither key nor value, and one of ~800 KB, in the scored topic: both are
    dead-lettered (the big one cut to 512 KiB with an `original.bytes` header, as the trainer
    does) and the run exits 0 having scored every good record."""
    topic = unique("odd")
    produce_synthetic(broker.bootstrap, topic, rows=300, partitions=1, seed=3)
    write_raw(broker.bootstrap, topic, None, None)
    oversize = b"1.0," * 200_000 + b"1.0"
    write_raw(broker.bootstrap, topic, b"1", oversize)
    produce_synthetic(broker.bootstrap, topic, rows=100, partitions=1, seed=4)

    result = run_cli(["score", "--topic", topic, "--group", unique("g"), "--quiet"], fitted.env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert metric(r"scored (\d+) records", result.stdout) == 400
    assert "rejected 2" in result.stdout

    dead, _, _ = read_to_end(broker.bootstrap, f"{topic}.dlq")
    assert len(dead) == 2
    tombstone = next(r for r in dead if r.key is None)
    assert tombstone.value is None
    assert dict(tombstone.headers)["error"].startswith(b"empty")
    big = next(r for r in dead if r.key == b"1")
    headers = dict(big.headers)
    assert big.value == oversize[: 512 * 1024]
    assert headers["original.bytes"] == str(len(oversize)).encode()
    assert headers["source.topic"] == topic.encode()


def test_score_crash_between_write_and_commit_rescores_only_that_batch(fitted, broker, test_topic):
    output = unique("predictions")
    args = ["score", "--topic", test_topic.topic, "--group", "g-crash", "--output-topic", output]
    args += ["--batch-size", "200", "--quiet"]

    crashed = run_cli(args, {**fitted.env, CRASH_ENV: "1"})
    assert crashed.returncode == CRASH_EXIT_CODE, crashed.stderr[-3000:]
    written, _, _ = read_to_end(broker.bootstrap, output)
    assert 0 < len(written) <= 200
    _, _, committed = read_to_end(broker.bootstrap, test_topic.topic, group="g-crash")
    assert set(committed.values()) == {None}

    rerun = run_cli(args, fitted.env)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert metric(r"scored (\d+) records", rerun.stdout) == TEST_ROWS + 1
    records, _, _ = read_to_end(broker.bootstrap, output)
    values = predictions_by_key(records)
    assert set(values) == set(test_topic.expected)
    assert all(len(v) == 1 for v in values.values()), "a re-scored record changed its value"
    assert len(records) == TEST_ROWS + 1 + len(written)
    _, _, committed = read_to_end(broker.bootstrap, test_topic.topic, group="g-crash")
    assert committed == test_topic.ends


def test_transactions_on_fails_clearly_where_the_broker_refuses_them(fitted, test_topic):
    result = run_cli(
        [
            "score",
            "--topic",
            test_topic.topic,
            "--group",
            "g-on",
            "--transactions",
            "on",
            "--quiet",
        ],
        fitted.env,
    )
    assert result.returncode == 1
    assert "refused transactions" in result.stderr


# -- score: transactions, on librdkafka's mock cluster ---------------------------------------


@pytest.mark.usefixtures("without_test_switches")
def test_score_in_kafka_transactions(fitted, mock_cluster, monkeypatch: pytest.MonkeyPatch):
    from aiokafka import AIOKafkaProducer

    from service.scoring import score
    from service.settings import load_settings

    bootstrap, owner = mock_cluster
    topic = unique("test")
    pairs = list(synthetic_pairs(1000, 9, 18)) + BAD_PAIRS
    for index, (key, value) in enumerate(pairs):
        owner.produce(topic, key=key, value=value, partition=index % 2)  # auto-created
    assert owner.flush(10) == 0

    sent_offsets: list[dict[TopicPartition, int]] = []
    original = AIOKafkaProducer.send_offsets_to_transaction

    async def spy(self: Any, offsets: dict[TopicPartition, int], group_id: str) -> None:
        sent_offsets.append(dict(offsets))
        await original(self, offsets, group_id)

    monkeypatch.setattr(AIOKafkaProducer, "send_offsets_to_transaction", spy)
    settings = load_settings(kafka_bootstrap=bootstrap, checkpoint_dir=fitted.checkpoints)
    report = score(settings, topic, "g-txn", transactions="on", batch_size=128, progress=False)

    assert report.transactional
    assert report.scored == 1000 and sum(report.rejected.values()) == len(BAD_PAIRS)
    # The mock writes transaction markers with CRC 0 (measured), which aiokafka rejects.
    records, _, _ = read_to_end(
        bootstrap, f"{topic}.predictions", read_committed=True, check_crcs=False
    )
    assert len(records) == 1000 and len(predictions_by_key(records)) == 1000
    # Every batch's offsets went to its transaction; the last ones are the input's end.
    _, input_ends, _ = read_to_end(bootstrap, topic)
    assert sum(input_ends.values()) == len(pairs)
    final: dict[int, int] = {}
    for offsets in sent_offsets:
        final.update({tp.partition: o for tp, o in offsets.items()})
    assert len(sent_offsets) >= 1000 // 128
    assert final == {p: end for p, end in input_ends.items() if end}  # 4 partitions, 2 empty


@pytest.mark.usefixtures("without_test_switches")
def test_transactional_rerun_scores_nothing(fitted):
    bootstrap = TXN_BOOTSTRAP
    if not bootstrap:
        pytest.skip(
            "needs a broker that keeps transactional offsets (set STREAMFIT_TEST_TXN_BOOTSTRAP, "
            "e.g. docker-compose's Apache Kafka). Measured: librdkafka 2.16.0's mock cluster "
            "accepts TxnOffsetCommit but does not store the offsets (committed() is None after "
            "commit_transaction, so a re-run scores everything again); Tansu refuses "
            "InitProducerId"
        )
    from service.scoring import score
    from service.settings import load_settings

    topic = unique("test")
    produce_synthetic(bootstrap, topic, rows=500, partitions=2, seed=9)
    settings = load_settings(kafka_bootstrap=bootstrap, checkpoint_dir=fitted.checkpoints)
    first = score(settings, topic, "g-txn", transactions="on", progress=False)
    second = score(settings, topic, "g-txn", transactions="on", progress=False)
    assert (first.scored, second.scored) == (500, 0)
    _, _, committed = read_to_end(bootstrap, topic, group="g-txn")
    assert sum(v or 0 for v in committed.values()) == 500
