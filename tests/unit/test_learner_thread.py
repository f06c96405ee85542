"""The learner thread learns a hand-off of several mini-batches exactly as it would learn each
mini-batch on its own, in order: test-then-train per mini-batch of up to BATCH_SIZE rows."""

from __future__ import annotations

import numpy as np

from service.codec import DecodedBatch
from service.serving.snapshot import SnapshotHolder
from service.settings import Settings
from service.synthetic import synthetic_susy
from service.training.drift_response import DriftResponse
from service.training.learner_thread import LearnerThread


def test_a_hand_off_is_learned_as_its_mini_batches_one_after_another() -> None:
    settings = Settings(batch_size=64, seed=5)
    thread = LearnerThread(settings, SnapshotHolder(), DriftResponse("alert", 10.0))
    thread._start(None, 0)
    try:
        learner = thread.learner
        start = learner.state()
        x, y = synthetic_susy(200, seed=3)
        x, y = x.astype(np.float32), y.astype(np.float32)

        thread._learn(DecodedBatch(x, y))
        handed_off = learner.state()

        learner.restore(start)
        sizes = []
        for begin in range(0, 200, 64):
            result = learner.learn(x[begin : begin + 64], y[begin : begin + 64])
            sizes.append(result.samples)
        one_by_one = learner.state()
    finally:
        thread.stop()

    assert sizes == [64, 64, 64, 8]
    assert handed_off["batches_trained"] == one_by_one["batches_trained"] == 4
    assert handed_off["samples_trained"] == one_by_one["samples_trained"] == 200
    assert handed_off["prequential"] == one_by_one["prequential"]
    for mine, theirs in zip(handed_off["weights"], one_by_one["weights"], strict=True):
        np.testing.assert_array_equal(mine, theirs)
    for mine, theirs in zip(handed_off["optimizer"], one_by_one["optimizer"], strict=True):
        np.testing.assert_array_equal(mine, theirs)
