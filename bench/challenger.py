"""Champion and challenger: in-memory training rates of the champion alone, the challenger
alone, and both (`ChampionChallenger.learn`: each batch learned by one, then the other, and
the promotion rule), in one run.

Two models learning every batch one after the other cannot beat the harmonic combination of
their rates, 1 / (1/r_champion + 1/r_challenger); the target is 0.9 of it (the pair adds
little beyond the two compiled steps). The three measures alternate over rounds on the same
arrays, and each one's median is used.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import numpy as np

from bench.report import SummaryRow, fmt_int, table
from bench.stack import BenchSession

NAME = "challenger"
TITLE = "Champion and challenger"
TARGET_RATIO = 0.90
BATCH = 256
CHAMPION, CHALLENGER = "linear", "mlp"


def _settings(**extra: Any) -> Any:
    from service.settings import Settings

    return Settings(model=CHAMPION, challenger_model=CHALLENGER, **extra)


def _rate(learn: Any, x: np.ndarray, y: np.ndarray) -> float:
    """records/s of `learn` over the arrays in batches (the first, tracing call excluded)."""
    learn(x[:BATCH], y[:BATCH])
    started = time.perf_counter()
    for start in range(0, len(y), BATCH):
        learn(x[start : start + BATCH], y[start : start + BATCH])
    return len(y) / (time.perf_counter() - started)


def measure(rows: int, rounds: int) -> dict[str, Any]:
    from service.synthetic import synthetic_susy
    from service.training.challenger import pair_for
    from service.training.learner import learner_for

    x, labels = synthetic_susy(rows, seed=21)
    y = labels.astype(np.float32)
    settings = _settings()
    rates: dict[str, list[float]] = {"champion": [], "challenger": [], "both": []}
    promotions = 0
    for _ in range(rounds):
        rates["champion"].append(_rate(learner_for(settings.with_model(CHAMPION)).learn, x, y))
        rates["challenger"].append(_rate(learner_for(settings.with_model(CHALLENGER)).learn, x, y))
        pair = pair_for(settings, None)
        rates["both"].append(_rate(pair.learn, x, y))
        promotions = pair.roles.promotions
    median = {name: statistics.median(values) for name, values in rates.items()}
    bound = 1 / (1 / median["champion"] + 1 / median["challenger"])
    return {
        "rows": rows,
        "rounds": rounds,
        "batch_size": BATCH,
        "champion": CHAMPION,
        "challenger": CHALLENGER,
        "rates": rates,
        "median": median,
        "harmonic": bound,
        "ratio": median["both"] / bound,
        "promotions_in_last_pair_run": promotions,
    }


def run(session: BenchSession, quick: bool) -> dict[str, Any]:
    return measure(rows=20_000 if quick else 60_000, rounds=3 if quick else 5)


def summary(result: dict[str, Any]) -> list[SummaryRow]:
    return [
        SummaryRow(
            f"champion {result['champion']} + challenger {result['challenger']} (in memory)",
            f"{fmt_int(result['median']['both'])} rec/s = {result['ratio']:.2f} of "
            f"1/(1/r1+1/r2) = {fmt_int(result['harmonic'])}",
            f">= {TARGET_RATIO}",
            result["ratio"] >= TARGET_RATIO,
        )
    ]


def render(result: dict[str, Any]) -> str:
    m = result["median"]
    rows = [
        [f"champion alone ({result['champion']})", fmt_int(m["champion"])],
        [f"challenger alone ({result['challenger']})", fmt_int(m["challenger"])],
        ["1 / (1/r_champion + 1/r_challenger)", fmt_int(result["harmonic"])],
        ["both (ChampionChallenger.learn)", f"**{fmt_int(m['both'])}**"],
    ]
    met = result["ratio"] >= TARGET_RATIO
    return "\n".join(
        [
            f"{fmt_int(result['rows'])} SUSY-shaped records in batches of "
            f"{result['batch_size']}, {result['rounds']} alternating rounds, medians; "
            "test-then-train in this process (no Kafka, no HTTP).",
            "",
            table(["", "records/s"], rows),
            "",
            f"Both together: **{result['ratio']:.2f}** of the harmonic combination "
            f"(target >= {TARGET_RATIO}: **{'met' if met else 'not met'}**).",
        ]
    )
