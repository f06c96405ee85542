"""`python -m bench.serving_paths`: the forward pass of each serving path, in one process.

The NumPy fast path (the built-in MLP, Dense-only) against the Keras path (a functional model
with named inputs, a StringLookup, a Discretization and a Normalization inside), for one
instance and for 64, as `ModelSnapshot.predict` runs them on a request: median and p99 of
2,000 calls each, after a warm-up. The ratio is the Keras path's time over the NumPy path's
measured in the same run. HTTP and request parsing are not included (see `latency`).
"""

from __future__ import annotations

import time

import numpy as np

CALLS = 2000


def _time(fn, calls: int = CALLS) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    for _ in range(50):
        fn()
    samples = []
    for _ in range(calls):
        started = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - started)
    ms = np.array(samples) * 1e3
    return float(np.median(ms)), float(np.percentile(ms, 99))


def main() -> None:
    from service.serving.snapshot import snapshot_from_learner
    from service.settings import Settings
    from service.training.learner import builtin_learner, learner_for
    from tests.user_models import COUNTRIES

    dense = snapshot_from_learner(builtin_learner(18), version=1)
    general_learner = learner_for(
        Settings(model="tests.user_models:payments", message_format="json")
    )
    general = snapshot_from_learner(general_learner, version=1)
    rng = np.random.default_rng(0)
    rows = {}
    for n in (1, 64):
        rows[n] = (
            rng.standard_normal((n, 18)).astype(np.float32),
            {
                "amount": rng.gamma(2.0, 25.0, (n, 1)).astype(np.float32),
                "country": rng.choice(COUNTRIES, (n, 1)).astype(object),
                "hour": rng.integers(0, 24, (n, 1)).astype(np.float32),
            },
        )
    print(
        "| instances | NumPy path (MLP) median / p99 ms "
        "| Keras path (StringLookup model) median / p99 ms | ratio of medians |"
    )
    print("| --- | --- | --- | --- |")
    for n, (x, columns) in rows.items():
        d_med, d_p99 = _time(lambda x=x: dense.predict(x))
        g_med, g_p99 = _time(lambda c=columns: general.predict(c))
        print(
            f"| {n} | {d_med:.3f} / {d_p99:.3f} | {g_med:.3f} / {g_p99:.3f} | {g_med / d_med:.1f} |"
        )


if __name__ == "__main__":
    main()
