"""Soak: a long stream learned under concurrent prediction load, with nothing lost.

The stream is produced in chunks while client threads keep predicting. At the end every record
is learned exactly once, the lag is back to 0, and over the whole measured run: the resident
memory of the service grew by no more than a bound after warm-up, the p99 prediction latency
of each half stays under a bound, the second half's is not much worse than the first's, and
the event loop was never late by more than a bound.

The bounds are 3 times the worst of runs measured on a 2-core machine that other test runs
were loading too (CI runs alone), a few tens of MB for memory; see `Bounds`. The soak learns
as fast as it can (up to a chunk behind the stream), so predictions wait longer here than on
a live stream at a steady rate (docs/BENCHMARKS.md: p99 about 7 ms).
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass

import pytest

from tests.reliability.probes import rss_bytes
from tests.support import ROOT, ServiceProcess, produce_synthetic, wait_for


@dataclass(frozen=True)
class Bounds:
    """What a soak run may show, over the whole measured run."""

    p99_s: float  # p99 prediction latency of each half of the run
    # Resident memory growth after warm-up. Measured: 3, 4, 5 MB (short), 2, 7 MB (long);
    # 30 MB leaves over 20 MB above the worst for allocator noise; a leak of 2 KB a record
    # (50 MB over the short run's 25,000) still fails.
    rss_growth_mb: float = 30
    # The second half's p99 against the first's. Measured: 0.11, 0.50, 0.15 (short),
    # 0.97, 0.99 (long); a leak or a growing queue shows as a rising ratio.
    drift_ratio: float = 3.0
    # Largest event-loop lag over the run. Measured: 169, 196, 212 ms (short), 182, 169 ms
    # (long); 3x the worst.
    loop_lag_s: float = 0.65


# p99 measured on 3 short runs with the clients in their own process: 8.0, 8.0, 7.1 ms (first
# half), 4.3, 8.1, 4.8 ms (second half, about 420 predictions each). The bound is 100 ms, over
# 12 times the worst, for machines up to 3 times slower; a stall of the kind this test found
# (a full garbage collection of TensorFlow's objects after the first batch, 220-310 ms with
# the GIL held) still fails it.
SHORT = Bounds(p99_s=0.1)
# p99 measured on 2 long runs, clients then in the test process: 73.5, 69.1 ms (first half),
# 71.5, 68.4 ms (second half, about 670 predictions each); 3x the worst.
LONG = Bounds(p99_s=0.22)

MB = 1024 * 1024


class _Load:
    """`threads` clients sending one-row predictions in a loop, in a process of their own
    (tests/reliability/load.py says why); latencies kept once `measure()` is called."""

    def __init__(self, service: ServiceProcess, threads: int = 2) -> None:
        self._command = [
            sys.executable,
            "-m",
            "tests.reliability.load",
            f"{service.url}/v1/models/susy:predict",
            str(threads),
        ]
        self.latencies: list[float] = []
        self.errors: list[str] = []
        self._process: subprocess.Popen[str] | None = None

    def measure(self) -> None:
        assert self._process is not None and self._process.stdin is not None
        self._process.stdin.write("measure\n")
        self._process.stdin.flush()

    def __enter__(self) -> _Load:
        self._process = subprocess.Popen(
            self._command,
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._process is not None
        out, _ = self._process.communicate(timeout=120)
        assert self._process.returncode == 0, f"load process exited {self._process.returncode}"
        found = json.loads(out)
        self.latencies, self.errors = found["latencies"], found["errors"]


class _LoopLag:
    """Reads /healthz every second; the largest event-loop lag of the whole measured run.

    /healthz's `event_loop_lag_recent_max_s` covers the last 10 s, so reads less than 10 s
    apart cover every moment between the first and the last.
    """

    def __init__(self, service: ServiceProcess) -> None:
        self.url = f"{service.url}/healthz"
        self.max_s = 0.0
        self.longest_gap_s = 0.0
        self._last_read = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while True:
            with urllib.request.urlopen(self.url, timeout=30) as response:
                recent = json.loads(response.read())["event_loop_lag_recent_max_s"]
            self.max_s = max(self.max_s, recent)
            self._gap_until(time.monotonic())
            if self._stop.wait(1.0):
                return

    def _gap_until(self, now: float) -> None:
        self.longest_gap_s = max(self.longest_gap_s, now - self._last_read)
        self._last_read = now

    def __enter__(self) -> _LoopLag:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)
        # A read that failed ended the thread: the gap to now shows it.
        self._gap_until(time.monotonic())


def _p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[int(len(ordered) * 0.99)]


def _soak(broker, topic, spawn, records: int, chunk: int, bounds: Bounds) -> None:
    partitions = 3
    warm_up = chunk
    produce_synthetic(broker.bootstrap, topic, rows=warm_up, partitions=partitions, seed=0)
    service = spawn(checkpoint_interval_s=2).start()
    assert service.process is not None
    service.wait_trained(warm_up, learn_s=120)
    produced = warm_up
    with _Load(service) as load:
        time.sleep(3)  # the prediction path warms up too
        rss_start = rss_bytes(service.process.pid)
        load.measure()
        with _LoopLag(service) as loop_lag:
            seed = 1
            while produced < records:
                rows = min(chunk, records - produced)
                produced += produce_synthetic(
                    broker.bootstrap, topic, rows=rows, partitions=partitions, seed=seed
                )
                seed += 1
                # A stream, not a backlog: keep at most one chunk ahead of the learner.
                wait_for(
                    lambda p=produced: service.get("/model")["samples_trained"] >= p - chunk,
                    120,
                    what="the learner to keep up",
                )
            model = service.wait_trained(produced, learn_s=120)
            rss_end = rss_bytes(service.process.pid)
    assert model["samples_trained"] == produced
    wait_for(lambda: service.get("/lag")["total_lag"] == 0, 60, what="lag back to 0")

    assert not load.errors, f"{len(load.errors)} failed predictions, e.g. {load.errors[:3]}"
    assert len(load.latencies) > 100, f"only {len(load.latencies)} predictions measured"
    half = len(load.latencies) // 2
    first, second = load.latencies[:half], load.latencies[half:]
    p99_first, p99_second = _p99(first), _p99(second)
    growth = (rss_end - rss_start) / MB
    print(  # shown with -s or on failure: the figures behind the bounds
        f"soak: {produced} records; p99 {p99_first * 1000:.1f} -> {p99_second * 1000:.1f} ms "
        f"over {len(first)}/{len(second)} predictions; RSS growth {growth:.0f} MB; "
        f"event-loop lag max {loop_lag.max_s * 1000:.0f} ms over the run (reads <= "
        f"{loop_lag.longest_gap_s:.1f} s apart), "
        f"{service.get('/healthz')['event_loop_lag_max_s'] * 1000:.0f} ms since start"
    )
    assert max(p99_first, p99_second) < bounds.p99_s, (
        f"p99 prediction latency {p99_first * 1000:.1f} / {p99_second * 1000:.1f} ms "
        f"(first / second half) under training load"
    )
    assert p99_second < bounds.drift_ratio * p99_first, (
        f"prediction latency drifted: p99 {p99_first * 1000:.1f} ms -> {p99_second * 1000:.1f} ms"
    )
    assert growth < bounds.rss_growth_mb, (
        f"RSS grew {growth:.0f} MB ({rss_start / MB:.0f} -> {rss_end / MB:.0f} MB)"
    )
    assert loop_lag.longest_gap_s < 10, "/healthz reads too far apart to cover the whole run"
    assert loop_lag.max_s < bounds.loop_lag_s, (
        f"event loop late by {loop_lag.max_s * 1000:.0f} ms during the run"
    )


def test_soak_short(broker, topic, spawn):
    _soak(broker, topic, spawn, records=30_000, chunk=5_000, bounds=SHORT)


@pytest.mark.slow
def test_soak_long(broker, topic, spawn):
    _soak(broker, topic, spawn, records=300_000, chunk=20_000, bounds=LONG)
