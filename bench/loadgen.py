"""Load generator: HTTP/1.1 keep-alive POSTs from a few connections, for when wrk is missing.

`python -m bench.loadgen --port P --path /v1/models/susy:predict --body JSON` runs as its own
process (so it does not share the benchmark's GIL) and prints one line `BENCH_JSON {...}` in
the same shape as bench/predict.lua: requests, duration and errors, latencies in microseconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import numpy as np


async def _connection(
    host: str,
    port: int,
    request: bytes,
    deadline: float,
    latencies: list[float],
    errors: dict[str, int],
) -> None:
    try:
        reader, writer = await asyncio.open_connection(host, port)
    except OSError:
        errors["connect"] += 1
        return
    try:
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - started)
            if status >= 400:
                errors["status"] += 1
    except (OSError, asyncio.IncompleteReadError):
        errors["read"] += 1
    finally:
        writer.close()


async def generate(
    host: str, port: int, path: str, body: bytes, connections: int, duration_s: float
) -> dict[str, object]:
    request = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    latencies: list[float] = []
    errors = {"connect": 0, "read": 0, "write": 0, "status": 0, "timeout": 0}
    started = time.perf_counter()
    deadline = started + duration_s
    await asyncio.gather(
        *(_connection(host, port, request, deadline, latencies, errors) for _ in range(connections))
    )
    elapsed = time.perf_counter() - started
    us = np.asarray(latencies) * 1e6 if latencies else np.zeros(1)
    return {
        "requests": len(latencies),
        "duration_us": int(elapsed * 1e6),
        "errors": errors,
        "latency_us": {
            "mean": float(us.mean()),
            "min": float(us.min()),
            "max": float(us.max()),
            **{f"p{q}".replace(".", ""): float(np.percentile(us, q)) for q in (50, 90, 99, 99.9)},
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.loadgen", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", required=True)
    parser.add_argument("--body", required=True)
    parser.add_argument("--connections", type=int, default=2)
    parser.add_argument("--duration", type=float, default=10.0)
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    result = asyncio.run(
        generate(
            args.host, args.port, args.path, args.body.encode(), args.connections, args.duration
        )
    )
    print("BENCH_JSON " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
