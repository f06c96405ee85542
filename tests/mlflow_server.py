"""A real MLflow tracking server for the tests: `mlflow server` on a free loopback port.

A SQLite backend store and a local artifact root in a temporary directory; one worker and no
job runner (the registry tests need neither, and each costs seconds of start-up). `stop()` and
`start()` (same port, same database) let a test take the server away and bring it back.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from service.broker import free_port

START_TIMEOUT_S = 90.0


class MlflowServer:
    """`python -m mlflow server` as a child process in its own process group."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def database_uri(self) -> str:
        """The server's backend store, for a client that writes the database directly."""
        return f"sqlite:///{self.directory / 'mlflow.db'}"

    @property
    def log_path(self) -> Path:
        return self.directory / "server.log"

    def start(self) -> MlflowServer:
        """Start the server and wait until it answers /health."""
        self.directory.mkdir(parents=True, exist_ok=True)
        command = [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            self.database_uri,
            "--default-artifact-root",
            str(self.directory / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            "1",
        ]
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        self._wait_healthy()
        return self

    def stop(self) -> None:
        """Stop the server and its workers (its process group); wait for them."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=15)
        self._wait_group_gone(process.pid)

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            assert self._process is not None
            if self._process.poll() is not None:
                raise RuntimeError(
                    f"mlflow server exited with {self._process.returncode}: "
                    f"{self.log_path.read_text()[-2000:]}"
                )
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as answer:
                    if answer.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"mlflow server did not answer /health in {START_TIMEOUT_S:.0f} s")

    @staticmethod
    def _wait_group_gone(pgid: int, timeout: float = 15.0) -> None:
        """The uvicorn worker outlives its parent for a moment: the port is free after it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)
        os.killpg(pgid, signal.SIGKILL)
