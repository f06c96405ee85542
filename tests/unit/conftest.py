"""Unit-test helpers: fake Kafka records and an environment free of STREAMFIT_ settings."""

from __future__ import annotations

import os
from types import SimpleNamespace
from typing import Any

import pytest


def make_record(
    value: bytes | None,
    key: bytes | None = b"1",
    offset: int = 0,
    topic: str = "t",
    partition: int = 0,
) -> Any:
    """What the codec reads of an aiokafka ConsumerRecord."""
    return SimpleNamespace(topic=topic, partition=partition, offset=offset, key=key, value=value)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """Remove every STREAMFIT_* variable so settings see only what a test sets."""
    for name in list(os.environ):
        if name.startswith("STREAMFIT_"):
            monkeypatch.delenv(name)
    return monkeypatch


def servable_state(num_features: int = 18, seed: int = 0, samples: int = 1000) -> dict[str, Any]:
    """A checkpoint state that serves without TensorFlow: one hidden Dense layer, a sigmoid."""
    import numpy as np

    rng = np.random.default_rng(seed)
    weights = [
        rng.standard_normal((num_features, 4)).astype(np.float32),
        np.zeros(4, np.float32),
        rng.standard_normal((4, 1)).astype(np.float32),
        np.zeros(1, np.float32),
    ]
    return {
        "weights": weights,
        "optimizer": [np.array(1, dtype=np.int64)],
        "standardizer": {
            "count": samples,
            "mean": np.zeros(num_features),
            "m2": np.full(num_features, float(samples)),
        },
        "samples_trained": samples,
        "batches_trained": samples // 100,
        "prequential": [[samples, samples * 0.75, samples * 0.5]],
        "history": {"every": 1000, "points": [], "events": []},
        "last_loss": 0.5,
        "num_features": num_features,
        "arch": "mlp",
        "activations": ["relu", "sigmoid"],
    }
