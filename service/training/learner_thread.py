"""Learner thread: the one worker thread that owns the model, and everything that runs on it.

TensorFlow runs here and never on the event loop, which keeps heartbeats, HTTP and the
consumer alive while a batch trains. Each public coroutine hands one private method of this
class to the thread; those private methods are the only code that touches the `Learner`s
(the champion and, with CHALLENGER_MODEL, the challenger: `ChampionChallenger`).
The event loop may read the plain counters (`samples_trained`, the prequential window, the
history) at any time: they are replaced whole, never half-written.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from service import metrics
from service.codec import DecodedBatch
from service.serving.snapshot import SnapshotHolder, snapshot_from_learner
from service.serving.workers import lower_this_thread
from service.settings import Settings
from service.training.challenger import ChampionChallenger, Roles
from service.training.drift_response import DriftResponse

log = logging.getLogger(__name__)

T = TypeVar("T")


class LearnerThread:
    """The Learners on their own thread: restore, learn, checkpoint state, adopt (rollback).

    The champion publishes to `snapshots` (the live model), the challenger to
    `challenger_snapshots`. The thread runs at `nice` (0: as the event loop).
    """

    def __init__(
        self,
        settings: Settings,
        snapshots: SnapshotHolder,
        drift: DriftResponse,
        challenger_snapshots: SnapshotHolder | None = None,
        nice: int = 0,
    ) -> None:
        self.settings = settings
        self.snapshots = snapshots
        self.challenger_snapshots = challenger_snapshots or SnapshotHolder()
        self.drift = drift
        self.pair: ChampionChallenger | None = None  # once started
        self.nice = nice  # below the HTTP workers, where it yields to them (`yield_to_workers`)
        self._executor = ThreadPoolExecutor(
            1,
            thread_name_prefix="streamfit-learn",
            initializer=lower_this_thread,
            initargs=(self.nice,),
        )
        self._snapshot_interval_s = settings.snapshot_interval_s
        self._last_publish = 0.0
        self._unpublished = False
        # Hand-offs given to the thread (counted on the event loop) and learned (counted on the
        # learner thread): one writer each, so the learner thread can tell it has run dry.
        self._handed = 0
        self._done = 0

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    # -- on the event loop ------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self.pair is not None

    @property
    def learner(self) -> Any:
        """The champion (a service.training.learner.Learner), None until started."""
        return self.pair.champion if self.pair is not None else None

    @property
    def challenger(self) -> Any:
        """The challenger Learner (None without CHALLENGER_MODEL, or until started)."""
        return self.pair.challenger if self.pair is not None else None

    @property
    def roles(self) -> Roles | None:
        return self.pair.roles if self.pair is not None else None

    async def start(self, state: dict[str, Any] | None, version: int) -> None:
        """Build the model (TensorFlow loads here), restore `state` if any, serve it."""
        await self._run(self._start, state, version)

    def learn(self, batch: DecodedBatch) -> asyncio.Future[None]:
        """Start test-then-train of `batch`, in mini-batches of up to BATCH_SIZE rows in
        order; the future resolves once all of them are learned."""
        if not len(batch):
            done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            done.set_result(None)
            return done
        self._handed += 1
        return asyncio.get_running_loop().run_in_executor(self._executor, self._learn, batch)

    async def checkpoint_state(self, version: int) -> dict[str, Any]:
        """A copy of everything a checkpoint holds of the model, after every queued batch."""
        return await self._run(self._checkpoint_state, version)

    async def adopt(self, state: dict[str, Any], version: int) -> None:
        """Return to a stored state (rollback to checkpoint `version`) and serve it."""
        await self._run(self._adopt, state, version)

    async def record_event(self, kind: str, **info: Any) -> None:
        """Add an event to the learning history at the current sample count."""
        await self._run(self._record_event, kind, info)

    def stop(self) -> None:
        """Wait for the batch being learned, then end the thread."""
        self._executor.shutdown(wait=True)

    # -- on the learner thread --------------------------------------------------------------

    def _start(self, state: dict[str, Any] | None, version: int) -> None:
        from service.training.challenger import pair_for  # TensorFlow loads here

        pair = pair_for(self.settings, state)
        if state is not None:
            self.drift.restore(state.get("drift"))
        pair.champion.warm_up()
        if pair.challenger is not None:
            pair.challenger.warm_up()
        snapshot = snapshot_from_learner(pair.champion, version)
        challenger = snapshot_from_learner(pair.challenger, version) if pair.challenger else None
        self._freeze_heap()  # before the first snapshot makes the service ready
        self.pair = pair
        if challenger is not None:
            self.challenger_snapshots.publish(challenger)
        self.snapshots.publish(snapshot)
        self._update_metrics()

    def _learn(self, batch: DecodedBatch) -> None:
        """Test-then-train the hand-off's mini-batches of up to BATCH_SIZE rows, in order.

        Learned within `SNAPSHOT_INTERVAL_S` of the last snapshot, the update is served with
        the next one, or now if no other hand-off is queued (the stream is live, not a
        backlog): the learner would idle anyway, and the newest record waits for nothing."""
        assert self.pair is not None
        size = self.settings.batch_size
        try:
            if self.pair.challenger is None and not self.drift.changes_learner:
                self._learn_in_one_call(batch, size)
            else:
                # A promotion or a reset of the optimizer may act between two mini-batches.
                for features, labels in batch.mini_batches(size):
                    started = time.perf_counter()
                    result, promoted = self.pair.learn(features, labels)
                    self.drift.observe(self.learner, result.prequential_loss, result.samples)
                    self._learned(1, result.samples, started, promote=promoted is not None)
        finally:
            self._done += 1
        if self._unpublished and self._done == self._handed:
            self._publish()
        self._update_metrics()  # gauges: the state after the whole hand-off is what they show

    def _learn_in_one_call(self, batch: DecodedBatch, size: int) -> None:
        """Nothing acts between mini-batches: all of them in one compiled call (the lock
        taken once per hand-off, not once per mini-batch), then each one's loss to the drift
        detector at its own position in the stream."""
        started = time.perf_counter()
        results = self.learner.learn_in_order(batch.features, batch.labels, size)
        position = self.learner.samples_trained - len(batch)
        for result in results:
            position += result.samples
            self.drift.observe(self.learner, result.prequential_loss, result.samples, position)
        self._learned(len(results), len(batch), started)

    def _learned(self, batches: int, samples: int, started: float, promote: bool = False) -> None:
        """Serve the update if due (a promotion at once), and count it: `batches` mini-batches
        of `samples` rows in all, learned since `started`."""
        now = time.monotonic()
        if promote or now - self._last_publish >= self._snapshot_interval_s:
            self._publish()
        else:
            self._unpublished = True  # served once nothing is queued (`_learn`)
        each = (time.perf_counter() - started) / batches
        for _ in range(batches):
            metrics.TRAIN_BATCH_DURATION.observe(each)
        metrics.SAMPLES_TRAINED.inc(samples)
        metrics.BATCHES_TRAINED.inc(batches)

    def _publish(self) -> None:
        # The served version is the holder's: a checkpoint raises it from the event loop.
        version = self.snapshots.version
        self.snapshots.publish(snapshot_from_learner(self.learner, version))
        if self.challenger is not None:
            self.challenger_snapshots.publish(snapshot_from_learner(self.challenger, version))
        self._last_publish = time.monotonic()
        self._unpublished = False

    def _checkpoint_state(self, version: int) -> dict[str, Any]:
        self.learner.history.event(self.learner.samples_trained, "checkpoint", version=version)
        self._publish()  # the served model is never older than a checkpoint
        assert self.pair is not None
        state = self.pair.state()
        state["drift"] = self.drift.state()
        return state

    def _adopt(self, state: dict[str, Any], version: int) -> None:
        samples_before = self.learner.samples_trained
        assert self.pair is not None
        self.pair.restore(state)
        self.drift.restore(state.get("drift"))
        self.learner.history.event(
            self.learner.samples_trained,
            "rollback",
            to_version=version,
            from_samples=samples_before,
        )
        self._publish()
        self._update_metrics()

    def _record_event(self, kind: str, info: dict[str, Any]) -> None:
        self.learner.history.event(self.learner.samples_trained, kind, **info)

    def _update_metrics(self) -> None:
        for name, value in self.learner.prequential.metrics().items():
            if value is not None:
                metrics.PREQUENTIAL[name].set(value)
        if self.challenger is not None:
            for name, value in self.challenger.prequential.metrics().items():
                if value is not None:
                    metrics.CHALLENGER_PREQUENTIAL[name].set(value)
        if self.learner.last_loss is not None:
            metrics.TRAIN_LOSS.set(self.learner.last_loss)

    def _freeze_heap(self) -> None:
        """Once warm (TensorFlow imported, the step traced, a snapshot built), move every live
        object out of the garbage collector's reach (`gc.freeze`). A full collection walks
        TensorFlow's ~400k objects in 150-300 ms with the GIL held, stalling HTTP and the
        learner alike; frozen, it takes well under a millisecond. Done once, at start, before
        the service is ready, so no request waits for it."""
        started = time.perf_counter()
        gc.collect()
        gc.freeze()
        log.info(
            "heap frozen for the garbage collector",
            extra={
                "objects": gc.get_freeze_count(),
                "ms": round(1e3 * (time.perf_counter() - started)),
            },
        )
