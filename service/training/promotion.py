"""Promotion: the trainer's serve decisions, from a new checkpoint to what predictions get.

The `ServePolicy` decides; this applies and records it. Predictions read the served holder:
under `latest` (and no pin) it follows the live holder the learner publishes to, so they get
the live model, fresher than its checkpoint; otherwise it holds a snapshot of exactly the
stored weights of the served version. Each decision is written into the manifest with the
checkpoint it concerns (or alone, for a pin), where predictors and a restart read it.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import asdict
from typing import Any

from service import metrics
from service.checkpoints import Checkpoint, CheckpointStore
from service.errors import VersionNotFound
from service.serving.policy import GateScore, ServePolicy, ServingState, gate_score
from service.serving.snapshot import SnapshotHolder, snapshot_from_checkpoint
from service.settings import Settings

log = logging.getLogger(__name__)


class Promotion:
    """Owns the serve policy's state, the served holder, and the decision in the manifest."""

    def __init__(
        self,
        settings: Settings,
        store: CheckpointStore,
        live: SnapshotHolder,
        served: SnapshotHolder,
    ) -> None:
        self.policy = ServePolicy(settings.serve_policy, settings.gate_tolerance)
        self.gate_window = settings.gate_window
        self.store = store
        self.live = live
        self.served = served
        self.latest_version = 0
        self._undo: ServingState | None = None
        metrics.SERVE_HELD_SECONDS.set_function(self.policy.held_for_s)

    # -- start (blocking I/O: on a worker thread) ----------------------------------------------

    def restore(self, newest: int) -> None:
        """Resume the stored decision; serve its version's stored weights if the policy
        says so (a checkpoint named by the decision is kept by retention)."""
        self.latest_version = newest
        self.policy.state = ServingState.from_dict(self.store.serving(), self.policy.policy)
        version = self.policy.state.served_version
        if self.policy.stored_weights_only and version is not None:
            self.served.serve(snapshot_from_checkpoint(self.store.load(version)))
            log.info("serving the stored decision", extra=self.info())
        else:
            self.served.follow(self.live)
        self._update_metrics()

    # -- a new checkpoint (the Checkpointer's steps 4 and 5) ------------------------------------

    def decide(self, checkpoint: Checkpoint, explicit: bool) -> bool:
        """Before the checkpoint is written: serve it? The decision goes into the manifest
        with it (`serving()`); `undo()` if the write fails. A rollback's version is
        `explicit`: served without the gate."""
        score = gate_score(checkpoint.state, self.gate_window)
        checkpoint.extra["gate"] = asdict(score)
        self._undo = copy.deepcopy(self.policy.state)
        if explicit:
            self.policy.serve_explicitly(checkpoint.version, score)
            return self.policy.state.served_version == checkpoint.version
        return self.policy.consider(checkpoint.version, score)

    def serving(self) -> dict[str, Any]:
        return self.policy.state.as_dict()

    def undo(self) -> None:
        if self._undo is not None:
            self.policy.state, self._undo = self._undo, None

    def written(self, checkpoint: Checkpoint, served: bool) -> None:
        """After the write: serve the version if decided (stored weights, or the live model
        under `latest`), and log a held one with its reason."""
        self._undo = None
        self.latest_version = checkpoint.version
        self.live.set_version(checkpoint.version)
        if not served:
            held = self.policy.state.held[-1] if self.policy.state.held else {}
            log.warning(
                "version held back",
                extra={
                    "version": checkpoint.version,
                    "served_version": self.policy.state.served_version,
                    "reason": held.get("reason"),
                },
            )
        elif self.policy.stored_weights_only:
            self.served.serve(snapshot_from_checkpoint(checkpoint))
        else:
            self.served.follow(self.live)
        self._update_metrics()

    # -- operators (admin routes; blocking I/O: on a worker thread) ------------------------------

    def pin(self, version: int) -> dict[str, Any]:
        """Serve stored `version` until unpinned; VersionNotFound if it is not stored."""
        if version not in self.store.versions():
            raise VersionNotFound(f"checkpoint version {version} is not retained")
        checkpoint = self.store.load(version)
        snapshot = snapshot_from_checkpoint(checkpoint)
        self.policy.pin(version, _score_of(checkpoint))
        self.store.record_serving(self.serving())
        self.served.serve(snapshot)
        log.warning("version pinned", extra={"version": version})
        self._update_metrics()
        return self.info()

    def unpin(self) -> dict[str, Any]:
        """Back to the policy (see `ServePolicy.unpin`)."""
        newest = self.store.latest() if self.policy.policy == "pinned" else None
        newest_version = newest.version if newest else self.latest_version or None
        score = _score_of(newest) if newest else None
        self.policy.unpin(newest_version, score)
        self.store.record_serving(self.serving())
        if not self.policy.stored_weights_only:
            self.served.follow(self.live)
        elif newest is not None and self.policy.state.served_version == newest.version:
            self.served.serve(snapshot_from_checkpoint(newest))
        log.warning("unpinned", extra=self.info())
        self._update_metrics()
        return self.info()

    # -- what /model and /metrics show -----------------------------------------------------------

    def info(self) -> dict[str, Any]:
        s = self.policy.state
        return {
            "policy": self.policy.policy,
            "served_version": s.served_version,
            "latest_version": self.latest_version or None,
            "latest_samples_trained": live.samples_trained if (live := self.live.current) else 0,
            "pinned": s.pinned,
            "served_score": asdict(s.served_score) if s.served_score else None,
            "held": s.held,
            "held_for_s": round(self.policy.held_for_s(), 3),
        }

    def _update_metrics(self) -> None:
        metrics.LATEST_MODEL_VERSION.set(self.latest_version)
        metrics.MODEL_VERSION.set(self.served.version)
        metrics.SERVE_HELD_VERSIONS.set(len(self.policy.state.held))


def _score_of(checkpoint: Checkpoint) -> GateScore | None:
    return GateScore.from_state(checkpoint.extra.get("gate"))
