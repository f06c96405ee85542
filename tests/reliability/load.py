"""Prediction load from a process of its own: `python -m tests.reliability.load URL THREADS`.

The soak measures the service's latency, so the clients must not share an interpreter with
the test run: there, a full garbage collection of the objects the earlier tests left (with
TensorFlow imported, over 400k) holds the GIL for hundreds of milliseconds and shows up as
slow predictions the service never made.

Each thread posts one-row predictions in a loop. A line `measure` on stdin starts keeping
latencies; end of stdin stops the threads and prints `{"latencies": [...], "errors": [...]}`.
"""

from __future__ import annotations

import json
import sys
import threading
import time
import urllib.request

ROW = b'{"instances": [[' + b", ".join([b"0.1"] * 18) + b"]]}"


def main(url: str, threads: int) -> None:
    measuring = threading.Event()
    stop = threading.Event()
    latencies: list[float] = []
    errors: list[str] = []

    def run() -> None:
        while not stop.is_set():
            request = urllib.request.Request(
                url, data=ROW, headers={"content-type": "application/json"}
            )
            started = time.perf_counter()
            try:
                with urllib.request.urlopen(request, timeout=30) as response:
                    response.read()
                    if response.status != 200:
                        errors.append(f"status {response.status}")
            except Exception as exc:  # noqa: BLE001 - any failure is a finding
                errors.append(repr(exc))
                continue
            if measuring.is_set():
                latencies.append(time.perf_counter() - started)
            time.sleep(0.002)

    workers = [threading.Thread(target=run, daemon=True) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for line in sys.stdin:
        if line.strip() == "measure":
            measuring.set()
    stop.set()
    for worker in workers:
        worker.join(timeout=60)
    json.dump({"latencies": latencies, "errors": errors}, sys.stdout)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
