"""Users' models for the tests: factories as `STREAMFIT_MODEL=tests.user_models:<name>` calls
them (keyword arguments num_features, task, num_classes), and a `.keras` file writer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

COUNTRIES = ["FR", "DE", "US", "GB"]


def payments(num_features: int, task: str, num_classes: int) -> Any:
    """A functional model with named inputs, a string feature and preprocessing layers inside:
    `amount` (Normalization), `country` (StringLookup and Hashing), `hour` (Discretization).
    Uncompiled: the service gives it Adam and the task's loss."""
    import keras

    amount = keras.Input((1,), name="amount")
    country = keras.Input((1,), name="country", dtype="string")
    hour = keras.Input((1,), name="hour")
    parts = [
        keras.layers.Normalization(mean=50.0, variance=900.0)(amount),
        keras.layers.StringLookup(vocabulary=COUNTRIES, output_mode="one_hot")(country),
        keras.layers.Hashing(8, output_mode="one_hot")(country),
        keras.layers.CategoryEncoding(4, output_mode="one_hot")(
            keras.layers.Discretization(bin_boundaries=[6.0, 12.0, 18.0])(hour)
        ),
    ]
    hidden = keras.layers.Dense(16, activation="relu")(keras.layers.Concatenate()(parts))
    head = "sigmoid" if task == "binary" else "softmax"
    out = keras.layers.Dense(1 if task == "binary" else num_classes, activation=head)(hidden)
    return keras.Model({"amount": amount, "country": country, "hour": hour}, out)


def wrong_width(num_features: int, task: str, num_classes: int) -> Any:
    """Two outputs: fits no binary task."""
    import keras

    return keras.Sequential([keras.Input((num_features,)), keras.layers.Dense(2)])


def save_iris_model(path: Path, num_features: int = 4, classes: int = 3) -> Path:
    """A compiled softmax network saved as a `.keras` file (its own optimizer and loss)."""
    import keras

    keras.utils.set_random_seed(1)
    model = keras.Sequential(
        [
            keras.Input((num_features,)),
            keras.layers.Dense(32, activation="relu"),
            keras.layers.Dense(classes, activation="softmax"),
        ]
    )
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy")
    model.save(path)
    return path


def columns(num_features: int, task: str, num_classes: int) -> Any:
    """Named numeric inputs f0..f{F-1} (one [n, 1] input each): the Keras serving path."""
    import keras

    inputs = {f"f{i}": keras.Input((1,), name=f"f{i}") for i in range(num_features)}
    hidden = keras.layers.Dense(16, activation="relu")(
        keras.layers.Concatenate()(list(inputs.values()))
    )
    head = {"binary": "sigmoid", "multiclass": "softmax"}.get(task, "linear")
    return keras.Model(inputs, keras.layers.Dense(num_classes, activation=head)(hidden))


def save_compiled(path: Path, num_features: int, task: str, outputs: int) -> Path:
    """A compiled Sequential model for `task` saved as a `.keras` file."""
    import keras

    keras.utils.set_random_seed(2)
    head = {"binary": "sigmoid", "multiclass": "softmax"}.get(task, "linear")
    loss = {
        "binary": "binary_crossentropy",
        "multiclass": "sparse_categorical_crossentropy",
    }.get(task, "mean_squared_error")
    model = keras.Sequential(
        [
            keras.Input((num_features,)),
            keras.layers.Dense(16, activation="relu"),
            keras.layers.Dense(outputs, activation=head),
        ]
    )
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss=loss)
    model.save(path)
    return path
