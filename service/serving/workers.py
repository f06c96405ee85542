"""HTTP workers: the processes that take a trainer's public port, started, watched and stopped
by the trainer's process.

Why processes: the trainer's process runs the consumer (aiokafka's fetch and unpack, the
decode hand-offs) and the learner thread under one interpreter lock; prediction handlers in
that process would take the lock from them, and they from the handlers. Each worker
(`streamfit http-worker`, `service.api.worker`) accepts on the listening socket the trainer
bound and hands down, answers predictions from the shared snapshot
(`service.serving.shared`), and forwards everything else to the trainer's app on a Unix socket
in the same private directory. Their metrics land in that directory too (prometheus-client's
multiprocess files) and the trainer's `/metrics` adds them (`service.metrics.exposition`).

A worker that exits is started again (after a pause that grows while it keeps failing); a
worker whose trainer dies is killed by the kernel (Linux: the parent-death signal) or notices
within half a second, so it never serves an orphaned model nor holds the port.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import platform
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

from service.settings import Settings

log = logging.getLogger(__name__)

CONTROL_SOCKET = "control.sock"
METRICS_DIR = "metrics"
WATCH_S = 0.5
STOP_GRACE_S = 5.0
RESTART_PAUSE_S = (0.5, 30.0)  # first pause, cap; doubles while a worker keeps failing
WORKER_SLICE_S = 0.0003  # the time slice a worker asks the scheduler for (default 0.7-3 ms)
# sched_setattr(2): its system call number by machine, and struct sched_attr's first version.
_SCHED_SETATTR = {"x86_64": 314, "aarch64": 274}
_SCHED_ATTR = struct.Struct("IIQiIQQQ")


def worker_count(settings: Settings) -> int:
    """How many HTTP worker processes a trainer runs (0: its own process serves HTTP).

    `auto`: half the CPUs this process may use (at least one), none on one CPU, in the
    predictor role (it has no learner to protect: scale it by replicas; the scorer serves only
    health and metrics) or with delayed labels (which join predictions the trainer's own
    process made).
    """
    if settings.role in ("predictor", "scorer"):
        return 0
    if isinstance(settings.http_workers, int):
        return settings.http_workers
    if settings.labels_topic:
        return 0
    cpus = available_cpus()
    return 0 if cpus < 2 else max(1, cpus // 2)


def available_cpus() -> int:
    """CPUs this process may use: its affinity, bounded by a cgroup CPU quota (a container's
    CPU limit, e.g. `resources.limits.cpu` in Kubernetes), rounded up."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    quota = cgroup_quota()
    return max(1, min(cpus or 1, math.ceil(quota) if quota else cpus or 1))


