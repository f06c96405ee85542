"""Continuous scoring: records scored per second from Kafka, and the delay to a prediction.

Two figures of the scorer role (`STREAMFIT_ROLE=scorer`, a real child process on the embedded
broker, so write-then-commit output). Throughput: the scorer works through a topic filled
beforehand; its rate (from `streamfit_records_scored_total`, first prediction to last) is
compared with the same work in this process on the same records, already in memory: decode,
the row-wise forward pass and the output records (`score_records`), batch by batch, measured
right before and right after the Kafka run (the ratio uses their mean). Delay: while a
background stream writes a live topic, a reader in this process takes each prediction off the
output topic as it appears and subtracts the create time of its source record.

The model is a Dense-only network of the default MLP's shape (18-128-256-128-1) with random
weights: the forward pass costs what the default model's does, without TensorFlow.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
from aiokafka import AIOKafkaConsumer

from bench.contention import CpuWindow
from bench.report import SummaryRow, fmt_int, fmt_ms, table
from bench.stack import BenchSession, Service, poll_until
from bench.stats import summarize
from service.producer import synthetic_pairs

NAME = "scoring"
TITLE = "Continuous scoring"
BATCH = 256  # STREAMFIT_BATCH_SIZE's default
BATCHES = (BATCH, 2048)
PARTITIONS = 3
STREAM_RATE = 1000.0
SEED = 17
LAYERS = (18, 128, 256, 128, 1)


def save_model(directory: Path) -> None:
    """Checkpoint 1: the default MLP's shape, random weights (a NumPy forward pass)."""
    from service.checkpoints import Checkpoint, CheckpointStore

    rng = np.random.default_rng(SEED)
    weights: list[np.ndarray] = []
    for fan_in, fan_out in zip(LAYERS, LAYERS[1:], strict=False):
        weights.append((rng.standard_normal((fan_in, fan_out)) / np.sqrt(fan_in)).astype("f4"))
        weights.append(np.zeros(fan_out, dtype=np.float32))
    state = {
        "weights": weights,
        "activations": ["relu", "relu", "relu", "sigmoid"],
        "optimizer": [],
        "model_state": [],
        "standardizer": {"count": 100, "mean": np.zeros(18), "m2": 100 * np.ones(18)},
        "samples_trained": 100,
        "batches_trained": 1,
    }
    CheckpointStore(directory).save(Checkpoint(version=1, state=state, offsets={}))


def in_memory_rate(directory: Path, rows: int, batch: int) -> float:
    """records/s of `score_records` over the topic's records, in batches, in this process."""
    from service.checkpoints import CheckpointStore
    from service.scoring.predictions import codec_for, score_records
    from service.serving.snapshot import snapshot_from_checkpoint
    from service.settings import Settings

    checkpoint = CheckpointStore(directory).latest()
    assert checkpoint is not None
    snapshot = snapshot_from_checkpoint(checkpoint)
    codec = codec_for(Settings(), snapshot)
    records = [
        SimpleNamespace(topic="bench", partition=i % PARTITIONS, offset=i, key=k, value=v)
        for i, (k, v) in enumerate(synthetic_pairs(rows, SEED, 18))
    ]
    started = time.perf_counter()
    for start in range(0, rows, batch):
        score_records(codec, snapshot, records[start : start + batch], "out", "dlq")
    return rows / (time.perf_counter() - started)


def scored_total(scorer: Service) -> float:
    return scorer.metrics().get("streamfit_records_scored_total", 0.0)


def start_scorer(
    session: BenchSession, topic: str, directory: Path, group: str, batch: int = BATCH
) -> Service:
    scorer = session.service(
        topic,
        checkpoint_dir=directory,
        role="scorer",
        score_topic=topic,
        score_group_id=group,
        batch_size=batch,
        session_timeout_ms=6000,
    )
    scorer.env["STREAMFIT_SCORE_HTTP_PORT"] = str(scorer.port)
    return scorer.start()


def kafka_rate(session: BenchSession, directory: Path, rows: int, batch: int) -> dict[str, Any]:
    """The scorer through a filled topic: records/s from its first prediction to its last."""
    topic = session.new_topic("score")
    session.produce(topic, rows, PARTITIONS, seed=SEED)
    scorer = start_scorer(session, topic, directory, f"bench-{topic}", batch)
    first, t_first = poll_until(
        lambda: scored_total(scorer) or None, 120, 0.01, "the first prediction"
    )
    cpu = CpuWindow().start()
    _, t_last = poll_until(lambda: scored_total(scorer) >= rows, 300, 0.01, "every prediction")
    window = cpu.stop()
    scorer.stop()
    return {
        "rows": rows,
        "batch_size": batch,
        "rate": (rows - first) / (t_last - t_first),
        "seconds": t_last - t_first,
        "cpu": window,
    }


