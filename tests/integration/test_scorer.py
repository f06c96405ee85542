"""The scorer role (`STREAMFIT_ROLE=scorer`, `streamfit score --follow`) as real processes.

On the embedded broker (which refuses transactions, so the scorers write, wait for acks, then
commit): a live stream scored once through a kill -9 and a restart, a model version change
mid-stream, two scorers of one group splitting the partitions and surviving a crash.

On librdkafka's mock cluster (transactions): two scorers, one transactional producer per
input partition, a kill -9. Measured on librdkafka 2.16.1, the mock cluster neither hides
aborted records from read_committed readers, nor fences an older producer of the same
transactional id, nor stores the offsets of a transaction (docs/SCORING.md); so there the
test checks the per-partition transactions and the takeover, and accepts replays (identical
values). The strict once-only check runs against a real Kafka (STREAMFIT_TEST_TXN_BOOTSTRAP).
"""

from __future__ import annotations

import json
import os
import re
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from service.broker import EmbeddedBroker, free_port
from service.checkpoints import Checkpoint, CheckpointStore
from service.model.inputs import InputSpec
from service.model.task import Task
from service.producer import synthetic_pairs
from service.scoring import CRASH_EXIT_CODE
from tests.support import (
    ServiceProcess,
    consume_all,
    predictions_by_key,
    produce_pairs,
    produce_synthetic,
    read_to_end,
    run_cli,
    wait_for,
)

TXN_BOOTSTRAP = os.environ.get("STREAMFIT_TEST_TXN_BOOTSTRAP")
WIDTH = 18


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def save_model(directory: Path, version: int) -> None:
    """A small Dense-only binary model (18 features -> sigmoid) as checkpoint `version`."""
    rng = np.random.default_rng(version)
    state = {
        "weights": [
            (0.3 * rng.standard_normal((WIDTH, 1))).astype(np.float32),
            np.zeros(1, dtype=np.float32),
        ],
        "activations": ["sigmoid"],
        "optimizer": [],
        "model_state": [],
        "standardizer": {"count": 100, "mean": np.zeros(WIDTH), "m2": 100 * np.ones(WIDTH)},
        "samples_trained": 100 * version,
        "batches_trained": version,
    }
    CheckpointStore(directory).save(Checkpoint(version=version, state=state, offsets={}))