def cgroup_quota(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """The CPU quota in CPUs (cgroup v2 `cpu.max`, or v1 `cfs_quota_us`), None if unlimited."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        v1 = root / "cpu"
        quota_us = int((v1 / "cpu.cfs_quota_us").read_text())
        period_us = int((v1 / "cpu.cfs_period_us").read_text())
        return None if quota_us <= 0 else quota_us / period_us
    except (OSError, ValueError):
        return None


def listening_socket(host: str, port: int, backlog: int = 2048) -> socket.socket:
    """The public socket, bound by the trainer's process and shared by its workers."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(backlog)
    sock.set_inheritable(True)
    return sock


class HttpWorkers:
    """`count` worker processes on `listener`, sharing `directory` with the trainer."""

    def __init__(
        self,
        settings: Settings,
        count: int,
        listener: socket.socket,
        directory: Path,
        trainer_nice: int = 0,
    ) -> None:
        self.settings = settings
        self.count = count
        self.trainer_nice = trainer_nice  # of the trainer's learn and decode threads
        self.listener = listener
        self.directory = directory
        self.control_socket = directory / CONTROL_SOCKET
        self.metrics_dir = directory / METRICS_DIR
        self.metrics_dir.mkdir(exist_ok=True)
        self.restarts = 0
        self._processes: list[subprocess.Popen[bytes] | None] = [None] * count
        self._failures = [0] * count
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    def start(self) -> None:
        for slot in range(self.count):
            self._spawn(slot)
        self._task = asyncio.create_task(self._watch(), name="streamfit-http-workers")

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self._processes if p is not None and p.poll() is None]

    def _spawn(self, slot: int) -> None:
        env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(self.metrics_dir)}
        fd = self.listener.fileno()
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "service",
                "http-worker",
                "--fd",
                str(fd),
                "--shared",
                str(self.directory),
                "--parent",
                str(os.getpid()),
            ],
            stdin=subprocess.PIPE,
            env=env,
            pass_fds=(fd,),
            start_new_session=True,  # a terminal's Ctrl-C reaches the trainer; it stops them
        )
        assert process.stdin is not None
        # The settings (secrets included) through a pipe, never the environment or a file.
        process.stdin.write(settings_for_worker(self.settings))
        process.stdin.close()
        self._processes[slot] = process
        log.info("HTTP worker started", extra={"slot": slot, "pid": process.pid})

    async def _watch(self) -> None:
        started = [time.monotonic()] * self.count
        while not self._stopping:
            await asyncio.sleep(WATCH_S)
            for slot, process in enumerate(self._processes):
                if self._stopping or process is None or process.poll() is None:
                    continue
                lived = time.monotonic() - started[slot]
                self._failures[slot] = 0 if lived > 60 else self._failures[slot] + 1
                pause = min(
                    RESTART_PAUSE_S[0] * 2 ** max(self._failures[slot] - 1, 0), RESTART_PAUSE_S[1]
                )
                log.warning(
                    "HTTP worker exited; starting it again",
                    extra={"slot": slot, "pid": process.pid, "code": process.returncode},
                )
                self._processes[slot] = None
                await asyncio.sleep(pause)
                if not self._stopping:
                    self._spawn(slot)
                    self.restarts += 1
                    started[slot] = time.monotonic()

    async def stop(self) -> None:
        """SIGTERM every worker (each finishes the requests it holds), then wait."""
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        running = [p for p in self._processes if p is not None and p.poll() is None]
        for process in running:
            process.terminate()
        deadline = time.monotonic() + STOP_GRACE_S
        for process in running:
            remaining = max(deadline - time.monotonic(), 0.0)
            try:
                await asyncio.to_thread(process.wait, remaining)
            except subprocess.TimeoutExpired:
                process.kill()
                await asyncio.to_thread(process.wait)
        self.listener.close()


def settings_for_worker(settings: Settings) -> bytes:
    """The trainer's settings as its workers read them (`settings_from_trainer`): only what
    was set, so defaults and aliases (`MODEL` and `MODEL_ARCH`) come back as they were."""
    return settings.model_dump_json(exclude_unset=True).encode()


def settings_from_trainer(data: bytes) -> Settings:
    return Settings.model_validate_json(data)


