"""Predictions from 16 connections while the trainer learns a backlog at full speed.

The two cores are shared by the trainer (consumer and learner), the HTTP workers and the load
generator. One backlog topic is written once; each point of the trade-off is a fresh service
(its own consumer group, so it starts at the beginning of the backlog) with its own settings:
`STREAMFIT_HTTP_WORKERS` (HTTP worker processes; 0 serves HTTP in the trainer's own process,
the design before them) and `STREAMFIT_TF_THREADS`. For each: the trainer's rate from Kafka
with no HTTP load (a window before and one after), then wrk with 16 connections (one thread,
or two where the point says so), one instance per request, for the loaded window; the ratio is the
loaded rate over the mean unloaded one.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from bench.contention import CpuWindow
from bench.latency import generate_load
from bench.profile import gil_shares, parse_raw, record
from bench.report import SummaryRow, fmt_int, fmt_ms, table
from bench.stack import RESULTS, BenchSession, Service, poll_until

NAME = "concurrency"
TITLE = "Predictions from 16 connections during a backlog"
CONNECTIONS = 16
TARGET_P99_S = 0.005
TARGET_RPS = 3000.0
TARGET_TRAIN_RATIO = 0.5
DEFAULT_POINT = "defaults (HTTP_WORKERS=auto: 1 on 2 CPUs)"
# Each connection of a paced point waits a random pause of this mean after each answer:
# about 3,200 req/s offered by 16 connections (the target's rate, not the service's ceiling).
PACED_PAUSE_MS = 4.0
PACED_POINT = f"defaults, paced (each connection pausing {PACED_PAUSE_MS} ms on average)"
# (label, service environment, wrk threads, pause or None: saturating). One wrk thread drives
# the 16 connections (epoll); the point with 2 shows what a second one costs on a 2-core
# machine, where it competes with the service for the cores and its own scheduling delays
# count as latency.
Point = tuple[str, dict[str, str], int, float | None]
POINTS: tuple[Point, ...] = (
    (DEFAULT_POINT, {}, 1, None),
    ("HTTP in the trainer's process (HTTP_WORKERS=0)", {"STREAMFIT_HTTP_WORKERS": "0"}, 1, None),
    ("HTTP_WORKERS=2", {"STREAMFIT_HTTP_WORKERS": "2"}, 1, None),
    ("defaults, wrk with 2 threads", {}, 2, None),
    (PACED_POINT, {}, 1, PACED_PAUSE_MS),
)
FULL_ONLY_POINTS: tuple[Point, ...] = (("TF_THREADS=2", {"STREAMFIT_TF_THREADS": "2"}, 1, None),)


def _rate(service: Service, seconds: float) -> float:
    before, started = service.learned(), time.perf_counter()
    time.sleep(seconds)
    return (service.learned() - before) / (time.perf_counter() - started)


def gil_profile(service: Service, seconds: int, threads: int) -> dict[str, Any]:
    """Which threads of the trainer's process hold the GIL under the same load (py-spy
    `--gil`, sampling only the holder), in a window of its own after the measured ones."""
    path = RESULTS / f"concurrency-gil-{service.port}.txt"
    RESULTS.mkdir(parents=True, exist_ok=True)
    load = threading.Thread(target=generate_load, args=(service, seconds + 2, CONNECTIONS, threads))
    load.start()
    time.sleep(1)
    record(service.pid, seconds, path, "raw", "--threads", "--gil")
    load.join()
    shares = gil_shares(parse_raw(path), seconds)
    path.unlink()
    return shares


def point(
    session: BenchSession,
    topic: str,
    backlog: int,
    label: str,
    env: dict[str, str],
    threads: int,
    quiet_s: float,
    load_s: float,
    profile_s: int = 0,
    pause_ms: float | None = None,
) -> dict[str, Any]:
    service = session.service(topic, env=env).start()
    poll_until(lambda: service.learned() > 0, 60, 0.05, "first trained batch")
    generate_load(service, 1.0, CONNECTIONS, threads)  # warm-up: connections, first-request paths
    alone_before = _rate(service, quiet_s)
    cpu = CpuWindow().start()
    learned_before, started = service.learned(), time.perf_counter()
    load = generate_load(service, load_s, CONNECTIONS, threads, pause_ms)
    loaded = (service.learned() - learned_before) / (time.perf_counter() - started)
    window = cpu.stop()
    alone_after = _rate(service, quiet_s)
    learned_at_end = service.learned()
    gil = gil_profile(service, profile_s, threads) if profile_s else None
    service.stop()
    alone = (alone_before + alone_after) / 2
    latency_us, seconds = load["latency_us"], load["duration_us"] / 1e6
    return {
        "point": label,
        "env": env,
        "wrk_threads": threads,
        "pause_ms": pause_ms,
        "requests": load["requests"],
        "errors": sum(load["errors"].values()),
        "rps": load["requests"] / seconds,
        "p50_s": latency_us["p50"] / 1e6,
        "p90_s": latency_us["p90"] / 1e6,
        "p99_s": latency_us["p99"] / 1e6,
        "max_s": latency_us["max"] / 1e6,
        "trained_alone": [alone_before, alone_after],
        "trained_alone_mean": alone,
        "trained_loaded": loaded,
        "train_ratio": loaded / alone if alone else 0.0,
        "backlog_left": backlog - learned_at_end,
        "cpu": window,
        "gil": gil,
    }


def run(session: BenchSession, quick: bool) -> dict[str, Any]:
    quiet_s, load_s = (2.0, 5.0) if quick else (3.0, 10.0)
    # Enough that no point runs dry before its GIL profile: a point learns for about 15 s
    # (quick) or 25 s (full), at up to 90k rec/s on this machine.
    backlog = 1_600_000 if quick else 3_600_000
    topic = session.new_topic("concurrency")
    produce_s = session.produce(topic, backlog, seed=31)
    points = POINTS if quick else POINTS + FULL_ONLY_POINTS
    profile_s = 3 if quick else 6  # the GIL profile: the defaults and HTTP_WORKERS=0
    results = [
        point(
            session,
            topic,
            backlog,
            label,
            env,
            threads,
            quiet_s,
            load_s,
            profile_s if i < 2 else 0,
            pause_ms,
        )
        for i, (label, env, threads, pause_ms) in enumerate(points)
    ]
    return {
        "connections": CONNECTIONS,
        "backlog": backlog,
        "produce_s": produce_s,
        "quiet_s": quiet_s,
        "load_s": load_s,
        "points": results,
    }


def _met(r: dict[str, Any]) -> bool:
    return (
        r["p99_s"] <= TARGET_P99_S
        and r["rps"] >= TARGET_RPS
        and r["errors"] == 0
        and r["train_ratio"] >= TARGET_TRAIN_RATIO
        and r["backlog_left"] > 0
    )


def summary(result: dict[str, Any]) -> list[SummaryRow]:
    """The defaults at the service's ceiling (saturating) and at the target's rate (paced)."""
    rows = []
    for label, name in (
        (DEFAULT_POINT, "saturating"),
        (PACED_POINT, f"paced, {PACED_PAUSE_MS} ms mean pause per connection"),
    ):
        r = next((p for p in result["points"] if p["point"] == label), None)
        if r is None:
            continue
        rows.append(
            SummaryRow(
                f"prediction, 16 connections, trainer learning a backlog (defaults, {name})",
                f"p50 {fmt_ms(r['p50_s'])}, p99 {fmt_ms(r['p99_s'])}, {fmt_int(r['rps'])} "
                f"req/s; trainer at {r['train_ratio']:.2f} of its unloaded rate "
                f"({fmt_int(r['trained_loaded'])} of {fmt_int(r['trained_alone_mean'])} rec/s)",
                f"p99 <= {TARGET_P99_S * 1e3:.0f} ms, >= {TARGET_RPS:.0f} req/s, "
                f"trainer >= {TARGET_TRAIN_RATIO}",
                _met(r),
            )
        )
    return rows


def render(result: dict[str, Any]) -> str:
    rows = [
        [
            r["point"],
            str(r["wrk_threads"]),
            fmt_ms(r["p50_s"]),
            fmt_ms(r["p90_s"]),
            f"**{fmt_ms(r['p99_s'])}**",
            fmt_ms(r["max_s"]),
            f"**{fmt_int(r['rps'])}**",
            str(r["errors"]),
            f"{fmt_int(r['trained_alone'][0])} / {fmt_int(r['trained_alone'][1])}",
            fmt_int(r["trained_loaded"]),
            f"**{r['train_ratio']:.2f}**",
            f"{r['cpu']['foreign_cores']:.2f}",
            "yes" if _met(r) else "**no**",
        ]
        for r in result["points"]
    ]
    ran_out = [r["point"] for r in result["points"] if r["backlog_left"] <= 0]
    note = f"\n\nThe backlog ran out during: {', '.join(ran_out)}." if ran_out else ""
    return (
        f"A backlog of {result['backlog']:,} records (3 partitions) written once; each row is a "
        "fresh service on it (its own consumer group). The trainer's rate from Kafka alone is "
        f"measured for {result['quiet_s']:.0f} s before and after the load; wrk "
        f"({result['connections']} keep-alive connections on one thread unless the row says 2, "
        "one 18-feature instance per request, each connection sending its next request as soon "
        "as the last is answered: the service's ceiling; in the paced row, after a random pause "
        "of the stated mean, exponentially distributed, so the connections offer a rate near "
        f"the target's) runs for {result['load_s']:.0f} s in between. *Trainer "
        "ratio* is its rate under load over the mean unloaded rate. *Foreign cores*: CPU used "
        "by processes other than the service, its workers, the broker and wrk.\n\n"
        + table(
            [
                "settings",
                "wrk threads",
                "p50",
                "p90",
                "p99",
                "max",
                "req/s",
                "errors",
                "trained rec/s alone (before / after)",
                "trained rec/s under load",
                "trainer ratio",
                "foreign cores",
                "target met",
            ],
            rows,
        )
        + f"\n\nTargets (defaults): p99 <= {TARGET_P99_S * 1e3:.0f} ms and >= "
        f"{TARGET_RPS:.0f} req/s, with the trainer learning >= {TARGET_TRAIN_RATIO} of its "
        "unloaded rate." + note + _render_gil(result["points"])
    )


def _render_gil(points: list[dict[str, Any]]) -> str:
    profiled = [p for p in points if p.get("gil")]
    if not profiled:
        return ""
    threads = sorted({t for p in profiled for t in p["gil"]["held"]})
    rows = [[t, *[f"{100 * p['gil']['held'].get(t, 0.0):.0f}%" for p in profiled]] for t in threads]
    rows.append(
        ["(any thread)", *[f"{100 * sum(p['gil']['held'].values()):.0f}%" for p in profiled]]
    )
    return (
        "\n\nWhere the trainer's process holds the GIL under the same load (py-spy `--gil` "
        "at 100 Hz in a window of its own after the measured ones; the share of wall time "
        "each thread held it; `MainThread` is the event loop: consumer, hand-offs and, without "
        "workers, HTTP):\n\n" + table(["thread", *[p["point"] for p in profiled]], rows)
    )