async def _delays(bootstrap: str, topic: str, seconds: float) -> list[float]:
    """Seconds from each input record's create time to its prediction reaching a reader."""
    options = {"bootstrap_servers": bootstrap, "fetch_max_wait_ms": 10, "enable_auto_commit": False}
    inputs = AIOKafkaConsumer(topic, **options)
    outputs = AIOKafkaConsumer(f"{topic}.predictions", **options)
    created: dict[bytes, float] = {}
    received: dict[bytes, float] = {}
    await inputs.start()
    await outputs.start()

    async def read(consumer: AIOKafkaConsumer, into: dict[bytes, float], inputs_: bool) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for part in (await consumer.getmany(timeout_ms=50)).values():
                now = time.time()
                for r in part:
                    if inputs_:
                        into[f"{r.topic}/{r.partition}/{r.offset}".encode()] = r.timestamp / 1e3
                    else:
                        into[r.key] = now

    try:
        await asyncio.gather(read(inputs, created, True), read(outputs, received, False))
    finally:
        await inputs.stop()
        await outputs.stop()
    return [received[key] - created[key] for key in received if key in created]


def live_delay(session: BenchSession, directory: Path, seconds: float) -> dict[str, Any]:
    """End-to-end delay on a live stream of STREAM_RATE records/s."""
    from service.kafka.topics import ensure_topic

    topic = session.new_topic("live")
    asyncio.run(ensure_topic({"bootstrap_servers": session.bootstrap}, topic, PARTITIONS))
    session.stream(topic, STREAM_RATE, PARTITIONS)
    scorer = start_scorer(session, topic, directory, f"bench-{topic}")
    poll_until(lambda: scored_total(scorer) > STREAM_RATE, 120, 0.1, "scoring the stream")
    cpu = CpuWindow().start()
    delays = asyncio.run(_delays(session.bootstrap, topic, seconds))
    window = cpu.stop()
    return {"delay_s": summarize(delays), "seconds": seconds, "cpu": window}


def run(session: BenchSession, quick: bool) -> dict[str, Any]:
    rows = 50_000 if quick else 200_000
    directory = session.workdir / "scoring" / "checkpoints"
    save_model(directory)
    runs = []
    for batch in BATCHES:
        before = in_memory_rate(directory, rows, batch)
        kafka = kafka_rate(session, directory, rows, batch)
        after = in_memory_rate(directory, rows, batch)
        memory = statistics.mean([before, after])
        runs.append(
            {**kafka, "memory_rates": [before, after], "memory_rate": memory}
            | {"ratio": kafka["rate"] / memory}
        )
    return {
        "batch_size": BATCH,
        "runs": runs,
        "kafka": runs[0],
        "ratio": runs[0]["ratio"],
        "live": live_delay(session, directory, 10.0 if quick else 30.0),
        "stream_rate": STREAM_RATE,
    }


def summary(result: dict[str, Any]) -> list[SummaryRow]:
    d = result["live"]["delay_s"]
    return [
        SummaryRow(
            "continuous scoring (scorer role, from Kafka to the output topic)",
            f"{fmt_int(result['kafka']['rate'])} records/s, {result['ratio']:.2f} of the same "
            f"work in memory; input to prediction p50 {fmt_ms(d['p50'])}, p95 "
            f"{fmt_ms(d['p95'])} at {result['stream_rate']:.0f} records/s",
            "measured (no target)",
            None,
        )
    ]


def render(result: dict[str, Any]) -> str:
    live = result["live"]
    d = live["delay_s"]
    rows = [
        [
            str(r["batch_size"]) + (" (default)" if r["batch_size"] == BATCH else ""),
            fmt_int(r["rate"]),
            fmt_int(r["memory_rate"]),
            f"{fmt_int(r['memory_rates'][0])}, {fmt_int(r['memory_rates'][1])}",
            f"**{r['ratio']:.2f}**",
            f"{r['seconds']:.1f}",
            f"{r['cpu']['foreign_cores']:.2f}",
        ]
        for r in result["runs"]
    ]
    return "\n".join(
        [
            f"The scorer role (one process, write-then-commit on the embedded broker) through "
            f"{result['kafka']['rows']:,} records filled beforehand over {PARTITIONS} "
            "partitions, against `score_records` (decode, row-wise forward pass, output "
            "records) on the same records in this process, before and after. The model has "
            "the default MLP's shape (18-128-256-128-1, Dense only). Each batch waits for its "
            "writes to be acknowledged and then for its offset commit: two round trips per "
            "batch that the in-memory figure does not pay, which larger batches amortize.",
            "",
            table(
                [
                    "batch",
                    "from Kafka (records/s)",
                    "in memory (mean)",
                    "in memory (before, after)",
                    "ratio",
                    "seconds",
                    "foreign CPU (cores)",
                ],
                rows,
            ),
            "",
            f"Delay from an input record's create time to its prediction reaching a reader "
            f"of the output topic, on a live stream of {result['stream_rate']:.0f} records/s "
            f"(another process) over {live['seconds']:.0f} s ({d['n']:,} predictions, batch "
            f"{result['batch_size']}):",
            "",
            table(
                ["p50", "p95", "p99", "max"],
                [[fmt_ms(d["p50"]), fmt_ms(d["p95"]), fmt_ms(d["p99"]), fmt_ms(d["max"])]],
            ),
        ]
    )
