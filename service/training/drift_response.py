"""Drift response: watches the prequential loss and answers a detected drift with the policy.

A small wrapper in the manner of river's `drift.retrain`: the detector (`service.drift`) says
when; the policy (`STREAMFIT_DRIFT_POLICY`) says what: `alert` records and counts it,
`reset_optimizer` also zeroes the optimizer's moments, `rollback` also asks the trainer to
return to the newest retained checkpoint from before the drift began.
"""

from __future__ import annotations

import logging
from typing import Any

from service import metrics
from service.drift import DriftDetector, DriftPolicy

log = logging.getLogger(__name__)


class DriftResponse:
    """The drift detector and the policy carried out when it fires.

    `observe` runs on the learner thread, after each learned batch; `take_rollback_onset` is
    asked on the event loop, where a rollback (a checkpoint read and a new checkpoint) runs.
    """

    def __init__(self, policy: str, threshold: float) -> None:
        self.policy = DriftPolicy(policy)
        self.detector = DriftDetector(threshold=threshold)
        self._rollback_onset: int | None = None

    @property
    def watching(self) -> bool:
        return self.policy is not DriftPolicy.NONE

    @property
    def changes_learner(self) -> bool:
        """The policy acts on the learner itself (so before the next mini-batch is learned)."""
        return self.policy is DriftPolicy.RESET_OPTIMIZER

    def observe(
        self, learner: Any, mean_loss: float, count: int, samples: int | None = None
    ) -> None:
        """Feed one batch's mean prequential loss; on a drift, record it and apply the policy.
        `samples`: the stream position after the batch (default: the learner's count)."""
        if not self.watching:
            return
        samples = learner.samples_trained if samples is None else samples
        if not self.detector.update(mean_loss, samples=samples, count=count):
            return
        info = dict(self.detector.last_drift or {})
        learner.history.event(samples, "drift", policy=self.policy.value, **info)
        metrics.DRIFT_DETECTED.labels(self.policy.value).inc()
        log.warning("concept drift detected", extra={"policy": self.policy.value, **info})
        if self.policy is DriftPolicy.RESET_OPTIMIZER:
            learner.reset_optimizer()
        elif self.policy is DriftPolicy.ROLLBACK:
            self._rollback_onset = int(info.get("onset", samples))

    def take_rollback_onset(self) -> int | None:
        """The onset (in samples) of a drift that asks for a rollback, once; else None."""
        onset, self._rollback_onset = self._rollback_onset, None
        return onset

    def state(self) -> dict[str, Any]:
        return self.detector.state()

    def restore(self, state: dict[str, Any] | None) -> None:
        """The detector's statistics from a checkpoint; a fresh start if absent or unreadable."""
        if state is None:
            return
        try:
            self.detector.restore(state)
        except (KeyError, TypeError, ValueError):
            log.warning("drift detector state unreadable; starting it afresh")

    def summary(self, events: list[dict[str, Any]]) -> dict[str, Any]:
        """Policy, detections and drift points (from the learning history) for /model."""
        return {
            "policy": self.policy.value,
            "detections": self.detector.detections,
            "points": [e for e in events if e.get("kind") == "drift"],
        }
