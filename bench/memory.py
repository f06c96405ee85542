"""Memory: resident set size of the service over a long stream.

The service learns a long topic (filled beforehand) with checkpoints every 5 s; VmRSS of its
process is sampled every 0.5 s with samples_trained. After the warm-up (the first 20 % of the
records) RSS should stay flat: the least-squares slope per 100k records is the leak figure.
"""

from __future__ import annotations

import time
from typing import Any

from bench.report import SummaryRow, fmt_int, table
from bench.stack import BenchSession
from bench.stats import slope

NAME = "memory"
TITLE = "Memory over a long stream"
WARMUP_FRACTION = 0.2
SAMPLE_S = 0.5
FLAT_MIB_PER_100K = 1.0
CHECKPOINT_INTERVAL_S = 5
MIB = 1024 * 1024


def run(session: BenchSession, quick: bool) -> dict[str, Any]:
    rows = 100_000 if quick else 1_000_000
    topic = session.new_topic("memory")
    produce_s = session.produce(topic, rows, seed=51)
    service = session.service(topic, checkpoint_interval_s=CHECKPOINT_INTERVAL_S).start()
    samples: list[tuple[float, int, int]] = []
    started = time.perf_counter()
    rss_at_ready = service.rss_bytes()
    while True:
        trained = service.learned()
        samples.append((time.perf_counter() - started, trained, service.rss_bytes()))
        if trained >= rows:
            break
        if time.perf_counter() - started > 900:
            raise TimeoutError(f"trained {trained} of {rows} records in 900 s")
        time.sleep(SAMPLE_S)
    peak = service.peak_rss_bytes()
    service.stop()
    warm = [s for s in samples if s[1] >= WARMUP_FRACTION * rows]
    per_100k = slope([s[1] / 100_000 for s in warm], [s[2] / MIB for s in warm])
    return {
        "rows": rows,
        "produce_s": produce_s,
        "train_s": samples[-1][0],
        "rss_at_ready_mib": rss_at_ready / MIB,
        "rss_after_warmup_mib": warm[0][2] / MIB,
        "rss_end_mib": samples[-1][2] / MIB,
        "rss_max_sampled_mib": max(s[2] for s in samples) / MIB,
        "peak_rss_mib": peak / MIB,
        "slope_mib_per_100k": per_100k,
        "warmup_records": int(WARMUP_FRACTION * rows),
        "samples": [
            {"t_s": round(t, 2), "trained": n, "rss_mib": round(r / MIB, 2)} for t, n, r in samples
        ],
    }


def _flat(result: dict[str, Any]) -> bool:
    # Growth is what matters: memory given back (a negative slope) is not a leak.
    return bool(result["slope_mib_per_100k"] < FLAT_MIB_PER_100K)


def summary(result: dict[str, Any]) -> list[SummaryRow]:
    return [
        SummaryRow(
            f"RSS over {fmt_int(result['rows'])} records",
            f"{result['rss_after_warmup_mib']:.0f} MiB after warm-up -> "
            f"{result['rss_end_mib']:.0f} MiB at end; "
            f"{result['slope_mib_per_100k']:+.2f} MiB per 100k records",
            f"flat (growth < {FLAT_MIB_PER_100K:.0f} MiB/100k)",
            _flat(result),
        )
    ]


def render(result: dict[str, Any]) -> str:
    points = result["samples"]
    rows = result["rows"]
    marks = [next(p for p in points if p["trained"] >= i * rows / 8) for i in range(9)]
    return "\n".join(
        [
            f"{fmt_int(result['rows'])} records learned in {result['train_s']:.0f} s, checkpoints "
            f"every {CHECKPOINT_INTERVAL_S} s, VmRSS sampled every {SAMPLE_S} s "
            f"({len(points)} samples); warm-up = first {fmt_int(result['warmup_records'])} "
            "records.",
            "",
            table(
                ["", "MiB"],
                [
                    [
                        "RSS when ready (model loaded, nothing learned)",
                        f"{result['rss_at_ready_mib']:.1f}",
                    ],
                    ["RSS after warm-up", f"{result['rss_after_warmup_mib']:.1f}"],
                    ["RSS at end", f"{result['rss_end_mib']:.1f}"],
                    ["peak RSS (VmHWM)", f"{result['peak_rss_mib']:.1f}"],
                    [
                        "slope after warm-up, per 100k records",
                        f"**{result['slope_mib_per_100k']:+.3f}**",
                    ],
                ],
            ),  # fmt: skip
            "",
            "RSS along the stream: "
            + ", ".join(f"{fmt_int(p['trained'])}: {p['rss_mib']:.0f}" for p in marks)
            + " (records: MiB).",
            "",
            f"Target flat after warm-up (growth < {FLAT_MIB_PER_100K:.0f} MiB per 100k records): "
            f"**{'met' if _flat(result) else 'not met'}**.",
        ]
    )
