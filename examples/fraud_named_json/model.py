"""The fraud example's model: named inputs `amount`, `country` and `hour`, one sigmoid output.

`STREAMFIT_MODEL=examples.fraud_named_json.model:build`: streamfit calls `build` with the
task's shape; the model's input names are the features (records are read by name), and all
preprocessing lives inside the model, with fixed vocabularies and bins, so every serving
path and every checkpoint carries it:

- `amount` (float): standardized with fixed statistics, and bucketed (Discretization);
- `country` (string): StringLookup over a fixed vocabulary, one-hot, unknown countries share
  one out-of-vocabulary slot;
- `hour` (float, 0-24): bucketed into night, morning, afternoon, evening.

It is compiled (Adam at 0.01, binary cross-entropy on probabilities), so streamfit trains it
with that optimizer and loss.
"""

from __future__ import annotations

from typing import Any

import keras

COUNTRIES = ["US", "GB", "FR", "DE", "BR", "NG", "IN", "CN"]
AMOUNT_BINS = [10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0]
HOUR_BINS = [6.0, 12.0, 18.0]
# Roughly the generator's amount distribution (make_data.py): mean and variance.
AMOUNT_MEAN, AMOUNT_VARIANCE = 55.0, 80.0**2


def build(
    num_features: int = 3, task: str = "binary", num_classes: int = 1, **_: Any
) -> keras.Model:
    """A binary classifier of named records (`num_features` is unused: the inputs name them)."""
    if task != "binary":
        raise ValueError(f"the fraud model is binary, not {task}: set STREAMFIT_TASK=binary")
    amount = keras.Input(shape=(1,), name="amount", dtype="float32")
    country = keras.Input(shape=(1,), name="country", dtype="string")
    hour = keras.Input(shape=(1,), name="hour", dtype="float32")

    scaled = keras.layers.Normalization(mean=AMOUNT_MEAN, variance=AMOUNT_VARIANCE)(amount)
    amount_bin = keras.layers.Discretization(bin_boundaries=AMOUNT_BINS)(amount)
    amount_onehot = keras.layers.CategoryEncoding(
        num_tokens=len(AMOUNT_BINS) + 1, output_mode="one_hot"
    )(amount_bin)
    country_onehot = keras.layers.StringLookup(
        vocabulary=COUNTRIES, num_oov_indices=1, output_mode="one_hot"
    )(country)
    hour_bin = keras.layers.Discretization(bin_boundaries=HOUR_BINS)(hour)
    hour_onehot = keras.layers.CategoryEncoding(
        num_tokens=len(HOUR_BINS) + 1, output_mode="one_hot"
    )(hour_bin)

    joined = keras.layers.Concatenate()([scaled, amount_onehot, country_onehot, hour_onehot])
    hidden = keras.layers.Dense(16, activation="relu")(joined)
    probability = keras.layers.Dense(1, activation="sigmoid")(hidden)
    model = keras.Model(
        inputs={"amount": amount, "country": country, "hour": hour},
        outputs=probability,
        name="fraud",
    )
    # Compiled: streamfit trains with this optimizer and loss (not Adam(LEARNING_RATE) and
    # its own log-loss). A larger step than the default 0.001 learns the rare class sooner.
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=0.01), loss="binary_crossentropy")
    return model
