"""Prediction latency and throughput, with and without concurrent training.

A load generator in another process — wrk with bench/predict.lua when installed, else
`python -m bench.loadgen` — POSTs one 18-feature instance per request to
`/v1/models/susy:predict` over 2 keep-alive connections (2 threads for wrk: the machine has
2 cores and the service is one process). Three scenarios: the trainer idle (empty topic),
the trainer consuming a live stream (another process producing at a modest rate), and the
trainer working through a backlog at full speed (the worst case for the event loop).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.contention import CpuWindow
from bench.report import SummaryRow, fmt_int, fmt_ms, table
from bench.stack import ROOT, BenchSession, Service, poll_until
from service.producer import ensure_topic

NAME = "latency"
TITLE = "Prediction latency and throughput"
TARGET_P99_S = 0.010
TARGET_RPS = 1000.0
CONNECTIONS = 2
STREAM_RATE = 1000.0
PATH = "/v1/models/susy:predict"
LUA = Path(__file__).with_name("predict.lua")
INSTANCE = [40.1, 1.2, 0.31, 30.5, 0.25, -0.3, 25.0, 0.4, 0.52, 1.1, 2.0, 0.33, 0.1, 1.5, 0.7, 0.9,
            0.2, -0.4]  # fmt: skip


def load_tool() -> str:
    return "wrk" if shutil.which("wrk") else "python"


def generate_load(
    service: Service,
    duration_s: float,
    connections: int = CONNECTIONS,
    threads: int = 2,
    pause_ms: float | None = None,
) -> dict[str, Any]:
    """Run the load generator for duration_s; its JSON summary (latencies in microseconds).

    `threads` is wrk's (at most one per connection); the Python generator is one thread.
    `pause_ms` (wrk only): each connection waits a random time of this mean (exponential, so
    the connections do not fall into step) after an answer before its next request, which
    offers a rate instead of saturating the service.
    """
    environ = None
    if load_tool() == "wrk":
        command = [
            "wrk", f"-t{min(connections, threads)}", f"-c{connections}", f"-d{duration_s:.0f}s",
            "--timeout", "5s", "-s", str(LUA), service.url + PATH,
        ]  # fmt: skip
        if pause_ms is not None:
            environ = {**os.environ, "BENCH_PAUSE_MS": str(pause_ms)}
    elif pause_ms is not None:
        raise RuntimeError("a paced load needs wrk")
    else:
        body = json.dumps({"instances": [INSTANCE]})
        command = [
            sys.executable, "-m", "bench.loadgen", "--port", str(service.port), "--path", PATH,
            "--body", body, "--connections", str(connections), "--duration", str(duration_s),
        ]  # fmt: skip
    done = subprocess.run(
        command,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=duration_s + 60,
        check=True,
        env=environ,
        start_new_session=True,  # another process, as from another terminal or machine
    )
    return _summary(command, done)


def _summary(command: list[str], done: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    for line in done.stdout.splitlines():
        if line.startswith("BENCH_JSON "):
            return dict(json.loads(line.removeprefix("BENCH_JSON ")))
    raise RuntimeError(f"no summary from {command[0]}: {done.stdout[-500:]} {done.stderr[-500:]}")


def _server_side(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """Mean server-side times per predict request in the window, from the service's metrics."""

    def delta(prefix: str, contains: str = "") -> tuple[float, float]:
        def pick(values: dict[str, float], suffix: str) -> float:
            return sum(
                v for k, v in values.items() if k.startswith(prefix + suffix) and contains in k
            )

        return (
            pick(after, "_sum") - pick(before, "_sum"),
            pick(after, "_count") - pick(before, "_count"),
        )

    compute_sum, compute_n = delta("streamfit_prediction_duration_seconds")
    http_sum, http_n = delta("streamfit_http_request_duration_seconds", ':predict"')
    return {
        "compute_mean_s": compute_sum / compute_n if compute_n else float("nan"),
        "http_mean_s": http_sum / http_n if http_n else float("nan"),
        "requests_seen": http_n,
    }


def scenario(service: Service, name: str, duration_s: float, backlog: int | None) -> dict[str, Any]:
    samples_before = service.learned()
    metrics_before = service.metrics()
    cpu = CpuWindow().start()
    started = time.perf_counter()
    load = generate_load(service, duration_s)
    elapsed = time.perf_counter() - started
    window = cpu.stop()
    samples_after = service.learned()
    latency_us = load["latency_us"]
    seconds = load["duration_us"] / 1e6
    errors = sum(load["errors"].values())
    return {
        "scenario": name,
        "requests": load["requests"],
        "errors": load["errors"],
        "error_count": errors,
        "rps": load["requests"] / seconds,
        "p50_s": latency_us["p50"] / 1e6,
        "p90_s": latency_us["p90"] / 1e6,
        "p99_s": latency_us["p99"] / 1e6,
        "p999_s": latency_us["p999"] / 1e6,
        "max_s": latency_us["max"] / 1e6,
        "mean_s": latency_us["mean"] / 1e6,
        "trained_rate": (samples_after - samples_before) / elapsed,
        "training_active_to_end": backlog is None or samples_after < backlog,
        "server": _server_side(metrics_before, service.metrics()),
        "cpu": window,
    }


