"""Write scikit-learn's iris data set as a CSV file with a header, species by name.

The 150 flowers are repeated `--repeat` times, each pass shuffled (seeded), to make a stream
long enough to watch the prequential metrics move; records are seen again, so prequential
accuracy here is not a held-out measure.

    python examples/iris_multiclass/make_data.py --repeat 20 --output iris.csv
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
from sklearn.datasets import load_iris

FEATURES = ("sepal_length", "sepal_width", "petal_length", "petal_width")
CLASSES = ("setosa", "versicolor", "virginica")


def rows(repeat: int = 20, seed: int = 3) -> list[list[object]]:
    """The iris flowers `repeat` times, each pass in a seeded random order, species last."""
    data = load_iris()
    rng = np.random.default_rng(seed)
    out: list[list[object]] = []
    for _ in range(repeat):
        for i in rng.permutation(len(data.target)):
            out.append([*(float(v) for v in data.data[i]), CLASSES[int(data.target[i])]])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--output", default="iris.csv")
    args = parser.parse_args()
    written = rows(args.repeat, args.seed)
    with Path(args.output).open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([*FEATURES, "species"])
        writer.writerows(written)
    print(f"wrote {len(written)} flowers to {args.output}")


if __name__ == "__main__":
    main()
