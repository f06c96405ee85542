"""Contention: how much CPU other processes took while a figure was measured.

The machine has two cores and may be shared (other test runs). `CpuWindow` splits the CPU
used during a measurement into this benchmark's process tree (the bench, the service, the
broker, load generators) and everything else ("foreign"), so a figure taken under contention
says so; `wait_for_quiet` holds a benchmark back until the foreign load drops.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

SLOW_FOREIGN_CORES = 0.25


def _system_ticks() -> tuple[int, int]:
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return sum(fields[:8]), fields[3] + fields[4]


def _process_table() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, utime+stime+cutime+cstime ticks) for every process."""
    table: dict[int, tuple[int, int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        table[int(entry.name)] = (int(fields[1]), sum(int(v) for v in fields[11:15]))
    return table


def _own_ticks(table: dict[int, tuple[int, int]]) -> dict[int, int]:
    children: dict[int, list[int]] = {}
    for pid, (parent, _ticks) in table.items():
        children.setdefault(parent, []).append(pid)
    own, stack = {}, [os.getpid()]
    while stack:
        pid = stack.pop()
        if pid in table:
            own[pid] = table[pid][1]
        stack.extend(children.get(pid, []))
    return own


class CpuWindow:
    """CPU cores used during a window: in total, by this process tree, by everything else."""

    def __init__(self) -> None:
        self._start: tuple[float, tuple[int, int], dict[int, int]] | None = None

    def start(self) -> CpuWindow:
        self._start = (time.perf_counter(), _system_ticks(), _own_ticks(_process_table()))
        return self

    def stop(self) -> dict[str, Any]:
        assert self._start is not None
        started, (total0, idle0), own0 = self._start
        total1, idle1 = _system_ticks()
        own1 = _own_ticks(_process_table())
        cores = os.cpu_count() or 1
        all_ticks = max(total1 - total0, 1)
        busy = cores * ((total1 - total0) - (idle1 - idle0)) / all_ticks
        own_ticks = sum(own1[pid] - own0[pid] for pid in own1 if pid in own0)
        own_ticks += sum(own1[pid] for pid in own1 if pid not in own0)  # started in the window
        own = cores * own_ticks / all_ticks
        foreign = max(busy - own, 0.0)
        return {
            "seconds": time.perf_counter() - started,
            "busy_cores": round(busy, 3),
            "own_cores": round(own, 3),
            "foreign_cores": round(foreign, 3),
            "contended": foreign > SLOW_FOREIGN_CORES,
        }


def foreign_cores(interval_s: float = 1.0) -> float:
    window = CpuWindow().start()
    time.sleep(interval_s)
    return float(window.stop()["foreign_cores"])


def wait_for_quiet(max_wait_s: float, threshold: float = SLOW_FOREIGN_CORES) -> dict[str, Any]:
    """Wait (up to max_wait_s) until other processes use less than `threshold` cores."""
    started = time.perf_counter()
    load = foreign_cores()
    while load > threshold and time.perf_counter() - started < max_wait_s:
        load = foreign_cores(2.0)
    return {"waited_s": round(time.perf_counter() - started, 1), "foreign_cores": round(load, 3)}
