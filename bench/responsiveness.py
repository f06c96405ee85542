"""Event-loop responsiveness: /healthz latency at 20 Hz while the trainer runs flat out.

/healthz does nothing but answer from the event loop, so its latency is how long a request
waits for the loop (and the GIL). Measured first with training paused (`/admin/pause`), then
while the trainer works through a backlog at full speed, with checkpoints every 5 s so that
checkpoint writes fall inside the window.
"""

from __future__ import annotations

import http.client
import time
from typing import Any

from bench.contention import CpuWindow
from bench.report import SummaryRow, fmt_ms, table
from bench.stack import BenchSession, Service, poll_until
from bench.stats import summarize

NAME = "responsiveness"
TITLE = "Event-loop responsiveness during training"
RATE_HZ = 20.0
BLOCKED_S = 0.050  # a loop that answers within this is never blocked by training
CHECKPOINT_INTERVAL_S = 5


def probe(service: Service, duration_s: float) -> list[float]:
    """GET /healthz every 1/RATE_HZ s on a kept-alive connection; latencies in seconds."""
    connection = http.client.HTTPConnection("127.0.0.1", service.port, timeout=10)
    latencies = []
    started = time.perf_counter()
    tick = 0
    try:
        while True:
            due = started + tick / RATE_HZ
            if due - started >= duration_s:
                break
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            sent = time.perf_counter()
            connection.request("GET", "/healthz")
            response = connection.getresponse()
            response.read()
            latencies.append(time.perf_counter() - sent)
            if response.status != 200:
                raise RuntimeError(f"/healthz -> {response.status}")
            tick += 1
    finally:
        connection.close()
    return latencies


def run(session: BenchSession, quick: bool) -> dict[str, Any]:
    idle_s, busy_s = (3.0, 6.0) if quick else (5.0, 15.0)
    backlog = 150_000 if quick else 330_000
    topic = session.new_topic("responsiveness")
    session.produce(topic, backlog, seed=31)
    service = session.service(topic, checkpoint_interval_s=CHECKPOINT_INTERVAL_S).start()
    service.request("POST", "/admin/pause")
    time.sleep(1.0)  # a batch in flight when paused finishes
    paused_at = service.learned()
    idle = probe(service, idle_s)
    idle_trained = service.learned() - paused_at
    service.request("POST", "/admin/resume")
    poll_until(lambda: service.learned() > paused_at, 60, 0.05, "training resumed")
    before = service.learned()
    checkpoints_before = service.metrics().get("streamfit_checkpoint_duration_seconds_count", 0.0)
    cpu = CpuWindow().start()
    started = time.perf_counter()
    busy = probe(service, busy_s)
    elapsed = time.perf_counter() - started
    window = cpu.stop()
    after = service.learned()
    checkpoints = service.metrics().get("streamfit_checkpoint_duration_seconds_count", 0.0)
    return {
        "rate_hz": RATE_HZ,
        "idle": summarize(idle),
        "idle_trained": idle_trained,
        "training": summarize(busy),
        "trained_rate": (after - before) / elapsed,
        "training_active_to_end": after < backlog,
        "checkpoints_in_window": int(checkpoints - checkpoints_before),
        "cpu": window,
    }


def summary(result: dict[str, Any]) -> list[SummaryRow]:
    t = result["training"]
    return [
        SummaryRow(
            "/healthz at 20 Hz during full-speed training",
            f"p50 {fmt_ms(t['p50'])}, p99 {fmt_ms(t['p99'])}, max {fmt_ms(t['max'])}",
            f"never blocked (max < {BLOCKED_S * 1e3:.0f} ms)",
            t["max"] < BLOCKED_S,
        )
    ]


def render(result: dict[str, Any]) -> str:
    i, t = result["idle"], result["training"]
    rows = [
        ["training paused", str(i["n"]), fmt_ms(i["p50"]), fmt_ms(i["p95"]), fmt_ms(i["p99"]),
         fmt_ms(i["max"])],
        [f"training at {result['trained_rate']:,.0f} rec/s", str(t["n"]), fmt_ms(t["p50"]),
         fmt_ms(t["p95"]), f"**{fmt_ms(t['p99'])}**", f"**{fmt_ms(t['max'])}**"],
    ]  # fmt: skip
    active = "" if result["training_active_to_end"] else " (the backlog ran out before the end)"
    return "\n".join(
        [
            f"GET /healthz every {1e3 / result['rate_hz']:.0f} ms on a kept-alive connection; "
            f"{result['checkpoints_in_window']} checkpoint(s) written in the training window"
            f"{active}. Other processes' CPU load in the window: "
            f"{result['cpu']['foreign_cores']:.2f} cores.",
            "",
            table(["", "requests", "p50", "p95", "p99", "max"], rows),
            "",
            f"Criterion: no request waits {BLOCKED_S * 1e3:.0f} ms or more (the loop is never "
            "blocked by training or checkpoints): "
            f"**{'met' if t['max'] < BLOCKED_S else 'not met'}**.",
        ]
    )
