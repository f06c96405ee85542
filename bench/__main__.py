"""`python -m bench [--quick] [--only NAME ...]`: run the benchmarks, write docs/BENCHMARKS.md.

The run first freezes a copy of `service/` (bench/source.py); every benchmark module, and
everything they start, uses that copy, so the benchmark modules are imported only after it.
"""

from __future__ import annotations

import argparse
import importlib
import json
import shutil
import sys
import time
import traceback
from pathlib import Path
from types import ModuleType
from typing import Any

from bench import machine, report, source
from bench.contention import wait_for_quiet

NAMES = (
    "throughput",
    "freshness",
    "latency",
    "concurrency",
    "paths",
    "responsiveness",
    "recovery",
    "memory",
    "profile",
    "export",
    "challenger",
    "scoring",
)
ROOT = machine.ROOT
RESULTS = ROOT / "bench" / "results"
DOC = ROOT / "docs" / "BENCHMARKS.md"


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="short version (< 5 minutes)")
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="NAME",
        help=f"run only these (repeat or comma-separate): {', '.join(NAMES)}",
    )
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=None,
        metavar="S",
        help="wait up to S seconds before each benchmark for other processes to leave the "
        "CPU idle (default 60, 10 with --quick)",
    )
    parser.add_argument("--no-doc", action="store_true", help="do not rewrite docs/BENCHMARKS.md")
    parser.add_argument(
        "--render-only",
        action="store_true",
        help="run nothing: rewrite docs/BENCHMARKS.md from bench/results/*.json",
    )
    args = parser.parse_args(argv)
    if args.quiet_wait is None:
        args.quiet_wait = 10.0 if args.quick else 60.0
    only = [n.strip() for chunk in args.only for n in chunk.split(",") if n.strip()]
    unknown = sorted(set(only) - set(NAMES))
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(NAMES)}")
    args.selected = [n for n in NAMES if not only or n in only]
    return args


def _command(args: argparse.Namespace) -> str:
    words = ["python -m bench"]
    if args.quick:
        words.append("--quick")
    if len(args.selected) != len(NAMES):
        words += [f"--only {name}" for name in args.selected]
    return " ".join(words)


def _run_one(
    benchmark: ModuleType,
    session: Any,
    args: argparse.Namespace,
    facts: dict[str, Any],
    command: str,
) -> dict[str, Any]:
    quiet = wait_for_quiet(args.quiet_wait)
    print(
        f"[bench] {benchmark.NAME}: {benchmark.TITLE} (other processes: "
        f"{quiet['foreign_cores']:.2f} cores busy, waited {quiet['waited_s']:.0f} s) ...",
        flush=True,
    )
    started = time.perf_counter()
    stored: dict[str, Any] = {
        "benchmark": benchmark.NAME,
        "mode": "quick" if args.quick else "full",
        "command": command,
        "machine": facts,
        "foreign_cores_at_start": quiet["foreign_cores"],
    }
    try:
        stored["result"] = benchmark.run(session, args.quick)
    except Exception:
        stored["error"] = traceback.format_exc()
        print(stored["error"], file=sys.stderr, flush=True)
    finally:
        session.cleanup()
    stored["duration_s"] = time.perf_counter() - started
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{benchmark.NAME}.json").write_text(json.dumps(stored, indent=2, default=str))
    status = "failed" if "error" in stored else "done"
    print(f"[bench] {benchmark.NAME}: {status} in {stored['duration_s']:.0f} s", flush=True)
    return stored


def _section(benchmark: ModuleType, stored: dict[str, Any]) -> tuple[Any, ...]:
    if "error" in stored:
        last = stored["error"].strip().splitlines()[-1]
        return (benchmark.NAME, benchmark.TITLE, stored, None, f"Failed: `{last}`")
    result = stored["result"]
    return (
        benchmark.NAME,
        benchmark.TITLE,
        stored,
        benchmark.summary(result),
        benchmark.render(result),
    )


def write_document(modules: dict[str, ModuleType], facts: dict[str, Any], command: str) -> Path:
    """Render every stored result (this run's, and earlier runs' for benchmarks not rerun)."""
    sections = []
    for name in NAMES:
        path = RESULTS / f"{name}.json"
        if not path.exists():
            continue
        module = modules.get(name) or importlib.import_module(f"bench.{name}")
        sections.append(_section(module, json.loads(path.read_text())))
    previous = DOC.read_text() if DOC.exists() else None
    DOC.parent.mkdir(parents=True, exist_ok=True)
    DOC.write_text(report.document(sections, facts, command, report.keep_notes(previous)))
    return DOC


def render_only() -> int:
    """Rewrite the document from the stored results (e.g. after editing its notes)."""
    stored = [
        json.loads((RESULTS / f"{name}.json").read_text())
        for name in NAMES
        if (RESULTS / f"{name}.json").exists()
    ]
    if not stored:
        print("[bench] no results in bench/results/: run the benchmarks first", file=sys.stderr)
        return 1
    newest = max(stored, key=lambda s: s["machine"]["date_utc"])
    print(f"[bench] wrote {write_document({}, newest['machine'], newest['command'])}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if args.render_only:
        return render_only()
    run_dir = RESULTS / "run"
    shutil.rmtree(run_dir, ignore_errors=True)
    frozen = source.freeze(run_dir / "src")
    modules = {name: importlib.import_module(f"bench.{name}") for name in args.selected}
    from bench.stack import BenchSession

    facts = machine.facts()
    facts["service_source"] = source.fingerprint(frozen / "service")
    command = _command(args)
    print(
        f"[bench] {command}: {', '.join(args.selected)} on {facts['cpu_model']}, "
        f"{facts['cores']} cores ({facts['busy_cores_before_run']} busy before start); "
        f"service source {facts['service_source']} frozen in {frozen.relative_to(ROOT)}",
        flush=True,
    )
    started = time.perf_counter()
    failed = []
    with BenchSession(run_dir / "services", frozen, quick=args.quick) as session:
        for name in args.selected:
            stored = _run_one(modules[name], session, args, facts, command)
            if "error" in stored:
                failed.append(name)
    if not args.no_doc:
        print(f"[bench] wrote {write_document(modules, facts, command).relative_to(ROOT)}")
    print(f"[bench] finished in {time.perf_counter() - started:.0f} s", flush=True)
    if failed:
        print(f"[bench] failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
