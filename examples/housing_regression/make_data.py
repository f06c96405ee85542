"""Write scikit-learn's diabetes data set (it ships with scikit-learn: no download) as a CSV
file with a header, the target first: `streamfit produce` sends it as positional CSV records,
key = the target, value = the 10 features.

The 442 patients are repeated `--repeat` times, each pass shuffled (seeded); records are seen
again, so the prequential errors are not a held-out measure.

    python examples/housing_regression/make_data.py --repeat 30 --output diabetes.csv
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
from sklearn.datasets import load_diabetes

FEATURES = ("age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6")


def rows(repeat: int = 30, seed: int = 5) -> list[list[float]]:
    """(target, *features) rows, the data set `repeat` times, each pass in a seeded order."""
    data = load_diabetes()
    rng = np.random.default_rng(seed)
    out: list[list[float]] = []
    for _ in range(repeat):
        for i in rng.permutation(len(data.target)):
            out.append([float(data.target[i]), *(round(float(v), 6) for v in data.data[i])])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--output", default="diabetes.csv")
    args = parser.parse_args()
    written = rows(args.repeat, args.seed)
    with Path(args.output).open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["progression", *FEATURES])
        writer.writerows(written)
    print(f"wrote {len(written)} patients to {args.output}")


if __name__ == "__main__":
    main()
