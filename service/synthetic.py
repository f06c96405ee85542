"""Synthetic SUSY-shaped data: 8 "low-level" and 10 "high-level" features and a 0/1 label.

The label depends on products, squares and a phase of the low-level features, so no linear
boundary separates it well, while the high-level features carry some of that structure, as in
SUSY. A linear model stays well below the default MLP (measured in tests/unit/test_synthetic.py).
"""

from __future__ import annotations

import numpy as np

LOW_LEVEL = 8
HIGH_LEVEL = 10
WIDTH = LOW_LEVEL + HIGH_LEVEL


def synthetic_susy(
    rows: int, seed: int = 0, num_features: int = WIDTH, start: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Return (features float32 [rows, num_features], labels int8 [rows]).

    `start` offsets the generator so that consecutive chunks of one stream differ; the same
    (seed, start, rows) always gives the same data. Widths other than 18 repeat or trim the
    18 SUSY-shaped columns, with extra columns being noisy copies.
    """
    rng = np.random.default_rng([seed, start])
    z = rng.standard_normal((rows, LOW_LEVEL))
    score = (
        1.4 * z[:, 0] * z[:, 1]
        + 1.2 * np.sin(2.0 * z[:, 2])
        + 0.9 * (z[:, 3] ** 2 - 1.0)
        - 0.8 * z[:, 4] * z[:, 5]
        + 0.45 * z[:, 6]
        + 0.3 * np.cos(z[:, 7] * 3.0)
    )
    labels = (score + 0.6 * rng.standard_normal(rows) > 0.0).astype(np.int8)
    # Low-level columns look like detector quantities: momenta positive and skewed,
    # angles bounded; the mapping is monotone so no information is lost.
    low = np.empty_like(z)
    low[:, 0] = np.exp(0.5 * z[:, 0]) * 40.0
    low[:, 1] = np.tanh(z[:, 1]) * 2.5
    low[:, 2] = z[:, 2]
    low[:, 3] = np.exp(0.4 * z[:, 3]) * 30.0
    low[:, 4] = z[:, 4] * 1.2
    low[:, 5] = z[:, 5]
    low[:, 6] = np.exp(0.3 * z[:, 6]) * 25.0
    low[:, 7] = z[:, 7]
    noise = rng.standard_normal((rows, HIGH_LEVEL))
    high = np.stack(
        [
            z[:, 0] * z[:, 1] + 1.2 * noise[:, 0],
            np.abs(z[:, 3]) + 0.8 * noise[:, 1],
            z[:, 0] + z[:, 1] + 0.5 * noise[:, 2],
            np.sin(2.0 * z[:, 2]) + 1.0 * noise[:, 3],
            z[:, 4] - z[:, 5] + 0.5 * noise[:, 4],
            np.hypot(z[:, 0], z[:, 3]) + 0.5 * noise[:, 5],
            z[:, 6] + 0.7 * noise[:, 6],
            np.abs(z[:, 4] + z[:, 5]) + 0.5 * noise[:, 7],
            z[:, 2] * z[:, 7] + 0.5 * noise[:, 8],
            noise[:, 9],
        ],
        axis=1,
    )
    base = np.concatenate([low, high], axis=1)
    if num_features == WIDTH:
        return base.astype(np.float32), labels
    reps = -(-num_features // WIDTH)
    wide = np.tile(base, (1, reps))[:, :num_features]
    if num_features > WIDTH:
        wide[:, WIDTH:] += 0.1 * rng.standard_normal((rows, num_features - WIDTH))
    return wide.astype(np.float32), labels