def run(session: BenchSession, quick: bool) -> dict[str, Any]:
    duration_s = 5.0 if quick else 10.0
    tool = load_tool()
    topic = session.new_topic("latency-live")
    asyncio.run(ensure_topic({"bootstrap_servers": session.bootstrap}, topic, 3))
    service = session.service(topic).start()
    generate_load(service, 2.0)  # warm-up: connections, first-request paths
    results = [scenario(service, "trainer idle (empty topic)", duration_s, None)]
    session.stream(topic, STREAM_RATE)
    poll_until(lambda: service.learned() > STREAM_RATE, 60, 0.1, "training on the stream")
    results.append(
        scenario(service, f"trainer on a live stream ({STREAM_RATE:.0f} rec/s)", duration_s, None)
    )
    session.cleanup()

    backlog = int(120_000 if quick else 240_000)
    backlog_topic = session.new_topic("latency-backlog")
    session.produce(backlog_topic, backlog, seed=21)
    saturated = session.service(backlog_topic).start()
    poll_until(lambda: saturated.learned() > 0, 60, 0.05, "first trained batch")
    results.append(scenario(saturated, "trainer at full speed (backlog)", duration_s, backlog))
    return {
        "tool": tool,
        "connections": CONNECTIONS,
        "duration_s": duration_s,
        "scenarios": results,
        "instance_features": len(INSTANCE),
    }


def _met(r: dict[str, Any]) -> bool:
    return r["p99_s"] < TARGET_P99_S and r["rps"] >= TARGET_RPS and r["error_count"] == 0


def summary(result: dict[str, Any]) -> list[SummaryRow]:
    rows = []
    for r in result["scenarios"][1:]:
        rows.append(
            SummaryRow(
                f"prediction, {r['scenario']}",
                f"p50 {fmt_ms(r['p50_s'])}, p99 {fmt_ms(r['p99_s'])}, {fmt_int(r['rps'])} req/s",
                f"p99 < {TARGET_P99_S * 1e3:.0f} ms, >= {TARGET_RPS:.0f} req/s",
                _met(r),
            )
        )
    return rows


def render(result: dict[str, Any]) -> str:
    tool = (
        f"wrk -t{result['connections']} -c{result['connections']} with `bench/predict.lua`"
        if result["tool"] == "wrk"
        else f"`python -m bench.loadgen` with {result['connections']} connections"
    )
    rows = [
        [
            r["scenario"],
            fmt_ms(r["p50_s"]),
            fmt_ms(r["p90_s"]),
            f"**{fmt_ms(r['p99_s'])}**",
            fmt_ms(r["p999_s"]),
            fmt_ms(r["max_s"]),
            f"**{fmt_int(r['rps'])}**",
            str(r["error_count"]),
            fmt_int(r["trained_rate"]),
            fmt_ms(r["server"]["http_mean_s"]),
            f"{r['server']['compute_mean_s'] * 1e6:.0f} µs",
            f"{r['cpu']['foreign_cores']:.2f}",
            "yes" if _met(r) else "**no**",
        ]
        for r in result["scenarios"]
    ]
    note = ""
    saturated = result["scenarios"][-1]
    if not saturated["training_active_to_end"]:
        note = "\n\nThe backlog ran out before the end of the full-speed window."
    return (
        f"{tool}, {result['duration_s']:.0f} s per scenario, one instance of "
        f"{result['instance_features']} features per request (client-side latency, keep-alive). "
        "*Server* and *compute* are the service's own mean request time and NumPy forward "
        "pass time for the predict route (`streamfit_http_request_duration_seconds`, "
        "`streamfit_prediction_duration_seconds`).\n\n"
        + table(
            [
                "scenario",
                "p50",
                "p90",
                "p99",
                "p99.9",
                "max",
                "req/s",
                "errors",
                "trained rec/s meanwhile",
                "server mean",
                "compute mean",
                "foreign cores",
                "target met",
            ],
            rows,
        )  # fmt: skip
        + f"\n\nTargets: p99 < {TARGET_P99_S * 1e3:.0f} ms and >= {TARGET_RPS:.0f} req/s while "
        "the trainer consumes a stream." + note
    )
