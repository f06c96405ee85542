"""`streamfit broker`: the Tansu child dies with the command, even on SIGKILL, freeing the port."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from service.broker import broker_binary, free_port
from tests.support import ROOT, service_environ

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="the broker dies with its parent on Linux only"
)


def children_of(pid: int) -> list[int]:
    """Pids whose parent is `pid` (from /proc, so the test needs nothing installed)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # exited while we looked
            continue
        # The command name, in parentheses, may hold spaces: the fields after it are fixed.
        if int(stat.rpartition(")")[2].split()[1]) == pid:
            found.append(int(entry.name))
    return found


def is_broker(pid: int) -> bool:
    try:
        return os.readlink(f"/proc/{pid}/exe") == os.path.realpath(broker_binary())
    except OSError:
        return False


def wait_listening(port: int, command: subprocess.Popen[bytes], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert command.poll() is None, f"streamfit broker exited with {command.returncode}"
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"streamfit broker did not listen on port {port} in {timeout_s}s")


def bind_within(port: int, timeout_s: float) -> OSError | None:
    """Bind 127.0.0.1:`port` as a server would; None once it works, else the last error."""
    deadline = time.monotonic() + timeout_s
    while True:
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("127.0.0.1", port))
                return None
            except OSError as exc:
                if time.monotonic() >= deadline:
                    return exc
        time.sleep(0.05)


def test_sigkill_of_the_command_frees_the_broker_port(tmp_path: Path) -> None:
    port = free_port()
    with (tmp_path / "broker.log").open("wb") as log:
        command = subprocess.Popen(
            [sys.executable, "-m", "service", "broker", "--port", str(port)],
            cwd=ROOT,
            env=service_environ(),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    brokers: list[int] = []
    try:
        wait_listening(port, command, timeout_s=30)
        brokers = [pid for pid in children_of(command.pid) if is_broker(pid)]
        assert len(brokers) == 1, f"expected one Tansu child of the command, found {brokers}"

        command.send_signal(signal.SIGKILL)
        command.wait(timeout=10)

        error = bind_within(port, timeout_s=2.0)
        assert error is None, f"port {port} still taken 2 s after SIGKILL of the command: {error}"
    finally:
        if command.poll() is None:
            command.kill()
            command.wait()
        for pid in brokers:
            if is_broker(pid):  # still the orphaned broker, not a recycled pid
                os.kill(pid, signal.SIGKILL)
