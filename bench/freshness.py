"""Freshness: time from a record being produced to predictions from a model that learned it.

A background stream runs at a modest rate (`streamfit produce --rate`, another process) and
the service trains on it at default settings. Each trial sends one marker record (acks=all,
no linger) from this process, polls `/lag` until the learned position of the marker's
partition passes the marker's offset (*learned*), then `/model` until the served snapshot's
`samples_trained` covers everything learned at that moment (*served*: from then on every
prediction comes from a model that has learned the marker). On a fresh topic and group with
no rejects, samples learned = the sum of the learned positions.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

from aiokafka import AIOKafkaProducer

from bench.contention import CpuWindow
from bench.report import SummaryRow, fmt_ms, table
from bench.stack import BenchSession, Service, poll_until
from bench.stats import summarize
from service.codec import encode_csv
from service.producer import ensure_topic
from service.synthetic import synthetic_susy

NAME = "freshness"
TITLE = "Freshness: produced to learned and served"
TARGET_S = 0.100
STREAM_RATES = (1000.0, 10_000.0)
PARTITIONS = 3
POLL_S = 0.005


def _positions(service: Service) -> dict[int, int]:
    return {
        int(row["partition"]): int(row["position"] or 0)
        for row in service.get("/lag")["partitions"]
    }


def _lag(service: Service) -> int:
    return sum(int(row["lag"] or 0) for row in service.get("/lag")["partitions"])


def _served_samples(service: Service) -> int:
    return int(service.get("/model")["samples_trained"])


async def _trials(
    session: BenchSession, service: Service, topic: str, trials: int
) -> list[dict[str, Any]]:
    producer = AIOKafkaProducer(bootstrap_servers=session.bootstrap, acks="all", linger_ms=0)
    await producer.start()
    loop = asyncio.get_running_loop()
    x, y = synthetic_susy(trials, seed=99)
    pairs = encode_csv(x, y)
    results = []
    try:
        for trial, (key, value) in enumerate(pairs):
            await asyncio.sleep(random.uniform(0.2, 0.5))  # not in phase with the trainer
            partition = trial % PARTITIONS
            sent = time.perf_counter()
            metadata = await producer.send_and_wait(
                topic, value=value, key=key, partition=partition
            )
            acked = time.perf_counter()
            deadline = acked + 30
            while True:
                positions = await loop.run_in_executor(None, _positions, service)
                learned = time.perf_counter()
                if positions.get(partition, -1) > metadata.offset:
                    break
                if learned > deadline:
                    raise TimeoutError(f"marker {partition}:{metadata.offset} not learned in 30 s")
                await asyncio.sleep(POLL_S)
            while True:
                samples = await loop.run_in_executor(None, _served_samples, service)
                served = time.perf_counter()
                if samples >= sum(positions.values()):
                    break
                if served > deadline:
                    raise TimeoutError("the served snapshot did not catch up in 30 s")
                await asyncio.sleep(POLL_S)
            results.append(
                {
                    "partition": partition,
                    "offset": metadata.offset,
                    "ack_s": acked - sent,
                    "learned_s": learned - sent,
                    "fresh_s": served - sent,
                }
            )
    finally:
        await producer.stop()
    return results


def run(session: BenchSession, quick: bool) -> dict[str, Any]:
    trials = 10 if quick else 25
    return {"rates": [one_rate(session, rate, trials) for rate in STREAM_RATES]}


def one_rate(session: BenchSession, rate: float, trials: int) -> dict[str, Any]:
    topic = session.new_topic("freshness")
    asyncio.run(ensure_topic({"bootstrap_servers": session.bootstrap}, topic, PARTITIONS))
    stream = session.stream(topic, rate, PARTITIONS)
    service = session.service(topic).start()
    # Caught up with the stream (what it wrote while the service started is learned, less than
    # 50 ms of it left): the trainer is in its steady state.
    poll_until(lambda: service.samples_trained() > rate, 60, 0.1, "training on the stream")
    poll_until(lambda: _lag(service) < rate / 20, 120, 0.1, "caught up with the stream")
    before = service.samples_trained()
    cpu = CpuWindow().start()
    started = time.perf_counter()
    results = asyncio.run(_trials(session, service, topic, trials))
    elapsed = time.perf_counter() - started
    stream_rate = (service.samples_trained() - before) / elapsed
    window = cpu.stop()
    stream.stop()
    service.stop()
    fresh = [r["fresh_s"] for r in results]
    return {
        "trials": results,
        "fresh_s": summarize(fresh),
        "ack_s": summarize([r["ack_s"] for r in results]),
        "learned_s": summarize([r["learned_s"] for r in results]),
        "stream_rate_target": rate,
        "trained_rate_during": stream_rate,
        "poll_s": POLL_S,
        "cpu": window,
    }


def _rates(result: dict[str, Any]) -> list[dict[str, Any]]:
    return result.get("rates") or [result]  # results written before the 10k rec/s stream


def summary(result: dict[str, Any]) -> list[SummaryRow]:
    return [
        SummaryRow(
            f"freshness (produced -> learned and served), {r['stream_rate_target']:,.0f} rec/s",
            f"p50 {fmt_ms(r['fresh_s']['p50'])}, p95 {fmt_ms(r['fresh_s']['p95'])} over "
            f"{r['fresh_s']['n']} trials",
            f"p95 <= {TARGET_S * 1e3:.0f} ms",
            r["fresh_s"]["p95"] <= TARGET_S,
        )
        for r in _rates(result)
    ]


def render(result: dict[str, Any]) -> str:
    rows = []
    for r in _rates(result):
        rate = f"{r['stream_rate_target']:,.0f} rec/s"
        for label, key in (
            ("produced -> learned and served", "fresh_s"),
            ("produced -> learned (position past the marker)", "learned_s"),
            ("produce only (acks=all)", "ack_s"),
        ):
            f = r[key]
            rows.append(
                [rate, label, fmt_ms(f["p50"]), fmt_ms(f["p95"]), fmt_ms(f["max"]),
                 fmt_ms(f["mean"])]
            )  # fmt: skip
    first = _rates(result)[0]
    trained = ", ".join(
        f"{r['trained_rate_during']:,.0f} rec/s on the {r['stream_rate_target']:,.0f} rec/s "
        f"stream (other load {r['cpu']['foreign_cores']:.2f} cores)"
        for r in _rates(result)
    )
    met = all(r["fresh_s"]["p95"] <= TARGET_S for r in _rates(result))
    return "\n".join(
        [
            f"A background stream over {PARTITIONS} partitions (another process), default "
            f"settings. {first['fresh_s']['n']} marker records per stream, one every 0.2–0.5 s "
            "(acks=all, no linger); `/lag` polled every "
            f"{first['poll_s'] * 1e3:.0f} ms until the marker is learned, then `/model` until "
            "the served snapshot has learned it. The trainer learned " + trained + ".",
            "",
            table(["stream", "", "p50", "p95", "max", "mean"], rows),
            "",
            f"Target p95 <= {TARGET_S * 1e3:.0f} ms at each rate: "
            f"**{'met' if met else 'not met'}**.",
        ]
    )