def watch_parent(parent: int) -> None:
    """In a worker: die with the trainer's process. Linux: the kernel sends SIGKILL when the
    parent exits; elsewhere `parent_alive` is polled."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL)
    if not parent_alive(parent):
        os._exit(1)


def parent_alive(parent: int) -> bool:
    return os.getppid() == parent


def request_short_slice(slice_s: float = WORKER_SLICE_S) -> bool:
    """In a worker: ask Linux's scheduler (EEVDF, 6.12 and later) for a short time slice, so a
    request that wakes the worker preempts the trainer's threads sooner instead of waiting out
    their slice; the trainer, a long-running computation, keeps the default. The policy
    (SCHED_OTHER) and nice value stay as they are. True if the kernel took it; elsewhere, or
    refused (an older kernel, a seccomp profile), nothing changes."""
    number = _SCHED_SETATTR.get(platform.machine())
    if not sys.platform.startswith("linux") or number is None:
        return False
    import ctypes

    attr = _SCHED_ATTR.pack(
        _SCHED_ATTR.size,  # size
        os.SCHED_OTHER,  # policy
        0,  # flags
        os.getpriority(os.PRIO_PROCESS, 0),  # nice: unchanged
        0,  # priority
        int(slice_s * 1e9),  # runtime: the requested slice, in ns
        0,  # deadline
        0,  # period
    )
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.syscall(number, 0, ctypes.create_string_buffer(attr, len(attr)), 0) != 0:
        log.debug("short time slice refused", extra={"errno": ctypes.get_errno()})
        return False
    return True


def trainer_nice(settings: Settings, workers: int) -> int:
    """How much lower than its HTTP workers the trainer's learning runs (a nice value): its
    `TRAINER_NICE` where `serve` started `workers`, else 0 (nobody to yield to)."""
    return settings.trainer_nice if workers else 0


def lower_this_thread(nice: int) -> bool:
    """Run the calling thread (and the threads it starts, e.g. TensorFlow's pools) at `nice`,
    so an HTTP worker that wakes takes a CPU from it first; the event loop keeps its own
    priority (the workers it starts inherit it). Linux: nice is per thread. True if set."""
    if nice <= 0 or not sys.platform.startswith("linux"):
        return False
    try:
        os.setpriority(os.PRIO_PROCESS, 0, max(nice, os.getpriority(os.PRIO_PROCESS, 0)))
    except OSError:
        return False
    return True


def session_groups_apply(
    proc: Path = Path("/proc"), cgroups: Path = Path("/sys/fs/cgroup")
) -> bool:
    """Whether Linux schedules this process by session (autogroup): enabled, and the process in
    the root CPU cgroup, as on a host. In a container's CPU cgroup it does not apply, even where
    the cgroup namespace shows that cgroup as `/` (it then has a `cpu.weight`, the root none)."""
    try:
        enabled = (proc / "sys/kernel/sched_autogroup_enabled").read_text().strip() == "1"
        lines = (proc / "self/cgroup").read_text().splitlines()
    except OSError:
        return False
    # "id:controllers:path"; cgroup v1 names cpu, v2 has id 0 and no controllers listed.
    entries = [line.split(":", 2) for line in lines]
    cpu = [path for _, controllers, path in entries if "cpu" in controllers.split(",")]
    if cpu:
        return enabled and cpu[0] == "/"
    unified = [path for number, _, path in entries if number == "0"]
    return enabled and unified == ["/"] and not (cgroups / "cpu.weight").exists()


def lower_session_group(nice: int, proc: Path = Path("/proc/self")) -> bool:
    """Where Linux schedules by session (`session_groups_apply`), per-thread nice counts only
    inside the session, and each HTTP worker is a session of its own: lower this session's
    group instead, but only if this process leads the session, so a terminal's shell is never
    lowered with it. True if set."""
    group = proc / "autogroup"
    if nice <= 0 or not group.exists() or os.getsid(0) != os.getpid():
        return False
    try:
        group.write_text(f"{nice}\n")
    except OSError:
        return False
    return True


def yield_to_workers(
    settings: Settings,
    workers: int,
    proc: Path = Path("/proc"),
    cgroups: Path = Path("/sys/fs/cgroup"),
) -> int:
    """In `serve`, with `workers` started: make the trainer yield the CPU to them, and return
    the nice its learn and decode threads run at. Where Linux schedules by session and the
    trainer leads its own, its session's group is lowered, and its threads keep the event
    loop's priority (0): lowered threads lose the CPU to their own event loop too, which
    costs the trainer about 5 % of its rate with no HTTP load (paired benchmark rounds).
    Elsewhere (a container's CPU cgroup) lowering the threads is what makes them yield."""
    nice = trainer_nice(settings, workers)
    if session_groups_apply(proc, cgroups) and lower_session_group(nice, proc / "self"):
        log.info("the trainer's session runs at nice %d below its HTTP workers", nice)
        return 0
    if nice:
        log.info("the trainer's learn and decode threads run at nice %d", nice)
    return nice
