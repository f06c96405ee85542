"""Synthetic SUSY-shaped data: deterministic, balanced, and not linearly separable."""

from __future__ import annotations

import numpy as np
import pytest

from service.codec import Codec, encode_csv
from service.synthetic import WIDTH, synthetic_susy
from tests.unit.conftest import make_record


def test_same_seed_and_start_give_the_same_data() -> None:
    x1, y1 = synthetic_susy(500, seed=3, start=1000)
    x2, y2 = synthetic_susy(500, seed=3, start=1000)
    np.testing.assert_array_equal(x1, x2)
    np.testing.assert_array_equal(y1, y2)
    assert x1.dtype == np.float32 and x1.shape == (500, WIDTH)
    assert y1.dtype == np.int8 and y1.shape == (500,)
    assert set(np.unique(y1).tolist()) == {0, 1}
    assert np.isfinite(x1).all()


@pytest.mark.parametrize(
    ("a", "b"), [((0, 0), (0, 500)), ((0, 0), (1, 0))], ids=["other-start", "other-seed"]
)
def test_other_start_or_seed_gives_other_data(a: tuple[int, int], b: tuple[int, int]) -> None:
    xa, ya = synthetic_susy(500, seed=a[0], start=a[1])
    xb, yb = synthetic_susy(500, seed=b[0], start=b[1])
    assert np.isclose(xa, xb).mean() < 0.01
    assert not np.array_equal(ya, yb)


def test_class_balance() -> None:
    for seed in range(3):
        _, y = synthetic_susy(20_000, seed=seed)
        assert 0.35 <= y.mean() <= 0.65


def _prequential_accuracy(arch: str, x: np.ndarray, y: np.ndarray) -> float:
    from service.training.learner import builtin_learner

    learner = builtin_learner(WIDTH, arch, seed=0)
    for i in range(0, len(y), 256):
        learner.learn(x[i : i + 256], y[i : i + 256])
    accuracy = learner.prequential.accuracy
    assert accuracy is not None
    return accuracy


def _best_linear_accuracy(
    x: np.ndarray, y: np.ndarray, x_test: np.ndarray, y_test: np.ndarray
) -> float:
    """Held-out accuracy of a logistic regression fitted to convergence (Newton / IRLS)."""
    mean, std = x.mean(axis=0), x.std(axis=0)

    def design(rows: np.ndarray) -> np.ndarray:
        return np.hstack([(rows - mean) / std, np.ones((len(rows), 1))]).astype(np.float64)

    features, labels = design(x), y.astype(np.float64)
    weights = np.zeros(features.shape[1])
    for _ in range(30):
        p = 1.0 / (1.0 + np.exp(-features @ weights))
        gradient = features.T @ (p - labels)
        hessian = (features * (p * (1 - p))[:, None]).T @ features
        weights -= np.linalg.solve(hessian + 1e-6 * np.eye(len(weights)), gradient)
    return float(((design(x_test) @ weights > 0) == (y_test == 1)).mean())


def test_logistic_regression_clearly_loses_to_the_mlp() -> None:
    x, y = synthetic_susy(40_000, seed=0)
    linear = _prequential_accuracy("linear", x, y)
    mlp = _prequential_accuracy("mlp", x, y)
    assert mlp >= linear + 0.08, (linear, mlp)
    assert mlp > 0.7, mlp  # and the MLP really learns it
    # Not just a slow learner: even the best linear boundary stays below the online MLP.
    x_test, y_test = synthetic_susy(20_000, seed=1)
    best_linear = _best_linear_accuracy(x, y, x_test, y_test)
    assert mlp >= best_linear + 0.03, (best_linear, mlp)


@pytest.mark.parametrize("width", [1, 5, 17, 19, 36, 40])
def test_other_widths(width: int) -> None:
    x, y = synthetic_susy(300, seed=4, num_features=width)
    base_x, base_y = synthetic_susy(300, seed=4)
    assert x.shape == (300, width) and x.dtype == np.float32
    assert np.isfinite(x).all()
    np.testing.assert_array_equal(y, base_y)  # the label does not depend on the width
    shared = min(width, WIDTH)
    np.testing.assert_array_equal(x[:, :shared], base_x[:, :shared])
    # Extra columns are noisy copies of the 18: close to the original, never identical.
    for column in range(WIDTH, width):
        source = base_x[:, column % WIDTH]
        assert not np.array_equal(x[:, column], source)
        assert np.abs(x[:, column] - source).max() < 1.0
        assert np.corrcoef(x[:, column], source)[0, 1] > 0.9

    # And the rows travel through the default message format at that width.
    records = [make_record(v, key=k, offset=i) for i, (k, v) in enumerate(encode_csv(x, y))]
    batch = Codec(width).decode(records)
    assert batch.rejects == [] and len(batch) == 300
    np.testing.assert_allclose(batch.features, x, atol=1e-5, rtol=1e-6)


@pytest.mark.parametrize("width", [5, 40])
def test_learner_trains_on_other_widths(width: int) -> None:
    from service.training.learner import builtin_learner

    x, y = synthetic_susy(512, seed=5, num_features=width)
    learner = builtin_learner(width, "mlp")
    for i in range(0, 512, 256):
        result = learner.learn(x[i : i + 256], y[i : i + 256])
        assert np.isfinite(result.loss)
    assert learner.samples_trained == 512
