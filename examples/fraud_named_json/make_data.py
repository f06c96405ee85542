"""Write the fraud example's transactions as a CSV file with a header (deterministic).

Columns: amount, country, hour, is_fraud. Fraud is likelier for large amounts, for some
countries and at night; a few transactions come from a country the model's vocabulary does
not know (`XX`), which its out-of-vocabulary slot takes.

    python examples/fraud_named_json/make_data.py --rows 20000 --output fraud.csv
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np

COUNTRIES = ["US", "GB", "FR", "DE", "BR", "NG", "IN", "CN", "XX"]
SHARE = [0.35, 0.12, 0.1, 0.1, 0.08, 0.05, 0.1, 0.08, 0.02]
RISK = [0.0, -0.3, -0.2, -0.4, 0.8, 1.5, 0.5, 0.7, 2.0]


def transactions(rows: int, seed: int = 7) -> list[tuple[float, str, float, int]]:
    """`rows` transactions (amount, country, hour, is_fraud) from a seeded generator."""
    rng = np.random.default_rng(seed)
    amount = np.round(rng.lognormal(mean=3.5, sigma=1.0, size=rows), 2)
    country = rng.choice(len(COUNTRIES), size=rows, p=SHARE)
    hour = np.round(rng.uniform(0.0, 24.0, size=rows), 2)
    logit = (
        -3.2
        + 1.6 * (np.log(amount) - 3.5)
        + np.asarray(RISK)[country]
        + np.where(hour < 6.0, 1.8, 0.0)
    )
    fraud = rng.random(rows) < 1.0 / (1.0 + np.exp(-logit))
    return [
        (float(a), COUNTRIES[c], float(h), int(f))
        for a, c, h, f in zip(amount, country, hour, fraud, strict=True)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--output", default="fraud.csv")
    args = parser.parse_args()
    with Path(args.output).open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["amount", "country", "hour", "is_fraud"])
        writer.writerows(transactions(args.rows, args.seed))
    print(f"wrote {args.rows} transactions to {args.output}")


if __name__ == "__main__":
    main()