def scored_total(scorer: ServiceProcess) -> float:
    text = scorer.get_text("/metrics")
    match = re.search(r"^streamfit_records_scored_total (\S+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


def owned(scorer: ServiceProcess) -> list[int]:
    return list(scorer.get("/readyz")["scorer"]["partitions"])


def split(first: ServiceProcess, second: ServiceProcess) -> bool:
    """Both scorers own partitions, and together all four."""
    mine, theirs = owned(first), owned(second)
    return bool(mine and theirs and sorted(mine + theirs) == [0, 1, 2, 3])


def input_keys(bootstrap: str, topic: str) -> set[str]:
    records, _, _ = read_to_end(bootstrap, topic)
    return {f"{r.topic}/{r.partition}/{r.offset}" for r in records}


def decoded(values: dict[str, set[bytes]]) -> dict[str, list[dict[str, Any]]]:
    return {key: [json.loads(v) for v in sorted(vs)] for key, vs in values.items()}


@pytest.fixture
def scorers(tmp_path: Path) -> Iterator[Callable[..., ServiceProcess]]:
    """Start scorer processes (`streamfit serve` with ROLE=scorer); all stopped at teardown."""
    started: list[ServiceProcess] = []

    def make(
        bootstrap: str, topic: str, group: str, wait_ready: bool = True, **settings: object
    ) -> ServiceProcess:
        port = str(free_port())
        env = {
            "STREAMFIT_KAFKA_BOOTSTRAP": bootstrap,
            "STREAMFIT_ROLE": "scorer",
            "STREAMFIT_SCORE_TOPIC": topic,
            "STREAMFIT_SCORE_GROUP_ID": group,
            "STREAMFIT_CHECKPOINT_DIR": str(tmp_path / "checkpoints"),
            "STREAMFIT_SESSION_TIMEOUT_MS": "6000",  # Kafka's minimum: faster group joins
            "STREAMFIT_PREDICTOR_RELOAD_S": "0.5",
            "STREAMFIT_HTTP_PORT": port,  # ServiceProcess's port; the scorer listens on:
            "STREAMFIT_SCORE_HTTP_PORT": port,
        }
        env.update({f"STREAMFIT_{k.upper()}": str(v) for k, v in settings.items()})
        scorer = ServiceProcess(env, tmp_path / f"scorer-{len(started)}.log")
        started.append(scorer)
        return scorer.start(wait_ready=wait_ready)

    yield make
    for scorer in started:
        scorer.stop()


def test_live_stream_scored_once_through_kill_restart_and_model_change(
    broker: EmbeddedBroker, scorers: Callable[..., ServiceProcess], tmp_path: Path
) -> None:
    topic, group = unique("events"), unique("scorers")
    output = f"{topic}.predictions"
    save_model(tmp_path / "checkpoints", 1)
    produce_synthetic(broker.bootstrap, topic, rows=10_000, partitions=3, seed=1)
    scorer = scorers(broker.bootstrap, topic, group, batch_size=500)
    wait_for(
        lambda: scored_total(scorer) == 10_000,
        scorer.join_timeout_s + 60,
        what="10k records scored",
    )

    # 2.5k more arrive; the scorer dies (kill -9) while it scores them; a new one takes over.
    produce_synthetic(broker.bootstrap, topic, rows=2500, partitions=3, seed=2)
    scorer.kill()
    scorer = scorers(broker.bootstrap, topic, group, batch_size=500)
    before_change = input_keys(broker.bootstrap, topic)
    wait_for(
        lambda: set(predictions_by_key(read_to_end(broker.bootstrap, output)[0])) >= before_change,
        scorer.join_timeout_s + 60,
        what="12.5k records scored",
    )

    # The trainer stores version 2; the running scorer loads it; 2.5k more arrive.
    save_model(tmp_path / "checkpoints", 2)
    wait_for(lambda: scorer.get("/readyz")["model_version"] == 2, 30, what="version 2 loaded")
    produce_synthetic(broker.bootstrap, topic, rows=2500, partitions=3, seed=3)
    inputs = input_keys(broker.bootstrap, topic)
    assert len(inputs) == 15_000
    wait_for(
        lambda: set(predictions_by_key(read_to_end(broker.bootstrap, output)[0])) == inputs,
        60,
        what="15k records scored",
    )
    assert scorer.terminate() == 0  # SIGTERM: finish the batch, commit, leave the group

    values = decoded(predictions_by_key(read_to_end(broker.bootstrap, output)[0]))
    assert set(values) == inputs  # distinct keys == inputs, through the kill -9
    replayed = {key: v for key, v in values.items() if len(v) > 1}
    assert not replayed, f"a replay under the same model changed a value: {list(replayed)[:3]}"
    versions = {key: v[0]["model_version"] for key, v in values.items()}
    assert {versions[key] for key in before_change} == {1}
    assert {versions[key] for key in inputs - before_change} == {2}
    assert all(set(v[0]) == {"probability", "label", "model_version"} for v in values.values())

    _, ends, committed = read_to_end(broker.bootstrap, topic, group=group)
    assert committed == ends
    assert len(read_to_end(broker.bootstrap, output)[1]) == 3  # as many partitions as the input
    # The scorer group's lag, its topic taken from SCORE_TOPIC as the scorer's is.
    lag = run_cli(
        ["lag", "--group", group],
        {
            "STREAMFIT_KAFKA_BOOTSTRAP": broker.bootstrap,
            "STREAMFIT_SCORE_TOPIC": topic,
            "STREAMFIT_SCORE_GROUP_ID": group,
        },
    )
    assert lag.returncode == 0, lag.stderr[-2000:]
    rows = [line.split() for line in lag.stdout.splitlines()[1:]]
    assert [(row[1], row[-1]) for row in rows] == [(topic, "0")] * 3, lag.stdout


def test_two_scorers_split_the_partitions_and_survive_a_crash(
    broker: EmbeddedBroker, scorers: Callable[..., ServiceProcess], tmp_path: Path
) -> None:
    topic, group = unique("events"), unique("scorers")
    output = f"{topic}.predictions"
    save_model(tmp_path / "checkpoints", 1)
    produce_synthetic(broker.bootstrap, topic, rows=4000, partitions=4, seed=1)
    first = scorers(broker.bootstrap, topic, group, batch_size=200)
    second = scorers(broker.bootstrap, topic, group, batch_size=200)
    wait_for(
        lambda: split(first, second),
        first.join_timeout_s + 30,
        what="the partitions split between both scorers",
    )
    produce_synthetic(broker.bootstrap, topic, rows=2000, partitions=4, seed=2)
    wait_for(
        lambda: (
            set(predictions_by_key(read_to_end(broker.bootstrap, output)[0]))
            == input_keys(broker.bootstrap, topic)
        ),
        60,
        what="6k records scored",
    )
    assert scored_total(first) > 0 and scored_total(second) > 0

    second.kill()
    produce_synthetic(broker.bootstrap, topic, rows=2000, partitions=4, seed=3)
    wait_for(lambda: owned(first) == [0, 1, 2, 3], first.join_timeout_s + 30, what="the takeover")
    inputs = input_keys(broker.bootstrap, topic)
    assert len(inputs) == 8000
    wait_for(
        lambda: set(predictions_by_key(read_to_end(broker.bootstrap, output)[0])) == inputs,
        60,
        what="8k records scored",
    )
    values = predictions_by_key(read_to_end(broker.bootstrap, output)[0])
    assert set(values) == inputs
    assert all(len(v) == 1 for v in values.values()), "a replay changed a value"
    assert first.terminate() == 0


def transactional_scorers_survive_a_kill(
    bootstrap: str,
    produce: Callable[[str, int, int], None],
    scorers: Callable[..., ServiceProcess],
    tmp_path: Path,
    strict: bool,
    **settings: object,
) -> None:
    """Two transactional scorers share 4 partitions; one is killed; the other takes its
    partitions over with the same per-partition transactional ids. `strict`: each input is
    in the output once for read_committed readers (a broker with full transactions)."""
    topic, group = unique("events"), unique("scorers")
    output = f"{topic}.predictions"
    save_model(tmp_path / "checkpoints", 1)
    produce(topic, 2000, 1)
    first = scorers(bootstrap, topic, group, batch_size=200, score_transactions="on", **settings)
    # The second joins a running group: the usual way, and fewer rounds on the mock.
    wait_for(lambda: owned(first) == [0, 1, 2, 3], first.join_timeout_s, what="first join")
    second = scorers(bootstrap, topic, group, batch_size=200, score_transactions="on", **settings)
    wait_for(
        lambda: split(first, second),
        first.join_timeout_s + 30,
        what="the partitions split between both scorers",
    )
    assert first.get("/readyz")["scorer"]["transactional"] is True
    taken = owned(second)

    def committed_keys() -> set[str]:
        records, _, _ = read_to_end(bootstrap, output, read_committed=True, check_crcs=False)
        return set(predictions_by_key(records))

    inputs = input_keys(bootstrap, topic)
    wait_for(lambda: committed_keys() == inputs, 60, what="2k records scored")
    second.kill()
    produce(topic, 1000, 2)
    wait_for(lambda: owned(first) == [0, 1, 2, 3], first.join_timeout_s + 30, what="takeover")
    inputs = input_keys(bootstrap, topic)
    assert len(inputs) == 3000
    wait_for(lambda: committed_keys() == inputs, 60, what="3k records scored")
    assert first.terminate() == 0

    records, _, _ = read_to_end(bootstrap, output, read_committed=True, check_crcs=False)
    values = predictions_by_key(records)
    assert set(values) == inputs
    assert all(len(v) == 1 for v in values.values()), "a replay changed a value"
    if strict:
        assert len(records) == len(inputs), "a read_committed reader saw an input twice"
    # The survivor took each partition over under that partition's own transactional id.
    logs = first.logs()
    for partition in taken:
        assert f"streamfit-score.{group}.{topic}.{partition}" in logs


@pytest.mark.usefixtures("without_test_switches")
def test_transactional_scorers_on_the_mock_cluster(
    mock_cluster: tuple[str, Any], scorers: Callable[..., ServiceProcess], tmp_path: Path
) -> None:
    bootstrap, owner = mock_cluster

    def produce(topic: str, rows: int, seed: int) -> None:
        for index, (key, value) in enumerate(synthetic_pairs(rows, seed, WIDTH)):
            owner.produce(topic, key=key, value=value, partition=index % 4)  # auto-created
        assert owner.flush(10) == 0

    # The mock answers a member's SyncGroup that comes before the leader's with
    # InvalidRequest (measured), and the member joins again one session later: a session of
    # 3 s (the mock allows it) shortens those rounds.
    transactional_scorers_survive_a_kill(
        bootstrap, produce, scorers, tmp_path, strict=False, session_timeout_ms=3000
    )


def test_transactional_scorers_read_committed_once(
    scorers: Callable[..., ServiceProcess], tmp_path: Path
) -> None:
    if not TXN_BOOTSTRAP:
        pytest.skip(
            "needs a broker with full transactions (set STREAMFIT_TEST_TXN_BOOTSTRAP, e.g. "
            "docker-compose's Apache Kafka): librdkafka 2.16.1's mock cluster shows aborted "
            "records to read_committed readers, does not fence an older producer of the same "
            "transactional id and does not store transactional offsets (measured); Tansu "
            "refuses InitProducerId"
        )
    bootstrap = TXN_BOOTSTRAP

    def produce(topic: str, rows: int, seed: int) -> None:
        produce_synthetic(bootstrap, topic, rows=rows, partitions=4, seed=seed)

    transactional_scorers_survive_a_kill(bootstrap, produce, scorers, tmp_path, strict=True)


NAMES = ("a", "b", "c")
CLASSES = ("cat", "dog", "eel")
FORMATS = ("named-json-multiclass", "csv-regression", "avro-binary")


def save_task_model(directory: Path, task: Task, inputs: InputSpec) -> None:
    """A one-layer model for `task` on 3 features, as a trainer would checkpoint it."""
    rng = np.random.default_rng(5)
    state = {
        "weights": [rng.standard_normal((3, task.outputs)), np.zeros(task.outputs)],
        "activations": [{"multiclass": "softmax", "binary": "sigmoid"}.get(task.kind, "linear")],
        "optimizer": [],
        "model_state": [],
        "standardizer": {"count": 100, "mean": np.zeros(3), "m2": 100 * np.ones(3)},
        "samples_trained": 100,
        "batches_trained": 1,
        "num_features": 3,
        "model": {"task": task.state(), "inputs": inputs.state(), "spec": "linear"},
    }
    CheckpointStore(directory).save(Checkpoint(version=1, state=state, offsets={}))


@pytest.mark.parametrize("case", FORMATS)
def test_every_format_and_task_scores_as_training_reads_it(
    case: str,
    broker: EmbeddedBroker,
    schema_registry: Any,
    scorers: Callable[..., ServiceProcess],
    tmp_path: Path,
) -> None:
    """Named JSON (multiclass), CSV (regression) and Avro (binary) records: one JSON
    prediction with the task's fields per good record, unlabelled ones included, and the bad
    one in the dead-letter topic."""
    topic, group = unique("events"), unique("scorers")
    rng = np.random.default_rng(1)
    rows = rng.standard_normal((40, 3)).tolist()
    settings: dict[str, str] = {}
    pairs: list[tuple[bytes | None, bytes | None]]
    if case == "named-json-multiclass":
        task, inputs = Task("multiclass", CLASSES), InputSpec.positional(3, NAMES)
        settings = {"message_format": "json", "task": "multiclass", "classes": ",".join(CLASSES)}
        settings["features"] = ",".join(NAMES)
        objects = [
            dict(zip(NAMES, row, strict=True)) | {"label": CLASSES[i % 3]}
            for i, row in enumerate(rows)
        ]
        objects[0].pop("label")  # unlabelled: scored
        pairs = [(None, json.dumps(o).encode()) for o in objects]
        pairs.append((None, json.dumps({"a": "x", "b": 1, "c": 2, "label": "cat"}).encode()))
        fields = {"probabilities", "class", "label", "model_version"}
    elif case == "csv-regression":
        task, inputs = Task("regression", ()), InputSpec.positional(3)
        settings = {"task": "regression", "num_features": "3"}
        pairs = [(f"{row[0]:.3f}".encode(), ",".join(map(repr, row)).encode()) for row in rows]
        pairs.append((b"1.0", b"1.0,2.0"))  # wrong width
        fields = {"prediction", "label", "model_version"}
    else:
        import fastavro

        from service.avro import encode

        task, inputs = Task(), InputSpec.positional(3, NAMES)
        schema = {
            "type": "record",
            "name": "Row",
            "fields": [
                *({"name": n, "type": "double"} for n in NAMES),
                {"name": "label", "type": "long"},
            ],
        }
        schema_id = schema_registry.register(f"{topic}-value", schema)
        parsed = fastavro.parse_schema(schema)
        objects = [
            dict(zip(NAMES, row, strict=True)) | {"label": i % 2} for i, row in enumerate(rows)
        ]
        pairs = [(None, encode(schema_id, parsed, o)) for o in objects]
        pairs.append((None, b"\x00\x00\x00\x99\x99"))  # an unknown schema id
        settings = {
            "message_format": "avro",
            "schema_registry_url": schema_registry.url,
            "features": ",".join(NAMES),
        }
        fields = {"probability", "label", "model_version"}
    save_task_model(tmp_path / "checkpoints", task, inputs)
    produce_pairs(broker.bootstrap, topic, pairs, partitions=2)
    scorer = scorers(broker.bootstrap, topic, group, **settings)
    wait_for(lambda: scored_total(scorer) == len(rows), scorer.join_timeout_s + 30, what="scored")
    records = consume_all(broker.bootstrap, f"{topic}.predictions", len(rows))
    values = [json.loads(r.value) for r in records]
    assert len({r.key for r in records}) == len(rows)
    assert all(set(v) == fields and v["model_version"] == 1 for v in values)
    if task.kind == "multiclass":
        assert all(v["class"] in CLASSES for v in values)
        assert sum(v["label"] is None for v in values) == 1
    dead = consume_all(broker.bootstrap, f"{topic}.dlq", 1)
    assert [r.value for r in dead] == [pairs[-1][1]]
    assert scorer.terminate() == 0


def test_follow_with_transactions_on_stops_where_the_broker_refuses_them(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    save_model(tmp_path / "checkpoints", 1)
    args = ["score", "--follow", "--topic", unique("events"), "--group", unique("scorers")]
    args += ["--transactions", "on", "--score-http-port", str(free_port())]
    env = {
        "STREAMFIT_KAFKA_BOOTSTRAP": broker.bootstrap,
        "STREAMFIT_CHECKPOINT_DIR": str(tmp_path / "checkpoints"),
    }
    result = run_cli(args, env, timeout_s=60)
    assert result.returncode == 1, result.stderr[-2000:]
    assert "refused transactions" in result.stderr


def test_a_crash_between_write_and_commit_rescores_only_that_batch(
    broker: EmbeddedBroker, scorers: Callable[..., ServiceProcess], tmp_path: Path
) -> None:
    """The fault hook exits the scorer after its first batch is written and acknowledged,
    before its offsets are committed: the next scorer writes that batch again, same values."""
    topic, group = unique("events"), unique("scorers")
    output = f"{topic}.predictions"
    save_model(tmp_path / "checkpoints", 1)
    produce_synthetic(broker.bootstrap, topic, rows=1000, partitions=2, seed=4)
    crashing = scorers(
        broker.bootstrap,
        topic,
        group,
        wait_ready=False,  # it may exit before /readyz is asked
        batch_size=100,
        fault_score_exit_after_write=1,
    )
    assert crashing.process is not None
    assert crashing.process.wait(timeout=crashing.join_timeout_s + 30) == CRASH_EXIT_CODE
    written = read_to_end(broker.bootstrap, output)[0]
    assert 0 < len(written) <= 100
    assert set(read_to_end(broker.bootstrap, topic, group=group)[2].values()) == {None}

    scorer = scorers(broker.bootstrap, topic, group, batch_size=100)
    inputs = input_keys(broker.bootstrap, topic)
    wait_for(
        lambda: set(predictions_by_key(read_to_end(broker.bootstrap, output)[0])) == inputs,
        scorer.join_timeout_s + 30,
        what="1k records scored",
    )
    records = read_to_end(broker.bootstrap, output)[0]
    assert len(records) == len(inputs) + len(written)
    assert all(len(v) == 1 for v in predictions_by_key(records).values())
    assert scorer.terminate() == 0
