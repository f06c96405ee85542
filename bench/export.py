"""Exports for TF Serving: what writing each checkpoint as a SavedModel costs.

Two figures. The time of one export of the default model (the built-in MLP, 18 features,
binary) to a local directory, in this process: the first (which rebuilds the model and
traces the serving function) and the next ones (new weights into the same graph). And the
effect on training: the service learns the same backlog with `STREAMFIT_EXPORT_DIR` unset
and set, runs alternating, both checkpointing every second (30 times the default rate, so
that exports happen during the timed window); the ratio compares records/s within this run.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.report import SummaryRow, fmt_int, fmt_ms, table
from bench.stack import BenchSession
from bench.throughput import DEFAULT_BATCH, service_run

NAME = "export"
TITLE = "Exports for TF Serving"
SEED = 13
CHECKPOINT_INTERVAL_S = 1
DEFAULT_INTERVAL_S = 30  # STREAMFIT_CHECKPOINT_INTERVAL_S's default


def export_times(exports: int) -> dict[str, Any]:
    """Seconds per export of the default model, each with weights one batch newer."""
    from service.checkpoints import Checkpoint
    from service.export import Exporter, target_for
    from service.synthetic import synthetic_susy
    from service.training.learner import builtin_learner

    learner = builtin_learner(18)
    x, y = synthetic_susy(DEFAULT_BATCH * (exports + 1), seed=SEED)
    seconds = []
    with tempfile.TemporaryDirectory(prefix="bench-export-") as directory:
        exporter = Exporter(target_for(directory), keep=2)
        for version in range(1, exports + 2):
            rows = slice((version - 1) * DEFAULT_BATCH, version * DEFAULT_BATCH)
            learner.learn(x[rows], y[rows].astype(np.float32))
            checkpoint = Checkpoint(version, learner.state(), {"bench:0": version})
            started = time.perf_counter()
            exporter.export(checkpoint)
            seconds.append(time.perf_counter() - started)
        newest = Path(directory) / str(exports + 1)
        size = sum(p.stat().st_size for p in newest.rglob("*") if p.is_file())
    warm = seconds[1:]
    return {
        "first_s": seconds[0],
        "next_s": warm,
        "next_p50_s": statistics.median(warm),
        "next_max_s": max(warm),
        "bytes": size,
    }


def throughput_pairs(session: BenchSession, rows: int, pairs: int) -> list[dict[str, Any]]:
    """Alternating runs without and with exports on one filled topic."""
    topic = session.new_topic("export")
    session.produce(topic, rows, seed=SEED)
    runs = []
    for pair in range(pairs):
        for exporting in (False, True):
            exports = session.workdir / f"exports-{pair}"
            env = {"STREAMFIT_CHECKPOINT_INTERVAL_S": str(CHECKPOINT_INTERVAL_S)}
            if exporting:
                env |= {"STREAMFIT_EXPORT_DIR": str(exports), "STREAMFIT_EXPORT_KEEP": "1000"}
            run = service_run(session, topic, rows, DEFAULT_BATCH, env)
            run["exporting"] = exporting
            model_dir = exports / "susy"
            run["exported_versions"] = (
                sum(1 for p in model_dir.iterdir() if p.name.isdigit()) if exporting else 0
            )
            runs.append(run)
    return runs


def run(session: BenchSession, quick: bool) -> dict[str, Any]:
    rows = 100_000 if quick else 300_000
    pairs = 1 if quick else 3
    times = export_times(5 if quick else 20)
    runs = throughput_pairs(session, rows, pairs)
    off = [r["rate"] for r in runs if not r["exporting"]]
    on = [r["rate"] for r in runs if r["exporting"]]
    return {
        "rows": rows,
        "pairs": pairs,
        "batch_size": DEFAULT_BATCH,
        "checkpoint_interval_s": CHECKPOINT_INTERVAL_S,
        "export": times,
        "runs": runs,
        "rate_off": statistics.mean(off),
        "rate_on": statistics.mean(on),
        "ratio": statistics.mean(on) / statistics.mean(off),
    }


def training_lost(result: dict[str, Any]) -> float:
    """Seconds of training lost per export: the extra time of the runs with exports over the
    exports made while they learned (every version but the final checkpoint's)."""
    runs = result["runs"]
    off = statistics.mean(r["seconds"] for r in runs if not r["exporting"])
    on = [r for r in runs if r["exporting"]]
    extra = statistics.mean(r["seconds"] for r in on) - off
    return extra / statistics.mean(max(r["exported_versions"] - 1, 1) for r in on)


def summary(result: dict[str, Any]) -> list[SummaryRow]:
    e = result["export"]
    return [
        SummaryRow(
            "export of the default model (SavedModel, local directory)",
            f"first {fmt_ms(e['first_s'])}, then p50 {fmt_ms(e['next_p50_s'])}; training "
            f"with an export every {result['checkpoint_interval_s']} s at "
            f"{result['ratio']:.2f} of its rate without (every 30 s, the default: about "
            f"{1 - training_lost(result) / DEFAULT_INTERVAL_S:.3f})",
            "measured (no target)",
            None,
        )
    ]


def render(result: dict[str, Any]) -> str:
    e, lost = result["export"], training_lost(result)
    rows = [
        [
            str(i + 1),
            "on" if r["exporting"] else "off",
            fmt_int(r["rate"]),
            f"{r['seconds']:.1f}",
            str(r["exported_versions"]) if r["exporting"] else "—",
            f"{r['cpu_cores']:.2f}",
            f"{r['cpu']['foreign_cores']:.2f}",
        ]
        for i, r in enumerate(result["runs"])
    ]
    return "\n".join(
        [
            "One export of the default model (built-in MLP, 18 features, binary; "
            f"{e['bytes'] / 1024:,.0f} KiB on disk) to a local directory, in the benchmark "
            "process, each with weights one batch newer: the first rebuilds the model from the "
            "checkpoint and traces the serving function, the next ones load new weights into "
            "the same graph.",
            "",
            table(
                ["export", "time"],
                [
                    ["first", fmt_ms(e["first_s"])],
                    [
                        f"next {len(e['next_s'])}: p50 / max",
                        f"{fmt_ms(e['next_p50_s'])} / {fmt_ms(e['next_max_s'])}",
                    ],
                ],
            ),
            "",
            f"Training with and without exports: {fmt_int(result['rows'])} records in a "
            f"3-partition topic, batch {result['batch_size']}, a checkpoint every "
            f"{result['checkpoint_interval_s']} s in both (the default is 30 s), alternating "
            "runs; the export thread writes each checkpoint while the learner trains. Rates "
            "as in section 1 (first learned batch to the last record).",
            "",
            table(
                [
                    "run",
                    "exports",
                    "rec/s",
                    "seconds",
                    "versions exported",
                    "service cores",
                    "other load (cores)",
                ],
                rows,
            ),
            "",
            f"Exports on: {fmt_int(result['rate_on'])} rec/s against "
            f"{fmt_int(result['rate_off'])} off, a ratio of **{result['ratio']:.2f}**. Each "
            f"export made while learning (versions exported but the final checkpoint's) cost "
            f"{fmt_ms(lost)} of training, about its own duration: the export thread competes "
            "with the learner for the two cores and the GIL. At the default checkpoint "
            f"interval ({DEFAULT_INTERVAL_S} s) that is a ratio of about "
            f"{1 - lost / DEFAULT_INTERVAL_S:.3f}.",
        ]
    )
