"""Save the iris example's model as a `.keras` file (what `STREAMFIT_MODEL=iris.keras` loads).

python examples/iris_multiclass/save_model.py --output iris.keras
"""

from __future__ import annotations

import argparse
from pathlib import Path

import keras

from examples.iris_multiclass.model import CLASSES, FEATURES, build


def save(path: Path | str, seed: int = 0) -> Path:
    """Build the (untrained, uncompiled) model with seeded weights and save it to `path`."""
    keras.utils.set_random_seed(seed)
    model = build(num_features=len(FEATURES), task="multiclass", num_classes=len(CLASSES))
    path = Path(path)
    model.save(path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="iris.keras")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(f"saved {save(args.output, args.seed)}")


if __name__ == "__main__":
    main()
