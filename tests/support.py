"""Test support: the service as a real child process, and small Kafka helpers."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from service.broker import free_port
from service.producer import produce, synthetic_pairs

ROOT = Path(__file__).resolve().parents[1]


def produce_synthetic(
    bootstrap: str, topic: str, rows: int, partitions: int = 3, seed: int = 0, start: int = 0
) -> int:
    """Write `rows` synthetic records round-robin over `partitions`."""
    pairs = synthetic_pairs(rows, seed, 18)
    return asyncio.run(
        produce({"bootstrap_servers": bootstrap}, topic, pairs, partitions, progress=False)
    )


def produce_pairs(
    bootstrap: str, topic: str, pairs: list[tuple[bytes | None, bytes | None]], partitions: int = 1
) -> int:
    return asyncio.run(
        produce({"bootstrap_servers": bootstrap}, topic, pairs, partitions, progress=False)  # type: ignore[arg-type]
    )


def consume_all(bootstrap: str, topic: str, expected: int, timeout_s: float = 30.0) -> list[Any]:
    """Read a topic from the beginning (no group) until `expected` records or timeout."""
    from aiokafka import AIOKafkaConsumer

    async def run() -> list[Any]:
        consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=bootstrap,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
        )
        await consumer.start()
        records: list[Any] = []
        deadline = time.monotonic() + timeout_s
        try:
            while len(records) < expected and time.monotonic() < deadline:
                batches = await consumer.getmany(timeout_ms=500)
                for part in batches.values():
                    records.extend(part)
            # A little longer, to catch anything beyond what was expected.
            batches = await consumer.getmany(timeout_ms=500)
            for part in batches.values():
                records.extend(part)
        finally:
            await consumer.stop()
        return records

    return asyncio.run(run())


def wait_for(
    condition: Callable[[], Any], timeout_s: float = 60.0, interval_s: float = 0.2, what: str = ""
) -> Any:
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = condition()
        except (OSError, urllib.error.URLError, ValueError) as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(interval_s)
    raise AssertionError(
        f"timed out after {timeout_s}s waiting for {what or condition}: last={last!r}"
    )


class ServiceProcess:
    """`python -m service serve` as a child process on a free port."""

    def __init__(self, env: dict[str, str], log_path: Path, args: list[str] | None = None) -> None:
        self.port = int(env.get("STREAMFIT_HTTP_PORT") or free_port())
        self.env = {
            **os.environ,
            "STREAMFIT_HTTP_PORT": str(self.port),
            "STREAMFIT_LOG_FORMAT": "json",
            **env,
        }
        self.log_path = log_path
        self.args = args or []
        self.process: subprocess.Popen[bytes] | None = None
        self.last_model: dict[str, Any] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, wait_ready: bool = True, timeout_s: float = 90.0) -> ServiceProcess:
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "service", "serve", *self.args],
            env=self.env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        if wait_ready:
            wait_for(
                lambda: self._alive() and self.status("/readyz") == 200, timeout_s, what="ready"
            )
        return self

    def _alive(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(
                f"service exited with {self.process.returncode}:\n{self.logs()[-3000:]}"
            )
        return True

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        headers: dict[str, str] | None = None,
        raw: bytes | None = None,
    ) -> tuple[int, Any]:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        hdrs = {"content-type": "application/json", **(headers or {})}
        request = urllib.request.Request(self.url + path, data=data, method=method, headers=hdrs)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                payload = response.read()
                status = response.status
        except urllib.error.HTTPError as exc:
            payload, status = exc.read(), exc.code
        try:
            return status, json.loads(payload)
        except ValueError:
            return status, payload.decode(errors="replace")

    def get(self, path: str) -> Any:
        status, body = self.request("GET", path)
        assert status == 200, (path, status, body)
        if path == "/model":
            self.last_model = body
        return body

    def get_text(self, path: str) -> str:
        with urllib.request.urlopen(self.url + path, timeout=10) as response:
            return response.read().decode()

    def get_cached_model(self) -> dict[str, Any]:
        """The last /model answer seen (useful after the process has stopped)."""
        assert self.last_model is not None, "no /model answer seen yet"
        return self.last_model

    def status(self, path: str) -> int:
        return self.request("GET", path)[0]

    def wait_trained(self, samples: int, timeout_s: float = 120.0) -> dict[str, Any]:
        def reached() -> dict[str, Any] | None:
            self._alive()
            model = self.get("/model")
            assert model["samples_trained"] <= samples, f"trained too much: {model}"
            return model if model["samples_trained"] == samples else None

        return wait_for(reached, timeout_s, what=f"samples_trained == {samples}")

    def terminate(self, timeout_s: float = 40.0) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout_s)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            try:
                self.terminate(timeout_s=20)
            except subprocess.TimeoutExpired:
                self.kill()


def write_raw(
    bootstrap: str, topic: str, key: bytes | None, value: bytes | None, partition: int = 0
) -> None:
    """One record as is, even without key and value (aiokafka's send() refuses that)."""
    from aiokafka import AIOKafkaProducer

    async def run() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, max_request_size=4 * 1024 * 1024)
        await producer.start()
        try:
            batch = producer.create_batch()
            batch.append(key=key, value=value, timestamp=None)
            batch.close()
            await (await producer.send_batch(batch, topic, partition=partition))
        finally:
            await producer.stop()

    asyncio.run(run())
