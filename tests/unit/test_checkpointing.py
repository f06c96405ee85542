"""The checkpoint sequence without Kafka: settle, take the learner's state, copy the positions,
write atomically, then serve the new version; a failed write changes nothing but the error.
A real Learner on its worker thread, real checkpoint files."""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from aiokafka import TopicPartition

from service.checkpoints import CheckpointStore
from service.codec import Codec
from service.export import Exporter, target_for
from service.serving.snapshot import SnapshotHolder
from service.settings import Settings
from service.synthetic import synthetic_susy
from service.training.checkpointing import Checkpointer
from service.training.drift_response import DriftResponse
from service.training.learner_thread import LearnerThread
from service.training.offsets import PartitionOffsets
from service.training.pipeline import LearnPipeline
from service.training.promotion import Promotion
from service.training.status import TrainerStatus

TP = TopicPartition("t", 0)


class Parts:
    """The trainer's collaborators, wired as the trainer wires them."""

    def __init__(self, directory: Path) -> None:
        settings = Settings(checkpoint_dir=directory, snapshot_interval_s=0)
        self.snapshots = SnapshotHolder()
        self.offsets = PartitionOffsets()
        self.status = TrainerStatus()
        self.learner = LearnerThread(settings, self.snapshots, DriftResponse("none", 10.0))
        self.pipeline = LearnPipeline(Codec(18), self.learner, self.offsets)
        self.store = CheckpointStore(directory)
        self.served = SnapshotHolder()
        self.served.follow(self.snapshots)
        self.checkpointer = Checkpointer(
            self.store,
            self.offsets,
            self.learner,
            self.pipeline,
            Promotion(settings, self.store, self.snapshots, self.served),
            self.status,
            "g",
            interval_s=3600,
        )

    async def feed(self, start: int, rows: int) -> None:
        """Decode and queue `rows` records of partition 0 from offset `start` (not settled)."""
        x, y = synthetic_susy(rows, seed=start)
        records = [
            SimpleNamespace(
                topic="t",
                partition=0,
                offset=start + i,
                timestamp=1000 + i,
                key=b"1" if label else b"0",
                value=",".join(map(str, row)).encode(),
            )
            for i, (row, label) in enumerate(zip(x.tolist(), y.tolist(), strict=True))
        ]
        batches = {TP: records}
        decoded, used = await self.pipeline.decode(batches)
        await self.pipeline.submit(batches, decoded, used, NoDeadLetters())

    def close(self) -> None:
        self.learner.stop()
        self.pipeline.stop()
        self.checkpointer.stop()


class NoDeadLetters:
    async def write(self, rejects) -> None:
        assert not rejects


@pytest.fixture
def parts(tmp_path: Path):
    made = Parts(tmp_path / "checkpoints")
    yield made
    made.close()


def test_checkpoint_settles_batches_in_flight_and_holds_their_offsets(parts: Parts) -> None:
    async def scenario() -> None:
        parts.checkpointer.restore()
        await parts.learner.start(None, parts.checkpointer.version)
        await parts.feed(0, 256)
        await parts.feed(256, 100)  # two batches in flight, none settled yet
        assert parts.offsets.position(TP) is None
        written = await parts.checkpointer.checkpoint()
        assert written is not None and written.version == 1
        assert written.offsets == {"t:0": 356}
        assert written.state["samples_trained"] == 356, "the state holds exactly those records"
        assert parts.snapshots.version == 1 and parts.checkpointer.info()["version"] == 1
        assert await parts.checkpointer.checkpoint() is None, "nothing new: no new version"

    asyncio.run(scenario())
    reloaded = parts.store.latest()
    assert reloaded is not None and reloaded.offsets == {"t:0": 356}


def test_a_failed_write_leaves_the_version_and_keeps_the_change_pending(
    parts: Parts, monkeypatch
) -> None:
    async def scenario() -> None:
        parts.checkpointer.restore()
        await parts.learner.start(None, 0)
        await parts.feed(0, 64)

        def disk_full(checkpoint, serving=None) -> None:
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(parts.store, "save", disk_full)
        assert await parts.checkpointer.checkpoint() is None
        assert parts.checkpointer.version == 0 and parts.snapshots.version == 0
        assert parts.status.last_error.startswith("checkpoint failed")
        assert parts.offsets.changed_since_checkpoint, "retried at the next interval"
        monkeypatch.undo()
        written = await parts.checkpointer.checkpoint()
        assert written is not None and written.version == 1 and written.offsets == {"t:0": 64}
        assert parts.status.last_error is None

    asyncio.run(scenario())


def test_rollback_serves_the_old_model_as_a_new_version(parts: Parts) -> None:
    async def scenario() -> None:
        parts.checkpointer.restore()
        await parts.learner.start(None, 0)
        await parts.feed(0, 256)
        first = await parts.checkpointer.checkpoint()
        await parts.feed(256, 256)
        await parts.checkpointer.checkpoint()
        assert first is not None
        rolled = await parts.checkpointer.rollback(first.version)
        assert rolled is not None and rolled.version == 3
        assert rolled.state["samples_trained"] == 256, "counters are the old model's"
        assert rolled.offsets == {"t:0": 512}, "positions stay: nothing is learned again"
        for got, want in zip(rolled.state["weights"], first.state["weights"], strict=True):
            np.testing.assert_array_equal(got, want)
        from service.errors import VersionNotFound

        with pytest.raises(VersionNotFound):
            await parts.checkpointer.rollback(99)

    asyncio.run(scenario())


def test_each_checkpoint_is_handed_to_the_exporter_without_waiting_for_it(
    parts: Parts, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    exporter = Exporter(target_for(str(tmp_path / "exports" / "susy")))
    parts.checkpointer.export_with(exporter)
    writing, release = threading.Event(), threading.Event()
    real_write = exporter._writer.write

    def held_write(checkpoint, directory: Path) -> None:
        writing.set()
        assert release.wait(60)
        real_write(checkpoint, directory)

    monkeypatch.setattr(exporter._writer, "write", held_write)

    async def scenario() -> None:
        parts.checkpointer.restore()
        await parts.learner.start(None, 0)
        await parts.feed(0, 256)
        first = await parts.checkpointer.checkpoint()  # returns while its export waits
        assert await asyncio.to_thread(writing.wait, 30)
        await parts.feed(256, 64)
        second = await parts.checkpointer.checkpoint()
        assert first is not None and second is not None and second.version == 2

    asyncio.run(scenario())
    exports = tmp_path / "exports" / "susy"
    assert not [name for name in os.listdir(exports) if name.isdigit()], "none exported yet"
    release.set()
    exporter.close()
    assert sorted(os.listdir(exports)) == ["1", "2"]
