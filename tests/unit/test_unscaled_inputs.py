"""Raw, unscaled features train as well as pre-scaled ones (online standardization)."""

from __future__ import annotations

import numpy as np

from service.synthetic import synthetic_susy
from service.training.learner import builtin_learner


def _prequential_accuracy(x: np.ndarray, y: np.ndarray) -> float:
    learner = builtin_learner(x.shape[1], "mlp", seed=3)
    for start in range(0, len(y), 256):
        learner.learn(x[start : start + 256], y[start : start + 256].astype(np.float32))
    accuracy = learner.prequential.accuracy
    assert accuracy is not None
    return accuracy


def test_features_in_the_thousands_train_like_standardized_ones():
    x, y = synthetic_susy(25_000, seed=21)
    scaled = (x - x.mean(axis=0)) / x.std(axis=0)
    rng = np.random.default_rng(0)
    scales = 10.0 ** rng.integers(0, 5, size=x.shape[1])  # 1 .. 10,000 per column
    offsets = rng.uniform(-5e4, 5e4, size=x.shape[1])
    raw = (scaled * scales + offsets).astype(np.float32)

    on_scaled = _prequential_accuracy(scaled.astype(np.float32), y)
    on_raw = _prequential_accuracy(raw, y)
    assert on_scaled > 0.74
    assert abs(on_raw - on_scaled) < 0.02, (on_raw, on_scaled)
