"""Serving paths: the Dense-only NumPy path against the Keras path of any other model.

Two services, each idle (an empty topic), answer single-instance `:predict` requests from a
load generator in another process (wrk with bench/predict.lua, the body in BENCH_BODY, else
bench.loadgen), over 2 keep-alive connections, like `latency`'s first scenario:
- the built-in MLP (Dense-only: a NumPy forward pass, no TensorFlow on the request path), one
  18-feature row;
- the fraud example's model (examples/fraud_named_json: named inputs, a `StringLookup`, a
  `Discretization` and a `Normalization` inside), served from its Keras config by a compiled
  TensorFlow function, one object-shaped instance.
Reported: client-side latency percentiles and throughput, the server-side mean of the
forward pass (`streamfit_prediction_duration_seconds`), and the Keras path's figures over the
NumPy path's, measured in the same run.
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

from bench.latency import INSTANCE
from bench.report import SummaryRow, fmt_int, fmt_ms, table
from bench.stack import ROOT, BenchSession, Service
from service.producer import ensure_topic

NAME = "paths"
TITLE = "Serving paths: NumPy (Dense-only) and Keras (any model)"
CONNECTIONS = 2
LUA = Path(__file__).with_name("predict.lua")
FRAUD = {
    "model": "examples.fraud_named_json.model:build",
    "message_format": "json",
    "classes": "legit,fraud",
    "label_field": "is_fraud",
}
PATHS = {
    "numpy": ({}, {"instances": [INSTANCE]}),
    "keras": (FRAUD, {"instances": [{"amount": 900.0, "country": "NG", "hour": 2.5}]}),
}


def generate_load(service: Service, body: dict[str, Any], duration_s: float) -> dict[str, Any]:
    """Run the load generator for duration_s; its JSON summary (latencies in microseconds)."""
    url = service.url + "/v1/models/susy:predict"
    text = json.dumps(body)
    if shutil.which("wrk"):
        command = [
            "wrk", f"-t{CONNECTIONS}", f"-c{CONNECTIONS}", f"-d{duration_s:.0f}s",
            "--timeout", "5s", "-s", str(LUA), url,
        ]  # fmt: skip
    else:
        command = [
            sys.executable, "-m", "bench.loadgen", "--port", str(service.port),
            "--path", "/v1/models/susy:predict", "--body", text,
            "--connections", str(CONNECTIONS), "--duration", str(duration_s),
        ]  # fmt: skip
    done = subprocess.run(
        command,
        cwd=ROOT,
        env={**os.environ, "BENCH_BODY": text},
        capture_output=True,
        text=True,
        timeout=duration_s + 60,
        check=True,
    )
    for line in done.stdout.splitlines():
        if line.startswith("BENCH_JSON "):
            return dict(json.loads(line.removeprefix("BENCH_JSON ")))
    raise RuntimeError(f"no summary from {command[0]}: {done.stdout[-500:]} {done.stderr[-500:]}")


def _compute_mean_s(before: dict[str, float], after: dict[str, float]) -> float:
    total = "streamfit_prediction_duration_seconds_sum"
    count = "streamfit_prediction_duration_seconds_count"
    n = after.get(count, 0.0) - before.get(count, 0.0)
    return (after.get(total, 0.0) - before.get(total, 0.0)) / n if n else float("nan")


def measure(session: BenchSession, path: str, duration_s: float) -> dict[str, Any]:
    settings, body = PATHS[path]
    topic = session.new_topic(f"paths-{path}")
    asyncio.run(ensure_topic({"bootstrap_servers": session.bootstrap}, topic, 1))
    # The example's factory is imported from the repository (after the frozen service/).
    service = session.service(topic, env={"PYTHONPATH": str(ROOT)}, **settings).start()
    status, answer = service.request("POST", "/v1/models/susy:predict", body)
    if status != 200:
        raise RuntimeError(f"{path}: predict answered {status}: {answer}")
    generate_load(service, body, 2.0)  # warm-up: connections, traced functions
    before = service.metrics()
    started = time.perf_counter()
    load = generate_load(service, body, duration_s)
    elapsed = time.perf_counter() - started
    latency = load["latency_us"]
    return {
        "path": path,
        "model": settings.get("model", "mlp"),
        "requests": load["requests"],
        "errors": sum(load["errors"].values()),
        "rps": load["requests"] / (load["duration_us"] / 1e6),
        "p50_s": latency["p50"] / 1e6,
        "p99_s": latency["p99"] / 1e6,
        "max_s": latency["max"] / 1e6,
        "compute_mean_s": _compute_mean_s(before, service.metrics()),
        "elapsed_s": elapsed,
    }


def run(session: BenchSession, quick: bool) -> dict[str, Any]:
    duration_s = 5.0 if quick else 10.0
    results = {}
    for path in PATHS:
        results[path] = measure(session, path, duration_s)
        session.cleanup()
    return {
        "tool": "wrk" if shutil.which("wrk") else "python",
        "connections": CONNECTIONS,
        "duration_s": duration_s,
        "paths": results,
    }


def summary(result: dict[str, Any]) -> list[SummaryRow]:
    numpy, keras = result["paths"]["numpy"], result["paths"]["keras"]
    return [
        SummaryRow(
            "Keras path (StringLookup model), 1 instance, trainer idle",
            f"p99 {fmt_ms(keras['p99_s'])} at {fmt_int(keras['rps'])} req/s; "
            f"{keras['p99_s'] / numpy['p99_s']:.1f}x the NumPy path's p99 "
            f"({fmt_ms(numpy['p99_s'])})",
            "measured (no target)",
            None,
        )
    ]


def render(result: dict[str, Any]) -> str:
    rows = [
        [
            name,
            f"`{r['model']}`",
            fmt_int(r["requests"]),
            str(r["errors"]),
            fmt_int(r["rps"]),
            fmt_ms(r["p50_s"]),
            fmt_ms(r["p99_s"]),
            fmt_ms(r["max_s"]),
            fmt_ms(r["compute_mean_s"]),
        ]
        for name, r in result["paths"].items()
    ]
    numpy, keras = result["paths"]["numpy"], result["paths"]["keras"]
    return "\n".join(
        [
            f"{result['tool']} with {result['connections']} connections for "
            f"{result['duration_s']:.0f} s per path, one instance per request, trainer idle.",
            "",
            table(
                [
                    "path",
                    "model",
                    "requests",
                    "errors",
                    "req/s",
                    "p50",
                    "p99",
                    "max",
                    "forward pass (server mean)",
                ],
                rows,
            ),  # fmt: skip
            "",
            f"Keras path over NumPy path, same run: p50 x{keras['p50_s'] / numpy['p50_s']:.1f}, "
            f"p99 x{keras['p99_s'] / numpy['p99_s']:.1f}, forward pass "
            f"x{keras['compute_mean_s'] / numpy['compute_mean_s']:.1f}, "
            f"throughput x{keras['rps'] / numpy['rps']:.2f}.",
        ]
    )
