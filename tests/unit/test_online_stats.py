"""Online statistics: the running standardizer against NumPy, and the prequential window."""

from __future__ import annotations

import json

import numpy as np
import pytest

from service.online_stats import EPSILON, PrequentialWindow, RunningStandardizer


def _random_batches(rng: np.random.Generator, width: int) -> list[np.ndarray]:
    """Batches of very different sizes (1 included) over features of very different scales."""
    sizes = [1, 1, 7, 256, 1, 0, 33, 2, 500, 1, 64, 3, 1000, 1]
    scale = np.array([1.0, 1e-3, 1e4, 1.0, 50.0, 1.0])[:width]
    offset = np.array([0.0, 5.0, 0.0, 1e4, -3e4, 1e6])[:width]
    return [offset + scale * rng.standard_normal((n, width)) for n in sizes]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_standardizer_equals_numpy_over_the_concatenation(dtype: type) -> None:
    rng = np.random.default_rng(0)
    batches = [b.astype(dtype) for b in _random_batches(rng, 6)]
    standardizer = RunningStandardizer(6)
    for batch in batches:
        standardizer.update(batch)

    everything = np.concatenate(batches).astype(np.float64)
    assert standardizer.count == everything.shape[0]
    np.testing.assert_allclose(standardizer.mean, everything.mean(axis=0), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(standardizer.std(), everything.std(axis=0), rtol=1e-9)
    expected = ((everything - everything.mean(axis=0)) / everything.std(axis=0)).astype(np.float32)
    transformed = standardizer.transform(everything)
    assert transformed.dtype == np.float32
    np.testing.assert_allclose(transformed, expected, rtol=1e-5, atol=1e-5)


def test_standardizer_one_row_at_a_time_equals_numpy() -> None:
    rng = np.random.default_rng(1)
    rows = 1e4 + rng.standard_normal((300, 3))
    standardizer = RunningStandardizer(3)
    for row in rows:
        standardizer.update(row[None, :])
    np.testing.assert_allclose(standardizer.mean, rows.mean(axis=0), rtol=1e-13)
    np.testing.assert_allclose(standardizer.std(), rows.std(axis=0), rtol=1e-8)


def test_standardizer_before_two_samples_and_for_constant_features() -> None:
    standardizer = RunningStandardizer(2)
    np.testing.assert_array_equal(standardizer.std(), [1.0, 1.0])
    standardizer.update(np.array([[3.0, 4.0]]))
    np.testing.assert_array_equal(standardizer.mean, [3.0, 4.0])
    np.testing.assert_array_equal(standardizer.std(), [1.0, 1.0])  # one sample: no spread yet
    standardizer.update(np.array([[3.0, 6.0], [3.0, 8.0]]))
    # A constant feature keeps std 1 (no division by zero); the other is the population std.
    np.testing.assert_allclose(standardizer.std(), [1.0, np.std([4.0, 6.0, 8.0])])
    assert np.isfinite(standardizer.transform(np.array([[3.0, 6.0]]))).all()


def test_standardizer_ignores_empty_batches() -> None:
    standardizer = RunningStandardizer(2)
    standardizer.update(np.array([[1.0, 2.0], [3.0, 6.0]]))
    before = standardizer.state()
    standardizer.update(np.empty((0, 2)))
    after = standardizer.state()
    assert after["count"] == before["count"] == 2
    np.testing.assert_array_equal(after["mean"], before["mean"])
    np.testing.assert_array_equal(after["m2"], before["m2"])


def test_standardizer_state_round_trip_and_independence() -> None:
    rng = np.random.default_rng(2)
    batches = _random_batches(rng, 4)
    original = RunningStandardizer(4)
    for batch in batches[:6]:
        original.update(batch)
    state = original.state()

    # Through JSON-like values too (lists, plain ints), as a checkpoint may hold them.
    as_lists = json.loads(
        json.dumps({k: v.tolist() if isinstance(v, np.ndarray) else v for k, v in state.items()})
    )
    for source in (state, as_lists):
        restored = RunningStandardizer.from_state(source)
        assert restored.count == original.count
        np.testing.assert_array_equal(restored.mean, original.mean)
        np.testing.assert_array_equal(restored.m2, original.m2)
        np.testing.assert_array_equal(restored.std(), original.std())

    restored = RunningStandardizer.from_state(state)
    for batch in batches[6:]:
        original.update(batch)
        restored.update(batch)
    np.testing.assert_array_equal(restored.mean, original.mean)
    np.testing.assert_array_equal(restored.m2, original.m2)
    assert restored.count == original.count

    # state() is a copy: later updates do not change a state already taken.
    frozen = original.state()
    mean_copy = frozen["mean"].copy()
    original.update(rng.standard_normal((10, 4)) + 100.0)
    np.testing.assert_array_equal(frozen["mean"], mean_copy)


def _window_expected(
    batches: list[tuple[np.ndarray, np.ndarray]], window: int
) -> tuple[float, float, int]:
    """Accuracy, loss, count over the newest batches that first cover `window` samples."""
    kept: list[tuple[np.ndarray, np.ndarray]] = []
    for p, y in reversed(batches):
        kept.append((p, y))
        if sum(len(k[1]) for k in kept) >= window:
            break
    p = np.clip(np.concatenate([k[0] for k in kept]).astype(np.float64), EPSILON, 1 - EPSILON)
    y = np.concatenate([k[1] for k in kept]).astype(np.float64)
    accuracy = float(((p >= 0.5) == (y >= 0.5)).mean())
    loss = float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean())
    return accuracy, loss, len(y)


