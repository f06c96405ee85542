"""Hot-path profile: where the service's threads spend their time while training from Kafka.

py-spy samples the service process (100 Hz, pausing it for each sample) while it learns a
backlog at full speed: once with idle samples included (the wall-clock picture of each thread,
waiting included), once with only the thread holding the GIL (where the Python interpreter
is busy; TensorFlow kernels release the GIL), and once more for a flame graph
(bench/results/profile.svg). The raw stacks are aggregated here by self and inclusive time.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench.report import SummaryRow, table
from bench.stack import RESULTS, BenchSession, Service, poll_until

NAME = "profile"
TITLE = "Hot-path profile (py-spy)"
RATE_HZ = 100
LINE = re.compile(r":\d+\)$")

# Leaf frames that mean "this thread is waiting", not working (Python-level view):
# a pool thread blocked on its work queue, and the event loop inside uvloop's native
# run loop (epoll wait plus uvloop's own C code for socket I/O; py-spy without --native
# cannot tell the two apart).
WAITING_LEAVES = {
    "_worker (concurrent/futures/thread.py)": "waiting for work (queue.get)",
    "Runner.run (asyncio/runners.py)": "in uvloop's native loop (I/O wait + native I/O)",
}


def py_spy() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(found).exists():
        raise RuntimeError(
            "py-spy is not installed: `.venv/bin/pip install py-spy` (needed for the profile)"
        )
    return found


def record(pid: int, seconds: int, output: Path, fmt: str, *flags: str) -> str:
    command = [
        py_spy(), "record", "--pid", str(pid), "--duration", str(seconds), "--rate",
        str(RATE_HZ), "--format", fmt, "-o", str(output), *flags,
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 120)
    if done.returncode != 0 or not output.exists():
        raise RuntimeError(f"py-spy failed ({done.returncode}): {done.stderr[-800:]}")
    return done.stdout + done.stderr


def parse_raw(path: Path) -> list[tuple[str, list[str], int]]:
    """py-spy raw (collapsed) stacks -> (thread name, frames root..leaf without lines, count)."""
    stacks = []
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        thread = frames[0].split(": ", 1)[-1] if frames[0].startswith("thread ") else "?"
        thread = re.sub(r"_\d+$", "", thread)
        stacks.append((thread, [LINE.sub(")", f) for f in frames[1:]], int(count)))
    return stacks


def aggregate(stacks: list[tuple[str, list[str], int]], top: int = 15) -> dict[str, Any]:
    """Per thread: samples, waiting share, top self-time and inclusive service functions."""
    threads: dict[str, dict[str, Any]] = {}
    for thread, frames, count in stacks:
        entry = threads.setdefault(
            thread, {"samples": 0, "self": Counter(), "inclusive": Counter(), "waiting": Counter()}
        )
        entry["samples"] += count
        leaf = frames[-1] if frames else "?"
        if leaf in WAITING_LEAVES:
            entry["waiting"][WAITING_LEAVES[leaf]] += count
        else:
            entry["self"][leaf] += count
        for frame in set(frames):
            if "(service/" in frame or frame.startswith("AIOKafkaConsumer.getmany"):
                entry["inclusive"][frame] += count
    total = sum(t["samples"] for t in threads.values()) or 1
    out: dict[str, Any] = {"total_samples": total, "threads": {}}
    for name, entry in sorted(threads.items(), key=lambda kv: -kv[1]["samples"]):
        n = entry["samples"]
        out["threads"][name] = {
            "samples": n,
            "waiting": {k: v / n for k, v in entry["waiting"].items()},
            "busy": 1 - sum(entry["waiting"].values()) / n,
            "self": [(f, c / n) for f, c in entry["self"].most_common(top)],
            "inclusive": [(f, c / n) for f, c in entry["inclusive"].most_common(top)],
        }
    return out


def gil_shares(stacks: list[tuple[str, list[str], int]], seconds: float) -> dict[str, Any]:
    """Share of wall time each thread held the GIL, and the top GIL-holding functions."""
    expected = seconds * RATE_HZ
    per_thread: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    for thread, frames, count in stacks:
        per_thread[thread] += count
        leaves[f"{thread}: {frames[-1] if frames else '?'}"] += count
    return {
        "expected_samples": expected,
        "held": {t: c / expected for t, c in per_thread.most_common()},
        "top": [(f, c / expected) for f, c in leaves.most_common(15)],
    }


def run(session: BenchSession, quick: bool) -> dict[str, Any]:
    wall_s, gil_s, svg_s = (6, 4, 3) if quick else (15, 8, 6)
    backlog = 250_000 if quick else 600_000
    topic = session.new_topic("profile")
    session.produce(topic, backlog, seed=61)
    service: Service = session.service(topic).start()
    poll_until(lambda: service.learned() > 0, 60, 0.05, "first trained batch")
    RESULTS.mkdir(parents=True, exist_ok=True)
    raw_path, gil_path = RESULTS / "profile-wall.txt", RESULTS / "profile-gil.txt"
    svg_path = RESULTS / "profile.svg"

    before, started = service.learned(), time.perf_counter()
    record(service.pid, wall_s, raw_path, "raw", "--threads", "--idle")
    wall_rate = (service.learned() - before) / (time.perf_counter() - started)
    record(service.pid, gil_s, gil_path, "raw", "--threads", "--gil")
    record(service.pid, svg_s, svg_path, "flamegraph", "--threads", "--idle")
    active = service.learned() < backlog
    return {
        "rate_hz": RATE_HZ,
        "seconds": {"wall": wall_s, "gil": gil_s, "svg": svg_s},
        "trained_rate_while_sampled": wall_rate,
        "training_active_to_end": active,
        "wall": aggregate(parse_raw(raw_path)),
        "gil": gil_shares(parse_raw(gil_path), gil_s),
        "files": [str(p.relative_to(RESULTS.parents[1])) for p in (raw_path, gil_path, svg_path)],
    }


def summary(result: dict[str, Any]) -> list[SummaryRow]:
    threads = result["wall"]["threads"]
    learner = threads.get("streamfit-learn", {})
    busy = learner.get("busy", float("nan"))
    gil = sum(result["gil"]["held"].values())
    return [
        SummaryRow(
            "hot path (py-spy, full-speed training)",
            f"learner thread busy {busy:.0%} of wall time; GIL held {gil:.0%} of wall time",
            "—",
            None,
        )
    ]


def _pct(share: float) -> str:
    return f"{share * 100:.1f} %"


def render(result: dict[str, Any]) -> str:
    wall, gil = result["wall"], result["gil"]
    parts = [
        f"py-spy at {result['rate_hz']} Hz while the service learns a backlog at default settings "
        f"(it learned {result['trained_rate_while_sampled']:,.0f} rec/s while being sampled; "
        "each sample pauses it). Shares are of each thread's wall time. Files: "
        + ", ".join(f"`{f}`" for f in result["files"])
        + ".",
        "",
        "Threads (wall clock, idle samples included):",
        "",
        table(
            ["thread", "busy (running Python or inside C calls)", "waiting", "GIL held"],
            [
                [
                    name,
                    _pct(t["busy"]),
                    "; ".join(f"{_pct(v)} {k}" for k, v in t["waiting"].items()) or "—",
                    _pct(gil["held"].get(name, 0.0)),
                ]
                for name, t in wall["threads"].items()
            ],
        ),
        "",
        f"GIL held by any thread: {_pct(sum(gil['held'].values()))} of wall time.",
    ]
    for name, t in wall["threads"].items():
        if not t["self"]:
            continue
        parts += [
            "",
            f"Top functions by self time, thread `{name}` (share of its wall time):",
            "",
            table(["function (file)", "self"], [[f"`{f}`", _pct(s)] for f, s in t["self"][:12]]),
        ]
        if t["inclusive"]:
            parts += [
                "",
                f"Service functions by inclusive time, thread `{name}`:",
                "",
                table(
                    ["function (file)", "inclusive"],
                    [[f"`{f}`", _pct(s)] for f, s in t["inclusive"][:10]],
                ),
            ]
    parts += [
        "",
        "Top GIL holders (thread: leaf function, share of wall time):",
        "",
        table(["thread: function", "GIL held"], [[f"`{f}`", _pct(s)] for f, s in gil["top"][:12]]),
    ]
    return "\n".join(parts)
