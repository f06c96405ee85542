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

import numpy as np
from aiokafka import AIOKafkaConsumer, TopicPartition

from service.broker import free_port
from service.checkpoints import Checkpoint
from service.producer import produce, synthetic_pairs
from service.settings import Settings, unknown_setting_names

ROOT = Path(__file__).resolve().parents[1]


def a_checkpoint(version: int, samples: int = 10) -> Checkpoint:
    """A small, loadable checkpoint (3 features, a Dense 3->2 model's weights) for store tests."""
    rng = np.random.default_rng(version)
    state = {
        "weights": [rng.standard_normal((3, 2)), rng.standard_normal(2)],
        "optimizer": [np.array(version, dtype=np.int64)],
        "model_state": [],
        "standardizer": {"count": samples, "mean": np.zeros(3), "m2": np.ones(3)},
        "samples_trained": samples,
        "batches_trained": 1,
    }
    return Checkpoint(version=version, state=state, offsets={"t:0": samples})


# A consumer-group join may take up to JOIN_SESSIONS session timeouts plus JOIN_MARGIN_S
# (ServiceProcess.join_timeout_s says why).
JOIN_SESSIONS = 3
JOIN_MARGIN_S = 10.0


def service_environ() -> dict[str, str]:
    """This process's environment for a `streamfit` child process, without the test suite's
    own switches (STREAMFIT_SLOW, STREAMFIT_REQUIRE_TOOLS, ...): they are not settings, and the
    service refuses unknown STREAMFIT_ variables."""
    unknown = set(unknown_setting_names(os.environ))
    return {name: value for name, value in os.environ.items() if name not in unknown}


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
            **service_environ(),
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

    @property
    def session_timeout_s(self) -> float:
        """The consumer-group session timeout this process runs with (the service's default
        when its environment does not set one)."""
        configured = self.env.get("STREAMFIT_SESSION_TIMEOUT_MS")
        default = Settings.model_fields["session_timeout_ms"].default
        return int(configured or default) / 1000

    @property
    def join_timeout_s(self) -> float:
        """The longest a consumer-group join or rebalance may take: 3 session timeouts plus
        10 s (28 s at the suite's 6 s, 40 s at the default 10 s). Every deadline that
        includes a join builds on this, never on a literal.

        The broker decides how long a join takes, from the session timeout. Measured on
        Tansu 0.6.0, from /readyz turning 200 (the consumer starts right after) to the
        service's "partitions assigned" log line; each process started as soon as the
        previous member of its group had stopped (its join began 4-9 s later, after start-up):
        - 6 s session: 3.0 s in all 10 joins (2 first starts, 5 after SIGTERM, 3 after
          kill -9);
        - 10 s session: 5.0 s for both first starts and 4 of 5 after SIGTERM; 18.1 s for
          1 of 5 after SIGTERM and 3 of 3 after kill -9: the broker waits for the old
          member, whose session has not expired yet (a restart that comes sooner than
          start-up allows here would see that at 6 s too);
        - static membership (STREAMFIT_GROUP_INSTANCE_ID) does not help on Tansu: 6.0 s at
          6 s and 8.0 s at 10 s, in all 8 joins (first start, after SIGTERM, after kill -9).
        The worst, 18.1 s, is 1.8 session timeouts; 3 of them plus 10 s leave twice that for
        a loaded machine.
        """
        return JOIN_SESSIONS * self.session_timeout_s + JOIN_MARGIN_S

    def start(self, wait_ready: bool = True, timeout_s: float = 90.0) -> ServiceProcess:
        """Start the process; with `wait_ready`, wait until /readyz answers 200.

        `timeout_s` bounds start-up only (imports, restoring a checkpoint): a trainer is
        ready before its consumer joins the group (measured: 3-18 s before its partitions
        are assigned), so waits for learning or partitions add `join_timeout_s` themselves.
        """
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

    def wait_trained(self, samples: int, learn_s: float = 120.0) -> dict[str, Any]:
        """Wait until the model has learned exactly `samples` (more fails at once).

        The deadline is `join_timeout_s` plus `learn_s` for the learning itself: a process
        learns only once the group has given it partitions, after a start or a rebalance.
        """

        def reached() -> dict[str, Any] | None:
            self._alive()
            model = self.get("/model")
            assert model["samples_trained"] <= samples, f"trained too much: {model}"
            return model if model["samples_trained"] == samples else None

        return wait_for(
            reached, self.join_timeout_s + learn_s, what=f"samples_trained == {samples}"
        )

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


def run_cli(
    args: list[str], env: dict[str, str], timeout_s: float = 120
) -> subprocess.CompletedProcess[str]:
    """`python -m service ...` with only the given STREAMFIT_ settings."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("STREAMFIT_")}
    return subprocess.run(
        [sys.executable, "-m", "service", *args],
        env={**clean, "STREAMFIT_LOG_FORMAT": "text", **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


def read_to_end(
    bootstrap: str,
    topic: str,
    group: str | None = None,
    read_committed: bool = False,
    check_crcs: bool = True,
) -> tuple[list[Any], dict[int, int], dict[int, int | None]]:
    """Every record of `topic` up to each partition's high watermark, the ends, and (with a
    group) that group's committed offsets."""

    async def run() -> tuple[list[Any], dict[int, int], dict[int, int | None]]:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap,
            group_id=group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed" if read_committed else "read_uncommitted",
            check_crcs=check_crcs,
        )
        await consumer.start()
        try:
            cluster = await consumer._client.fetch_all_metadata()  # noqa: SLF001
            tps = [
                TopicPartition(topic, p) for p in sorted(cluster.partitions_for_topic(topic) or ())
            ]
            assert tps, f"no topic {topic}"
            committed = {tp.partition: await consumer.committed(tp) for tp in tps} if group else {}
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            records: list[Any] = []
            ends: dict[int, int] = {}
            for _ in range(200):
                batches = await consumer.getmany(timeout_ms=300)
                for part in batches.values():
                    records.extend(part)
                for tp in tps:
                    end = (
                        consumer.last_stable_offset(tp)
                        if read_committed
                        else consumer.highwater(tp)
                    )
                    if end is not None and await consumer.position(tp) >= end:
                        ends[tp.partition] = end
                if len(ends) == len(tps):
                    return records, ends, committed
            raise AssertionError(f"could not read {topic} to its end")
        finally:
            await consumer.stop()

    return asyncio.run(run())


def predictions_by_key(records: list[Any]) -> dict[str, set[bytes]]:
    """Output key -> the distinct values written under it."""
    values: dict[str, set[bytes]] = {}
    for record in records:
        values.setdefault(record.key.decode(), set()).add(record.value)
    return values