def test_prequential_window_empty() -> None:
    window = PrequentialWindow(10)
    assert window.accuracy is None and window.loss is None
    window.add(np.empty(0), np.empty(0))
    assert window.accuracy is None and window.state() == []


def test_prequential_window_matches_numpy_and_drops_old_batches() -> None:
    rng = np.random.default_rng(3)
    window = PrequentialWindow(window=100)
    added: list[tuple[np.ndarray, np.ndarray]] = []
    for size in [1, 30, 7, 64, 1, 50, 20, 3, 90, 2, 40]:
        p = rng.random(size).astype(np.float32)
        y = rng.integers(0, 2, size).astype(np.float32)
        window.add(p, y)
        added.append((p, y))
        accuracy, loss, count = _window_expected(added, 100)
        assert window.accuracy == pytest.approx(accuracy, rel=1e-9)
        assert window.loss == pytest.approx(loss, rel=1e-9)
        assert sum(int(b[0]) for b in window.state()) == count


def test_prequential_window_forgets_an_early_bad_period() -> None:
    window = PrequentialWindow(window=50)
    wrong = np.zeros(25)  # predicts 0 for label 1
    window.add(wrong, np.ones(25))
    window.add(wrong, np.ones(25))
    assert window.accuracy == 0.0
    for _ in range(3):
        window.add(np.full(25, 0.9), np.ones(25))
    assert window.accuracy == 1.0
    assert window.loss == pytest.approx(-np.log(0.9))


def test_prequential_loss_is_clipped() -> None:
    window = PrequentialWindow(10)
    window.add(np.array([0.0, 1.0]), np.array([1.0, 0.0]))
    assert window.accuracy == 0.0
    assert window.loss == pytest.approx(-np.log(EPSILON), rel=1e-6)


def test_prequential_state_restore_round_trip() -> None:
    rng = np.random.default_rng(4)
    original = PrequentialWindow(window=60)
    for size in [10, 25, 5, 40, 12]:
        original.add(rng.random(size), rng.integers(0, 2, size).astype(np.float64))
    state = json.loads(json.dumps(original.state()))  # as it travels in a checkpoint

    restored = PrequentialWindow(window=60)
    restored.add(np.ones(7), np.zeros(7))  # restore replaces, not merges
    restored.restore(state)
    assert restored.state() == original.state()
    assert restored.accuracy == pytest.approx(original.accuracy)
    assert restored.loss == pytest.approx(original.loss)

    more_p, more_y = rng.random(30), rng.integers(0, 2, 30).astype(np.float64)
    original.add(more_p, more_y)
    restored.add(more_p, more_y)
    assert restored.accuracy == pytest.approx(original.accuracy)
    assert restored.loss == pytest.approx(original.loss)
    assert len(restored.state()) == len(original.state())
