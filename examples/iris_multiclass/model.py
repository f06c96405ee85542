"""The iris example's model: a small Dense network ending in a softmax over the 3 species.

`save_model.py` saves it as `iris.keras`, which `STREAMFIT_MODEL=iris.keras` loads. It is a
chain of Dense layers on one [n, 4] input, so predictions take the NumPy fast path, and it is
not compiled, so streamfit trains it with Adam(STREAMFIT_LEARNING_RATE) and sparse
categorical cross-entropy on its probabilities.
"""

from __future__ import annotations

from typing import Any

import keras

FEATURES = ("sepal_length", "sepal_width", "petal_length", "petal_width")
CLASSES = ("setosa", "versicolor", "virginica")


def build(
    num_features: int = len(FEATURES),
    task: str = "multiclass",
    num_classes: int = len(CLASSES),
    **_: Any,
) -> keras.Model:
    """Dense 16 relu, Dense 16 relu, Dense `num_classes` softmax on `num_features` inputs."""
    if task != "multiclass":
        raise ValueError(f"the iris model is multiclass, not {task}: set STREAMFIT_TASK=multiclass")
    return keras.Sequential(
        [
            keras.Input((num_features,)),
            keras.layers.Dense(16, activation="relu"),
            keras.layers.Dense(16, activation="relu"),
            keras.layers.Dense(num_classes, activation="softmax"),
        ],
        name="iris",
    )
