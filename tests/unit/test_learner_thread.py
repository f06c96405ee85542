"""The learner thread learns a hand-off of several mini-batches exactly as it would learn each
mini-batch on its own, in order: test-then-train per mini-batch of up to BATCH_SIZE rows."""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

import numpy as np
import pytest

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


def test_drifts_in_a_hand_off_learned_in_one_call_are_placed_at_their_mini_batch() -> None:
    """One compiled call learns the hand-off; the detector still sees each mini-batch's loss
    at its own position in the stream, so a drift is found where it would be one by one."""
    settings = Settings(batch_size=32, seed=5)
    x, y = synthetic_susy(12_000, seed=3)
    x, y = x.astype(np.float32), y.astype(np.float32)
    y[6_000:] = 1 - y[6_000:]  # the concept flips half way

    thread = LearnerThread(settings, SnapshotHolder(), DriftResponse("alert", 0.5))
    thread._start(None, 0)
    try:
        for begin in range(0, len(y), 1024):
            thread._learn(DecodedBatch(x[begin : begin + 1024], y[begin : begin + 1024]))
        in_one_call = [e for e in thread.learner.history.events if e["kind"] == "drift"]
    finally:
        thread.stop()

    reference = LearnerThread(settings, SnapshotHolder(), DriftResponse("alert", 0.5))
    reference._start(None, 0)
    try:
        learner, drift = reference.learner, reference.drift
        for begin in range(0, len(y), 32):
            result = learner.learn(x[begin : begin + 32], y[begin : begin + 32])
            drift.observe(learner, result.prequential_loss, result.samples)
        one_by_one = [e for e in learner.history.events if e["kind"] == "drift"]
    finally:
        reference.stop()

    def placed(events: list[dict[str, object]]) -> list[dict[str, object]]:
        return [{k: v for k, v in e.items() if k != "time"} for e in events]

    assert in_one_call, "the flip must be detected"
    assert placed(in_one_call) == placed(one_by_one)
    assert any(e["onset"] % 1024 for e in in_one_call)  # inside a hand-off


def test_a_live_streams_update_is_served_once_nothing_is_queued() -> None:
    """Within SNAPSHOT_INTERVAL_S of the last snapshot, a hand-off's update waits for the next
    one while others are queued (a backlog), and is served at once when none is (live)."""
    settings = Settings(batch_size=64, seed=5, snapshot_interval_s=3600)
    holder = SnapshotHolder()
    thread = LearnerThread(settings, holder, DriftResponse("alert", 10.0))
    x, y = synthetic_susy(3 * 256, seed=3)
    x, y = x.astype(np.float32), y.astype(np.float32)
    published: list[int] = []
    publish = holder.publish

    def recording(snapshot: Any) -> None:
        published.append(snapshot.samples_trained)
        publish(snapshot)

    holder.publish = recording  # type: ignore[method-assign]

    async def scenario() -> None:
        await thread.start(None, 0)  # the first snapshot: 0 samples
        await thread.learn(DecodedBatch(x[:256], y[:256]))  # live: nothing else queued
        # A backlog: two hand-offs queued together, the first one's update waits.
        await asyncio.gather(
            thread.learn(DecodedBatch(x[256:512], y[256:512])),
            thread.learn(DecodedBatch(x[512:], y[512:])),
        )

    try:
        asyncio.run(scenario())
    finally:
        thread.stop()
    assert published == [0, 256, 768]
    assert holder.current is not None and holder.current.samples_trained == 768


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="nice is per thread on Linux")
def test_the_learner_thread_runs_at_the_nice_it_is_given() -> None:
    """The trainer passes the nice `serve` decided on; 0 (no workers) leaves the thread as is."""
    here = os.getpriority(os.PRIO_PROCESS, 0)
    seen = {}
    for nice in (0, 7):
        thread = LearnerThread(
            Settings(), SnapshotHolder(), DriftResponse("alert", 10.0), None, nice
        )
        try:
            seen[nice] = asyncio.run(thread._run(os.getpriority, os.PRIO_PROCESS, 0))
        finally:
            thread.stop()
    assert seen == {0: here, 7: max(7, here)}
    assert os.getpriority(os.PRIO_PROCESS, 0) == here
