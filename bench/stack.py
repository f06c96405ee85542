"""Stack: the system under test for one benchmark run — an embedded broker, topics, services.

`BenchSession` owns one embedded Tansu broker on a free loopback port and a scratch directory;
every service and stream producer it starts is stopped by it, even when a benchmark fails.
Services are real `python -m service serve` child processes, started from the run's frozen
copy of the source (bench/source.py), each with its own consumer group and checkpoint
directory.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

from service.broker import EmbeddedBroker, free_port
from service.producer import produce, synthetic_pairs
from service.settings import unknown_setting_names

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
API_KEY = "bench"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def service_environ() -> dict[str, str]:
    """This process's environment for a `streamfit` child, without STREAMFIT_ variables that
    are not settings (the test suite's switches, say), which the service refuses."""
    unknown = set(unknown_setting_names(os.environ))
    return {name: value for name, value in os.environ.items() if name not in unknown}


def parse_prometheus(text: str) -> dict[str, float]:
    """Prometheus text exposition to {'name{labels}': value}.

    >>> parse_prometheus('# HELP x y\\nx_total 3.0\\nh_bucket{le="1.0"} 2.0\\n')
    {'x_total': 3.0, 'h_bucket{le="1.0"}': 2.0}
    """
    values: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        try:
            values[name] = float(value)
        except ValueError:
            continue
    return values


class Service:
    """`python -m service serve` as a child process on a free port, and what benchmarks read
    from it: HTTP, /proc and metrics."""

    def __init__(self, env: dict[str, str], source: Path, log_path: Path) -> None:
        self.port = free_port()
        self.env = {
            **service_environ(),
            "STREAMFIT_HTTP_PORT": str(self.port),
            "STREAMFIT_LOG_FORMAT": "json",
            **env,
        }
        self.source = source
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None
        self._connection: http.client.HTTPConnection | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, wait_ready: bool = True, timeout_s: float = 120.0) -> Service:
        """Launch the process (again, after a kill); optionally wait for /readyz 200."""
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "service", "serve"],
                env=self.env,
                cwd=self.source,
                stdout=log,
                stderr=subprocess.STDOUT,
                # A session of its own, as a container's or a unit's main process has: where
                # Linux schedules by session (autogroup), the trainer's share is its own.
                start_new_session=True,
            )
        if wait_ready:
            poll_until(self._ready, timeout_s, 0.1, "the service ready")
        return self

    def _ready(self) -> bool:
        if not self.alive():
            raise ServiceExited(f"service exited:\n{self.logs()[-3000:]}")
        return self.status("/readyz") == 200

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def get(self, path: str) -> Any:
        """GET a JSON route over a kept-alive connection (cheap enough to poll fast)."""
        status, body = self.request("GET", path)
        if status != 200:
            raise RuntimeError(f"GET {path} -> {status}: {body!r:.300}")
        return body

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        headers = {"content-type": "application/json", "authorization": f"Bearer {API_KEY}"}
        payload = json.dumps(body).encode() if body is not None else None
        for attempt in (0, 1):
            if self._connection is None:
                self._connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            try:
                self._connection.request(method, path, body=payload, headers=headers)
                response = self._connection.getresponse()
                raw = response.read()
                break
            except (OSError, http.client.HTTPException):
                self._connection.close()
                self._connection = None
                if attempt:
                    raise
        try:
            return response.status, json.loads(raw)
        except ValueError:
            return response.status, raw.decode(errors="replace")

    def status(self, path: str) -> int | None:
        """HTTP status of GET path on a fresh connection, or None if nothing answers."""
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        try:
            connection.request("GET", path)
            return connection.getresponse().status
        except (OSError, http.client.HTTPException):
            return None
        finally:
            connection.close()

    def model(self) -> dict[str, Any]:
        return dict(self.get("/model"))

    def samples_trained(self) -> int:
        """Samples the *served* model has learned (the snapshot's count, from /model)."""
        return int(self.model()["samples_trained"])

    def learned(self) -> int:
        """Records the trainer has learned: the sum of its learned positions (from /lag).

        Equal to the samples learned on a fresh group and topic without rejects; unlike
        /model it does not wait for the served snapshot to be republished.
        """
        return sum(int(row["position"] or 0) for row in self.get("/lag")["partitions"])

    def metrics(self) -> dict[str, float]:
        with self._fresh_connection() as connection:
            connection.request("GET", "/metrics")
            return parse_prometheus(connection.getresponse().read().decode())

    def _fresh_connection(self) -> _Closing:
        return _Closing(http.client.HTTPConnection("127.0.0.1", self.port, timeout=30))

    def rss_bytes(self) -> int:
        """Resident set size now (VmRSS of /proc/<pid>/status)."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")

    def peak_rss_bytes(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmHWM")

    def cpu_seconds(self) -> float:
        """User + system CPU time so far of the process (all threads) and its HTTP workers."""
        total = process_cpu_seconds(self.pid)
        for child in self.children():
            try:
                total += process_cpu_seconds(child)
            except OSError:  # exited meanwhile
                pass
        return total

    def children(self) -> list[int]:
        """The process's child processes (its HTTP workers)."""
        found = []
        for task in Path(f"/proc/{self.pid}/task").iterdir():
            try:
                found += [int(p) for p in (task / "children").read_text().split()]
            except OSError:
                continue
        return found

    def checkpoint(self) -> dict[str, Any]:
        """Write a checkpoint now through the admin route."""
        status, body = self.request("POST", "/admin/checkpoint")
        if status != 200:
            raise RuntimeError(f"checkpoint -> {status}: {body!r:.300}")
        return dict(body)

    def kill(self) -> None:
        """kill -9, and reap the process."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()
        self._drop_connection()

    def stop(self, timeout_s: float = 40.0) -> None:
        """SIGTERM (the service checkpoints and leaves its group), SIGKILL if it hangs."""
        self._drop_connection()
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def _drop_connection(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


class ServiceExited(RuntimeError):
    """The service process ended while a benchmark waited for it."""


class _Closing:
    def __init__(self, connection: http.client.HTTPConnection) -> None:
        self.connection = connection

    def __enter__(self) -> http.client.HTTPConnection:
        return self.connection

    def __exit__(self, *exc: object) -> None:
        self.connection.close()


class BackgroundStream:
    """`streamfit produce --synthetic --forever --rate R` as a child process."""

    def __init__(
        self, bootstrap: str, topic: str, rate: float, partitions: int, seed: int, source: Path
    ) -> None:
        self.command = [
            sys.executable, "-m", "service", "produce",
            "--topic", topic, "--partitions", str(partitions),
            "--synthetic", "--forever", "--seed", str(seed), "--rate", str(rate), "--quiet",
        ]  # fmt: skip
        self.env = {**service_environ(), "STREAMFIT_KAFKA_BOOTSTRAP": bootstrap}
        self.source = source
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> BackgroundStream:
        self.process = subprocess.Popen(
            self.command,
            env=self.env,
            cwd=self.source,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        return self

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class BenchSession:
    """One broker and one scratch directory for a run; owns everything it starts."""

    def __init__(self, workdir: Path, source: Path, quick: bool) -> None:
        self.workdir = workdir
        self.source = source
        self.quick = quick
        self.broker = EmbeddedBroker(port=free_port())
        self._services: list[Service] = []
        self._streams: list[BackgroundStream] = []

    @property
    def bootstrap(self) -> str:
        return self.broker.bootstrap

    def broker_cpu_seconds(self) -> float:
        process = self.broker._process
        return process_cpu_seconds(process.pid) if process is not None else float("nan")

    def __enter__(self) -> BenchSession:
        shutil.rmtree(self.workdir, ignore_errors=True)
        self.workdir.mkdir(parents=True)
        self.broker.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()
        self.broker.stop()

    def cleanup(self) -> None:
        """Stop every stream and service started so far (between benchmarks, and at the end)."""
        for stream in self._streams:
            stream.stop()
        for service in self._services:
            try:
                service.stop()
            except Exception:  # a hung service must not keep the others running
                if service.alive():
                    service.kill()
        self._streams.clear()
        self._services.clear()

    def new_topic(self, prefix: str) -> str:
        return f"{prefix}-{uuid.uuid4().hex[:8]}"

    def produce(self, topic: str, rows: int, partitions: int = 3, seed: int = 0) -> float:
        """Write `rows` synthetic records round-robin over the partitions; seconds taken."""
        started = time.perf_counter()
        pairs = synthetic_pairs(rows, seed, 18)
        options = {"bootstrap_servers": self.bootstrap}
        sent = asyncio.run(produce(options, topic, pairs, partitions, progress=False))
        if sent != rows:
            raise RuntimeError(f"produced {sent} of {rows} records")
        return time.perf_counter() - started

    def stream(
        self, topic: str, rate: float, partitions: int = 3, seed: int = 7
    ) -> BackgroundStream:
        stream = BackgroundStream(
            self.bootstrap, topic, rate, partitions, seed, self.source
        ).start()
        self._streams.append(stream)
        return stream

    def service(
        self,
        topic: str,
        name: str | None = None,
        checkpoint_dir: Path | None = None,
        env: dict[str, str] | None = None,
        **settings: object,
    ) -> Service:
        """A service (not started) on `topic` with its own group and checkpoint directory.

        `settings` are STREAMFIT_<NAME> values; everything else is the service default, except
        the admin API key (benchmarks write checkpoints through /admin/checkpoint). `env`
        adds raw environment variables (e.g. TensorFlow's).
        """
        name = name or f"svc-{len(self._services)}-{uuid.uuid4().hex[:6]}"
        checkpoint_dir = checkpoint_dir or self.workdir / name / "checkpoints"
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
        service_env = {
            "STREAMFIT_KAFKA_BOOTSTRAP": self.bootstrap,
            "STREAMFIT_TRAIN_TOPIC": topic,
            "STREAMFIT_GROUP_ID": f"g-{name}",
            "STREAMFIT_CHECKPOINT_DIR": str(checkpoint_dir),
            "STREAMFIT_API_KEY": API_KEY,
        }
        service_env.update({f"STREAMFIT_{k.upper()}": str(v) for k, v in settings.items()})
        service_env.update(env or {})
        service = Service(service_env, self.source, checkpoint_dir.parent / "service.log")
        self._services.append(service)
        return service


def poll_until(
    condition: Callable[[], Any], timeout_s: float, interval_s: float = 0.02, what: str = ""
) -> tuple[Any, float]:
    """Call `condition` until it returns something truthy; (value, perf_counter when seen)."""
    deadline = time.perf_counter() + timeout_s
    last: Any = None
    while time.perf_counter() < deadline:
        try:
            last = condition()
        except (OSError, http.client.HTTPException, RuntimeError) as exc:
            last = exc
        else:
            if last:
                return last, time.perf_counter()
        time.sleep(interval_s)
    raise TimeoutError(
        f"timed out after {timeout_s}s waiting for {what or condition}: {last!r:.300}"
    )
