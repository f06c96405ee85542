"""Soak: a long stream learned under concurrent prediction load, with nothing lost.

The stream is produced in chunks while client threads keep predicting. At the end every record
is learned exactly once, the lag is back to 0, the resident memory of the service grew by no
more than a bound after warm-up, and the prediction latency of the second half of the run is
not much worse than that of the first half. Bounds are generous: the machine has two cores,
shared with the broker, the producer and the clients (and with other test runs).
"""

from __future__ import annotations

import threading
import time
import urllib.request

import pytest

from tests.reliability.probes import rss_bytes
from tests.support import ServiceProcess, produce_synthetic, wait_for

ROW = b'{"instances": [[' + b", ".join([b"0.1"] * 18) + b"]]}"
MB = 1024 * 1024


class _Load:
    """`threads` clients sending one-row predictions in a loop; latencies kept once measuring."""

    def __init__(self, service: ServiceProcess, threads: int = 2) -> None:
        self.url = f"{service.url}/v1/models/susy:predict"
        self.measuring = False
        self.latencies: list[float] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _run(self) -> None:
        while not self._stop.is_set():
            request = urllib.request.Request(
                self.url, data=ROW, headers={"content-type": "application/json"}
            )
            started = time.perf_counter()
            try:
                with urllib.request.urlopen(request, timeout=30) as response:
                    response.read()
                    ok = response.status == 200
            except Exception as exc:  # noqa: BLE001 - any failure is a finding
                self.errors.append(repr(exc))
                continue
            if not ok:
                self.errors.append("status")
            if self.measuring:
                self.latencies.append(time.perf_counter() - started)
            time.sleep(0.002)

    def __enter__(self) -> _Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)


def _p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[int(len(ordered) * 0.99)]


def _soak(broker, topic, spawn, records: int, chunk: int, rss_growth_mb: int) -> None:
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
        load.measuring = True
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
        f"over {len(first)}/{len(second)} predictions; RSS growth {growth:.0f} MB"
    )
    assert p99_second < 0.5, f"p99 prediction latency {p99_second:.3f}s under training load"
    assert p99_second < 4 * p99_first + 0.1, (
        f"prediction latency drifted: p99 {p99_first * 1000:.1f} ms -> {p99_second * 1000:.1f} ms"
    )
    assert growth < rss_growth_mb, (
        f"RSS grew {growth:.0f} MB ({rss_start / MB:.0f} -> {rss_end / MB:.0f} MB)"
    )
    assert service.get("/healthz")["event_loop_lag_recent_max_s"] < 1.0


def test_soak_short(broker, topic, spawn):
    _soak(broker, topic, spawn, records=30_000, chunk=5_000, rss_growth_mb=150)


@pytest.mark.slow
def test_soak_long(broker, topic, spawn):
    _soak(broker, topic, spawn, records=300_000, chunk=20_000, rss_growth_mb=200)
