"""Serve policy: which stored version answers predictions (`STREAMFIT_SERVE_POLICY`).

- `latest`: every checkpoint is served as it is written, and between checkpoints the live
  model (fresher than its checkpoint). Today's behaviour and the default.
- `gated`: a checkpoint is served only when its prequential metric over its last
  `GATE_WINDOW` samples is no worse than the served version's own (as stored with it) by more
  than `GATE_TOLERANCE`, an absolute difference: accuracy for classification, RMSE for
  regression. A version that fails stays stored and is listed as held, with the reason; the
  served one keeps answering, and the next version is compared with it again, so a stream
  that recovers passes again.
- `pinned`: the served version moves only when an operator pins one (`POST /admin/pin/{v}`);
  until the first pin, the first stored version is served.

Under every policy a pin wins until `POST /admin/unpin`; a rollback is an explicit act and is
served without the gate. The decision (`ServingState`) is stored in the checkpoint manifest:
predictors serve what it names, and a restart resumes it.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from service.model.task import Task
from service.online_stats import PrequentialWindow

Policy = Literal["latest", "gated", "pinned"]
MAX_HELD = 20  # held versions listed in /model (the newest)


@dataclass(frozen=True)
class GateScore:
    """A version's gate metric over its last samples (stored with the checkpoint)."""

    metric: str  # "accuracy" or "rmse"
    value: float | None
    samples: int

    def no_worse_than(self, served: GateScore, tolerance: float) -> bool:
        if self.value is None or served.value is None or self.metric != served.metric:
            return True  # nothing to compare yet (no samples, or another task)
        if self.metric == "accuracy":
            return self.value >= served.value - tolerance
        return self.value <= served.value + tolerance

    def describe(self) -> str:
        value = "none" if self.value is None else f"{self.value:.4f}"
        return f"{self.metric} {value} over {self.samples} samples"

    @classmethod
    def from_state(cls, state: dict[str, Any] | None) -> GateScore | None:
        if not state:
            return None
        return cls(str(state["metric"]), state.get("value"), int(state.get("samples", 0)))


def gate_metric(task: Task) -> str:
    return "accuracy" if task.classification else "rmse"


def gate_score(state: dict[str, Any], window: int) -> GateScore:
    """A checkpoint state's gate metric over its last `window` prequential samples."""
    prequential = PrequentialWindow.of_checkpoint(state)
    metric = gate_metric(prequential.task)
    values, samples = prequential.metrics_over_last(window)
    return GateScore(metric, values[metric], samples)


@dataclass
class ServingState:
    """What is served and why (stored in the manifest under "serving")."""

    policy: Policy = "latest"
    served_version: int | None = None
    served_score: GateScore | None = None
    pinned: int | None = None
    held: list[dict[str, Any]] = field(default_factory=list)
    held_since: float | None = None  # wall-clock time the oldest held version was stored

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["served_score"] = asdict(self.served_score) if self.served_score else None
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None, policy: Policy) -> ServingState:
        if not data:
            return cls(policy=policy)
        return cls(
            policy=policy,  # the setting wins over what was stored
            served_version=data.get("served_version"),
            served_score=GateScore.from_state(data.get("served_score")),
            pinned=data.get("pinned"),
            held=list(data.get("held") or []),
            held_since=data.get("held_since"),
        )


class ServePolicy:
    """Decides, for each new stored version, whether it is served."""

    def __init__(self, policy: Policy, tolerance: float, state: ServingState | None = None) -> None:
        self.policy = policy
        self.tolerance = tolerance
        self.state = state or ServingState(policy=policy)

    @property
    def stored_weights_only(self) -> bool:
        """Whether predictions come from stored versions only (not the live model)."""
        return self.policy != "latest" or self.state.pinned is not None

    def consider(self, version: int, score: GateScore | None, now: float | None = None) -> bool:
        """A new version was stored: serve it? Records the decision."""
        s = self.state
        if s.pinned is not None:
            return self._hold(version, score, f"version {s.pinned} is pinned", now)
        if self.policy == "pinned" and s.served_version is not None:
            return self._hold(version, score, "serve policy pinned: waiting for a pin", now)
        if self.policy == "gated" and s.served_version is not None and score is not None:
            served = s.served_score
            if served is not None and not score.no_worse_than(served, self.tolerance):
                reason = (
                    f"gate: {score.describe()} is worse than served version "
                    f"{s.served_version}'s {served.describe()} by more than {self.tolerance:g}"
                )
                return self._hold(version, score, reason, now)
        self._serve(version, score)
        return True

    def serve_explicitly(self, version: int, score: GateScore | None) -> None:
        """A rollback's version: served without the gate (an operator's act)."""
        if self.state.pinned is None:
            self._serve(version, score)

    def pin(self, version: int, score: GateScore | None) -> None:
        self.state.pinned = version
        self._serve(version, score)

    def unpin(self, newest: int | None, score: GateScore | None) -> bool:
        """Back to the policy. `latest` and `pinned` serve the newest stored version; `gated`
        keeps the pinned one as the baseline the next version is compared with. True if the
        served version changed."""
        was = self.state.served_version
        self.state.pinned = None
        if self.policy != "gated" and newest is not None:
            self._serve(newest, score)
        return self.state.served_version != was

    def protected(self) -> set[int]:
        """Versions retention must keep."""
        return {v for v in (self.state.served_version, self.state.pinned) if v is not None}

    def held_for_s(self, now: float | None = None) -> float:
        since = self.state.held_since
        return 0.0 if since is None else max((now or time.time()) - since, 0.0)

    def _serve(self, version: int, score: GateScore | None) -> None:
        s = self.state
        s.served_version, s.served_score = version, score
        s.held = [h for h in s.held if h["version"] > version]
        s.held_since = s.held[0]["stored_at"] if s.held else None

    def _hold(self, version: int, score: GateScore | None, reason: str, now: float | None) -> bool:
        s = self.state
        stored_at = now or time.time()
        s.held.append(
            {
                "version": version,
                "reason": reason,
                "score": asdict(score) if score else None,
                "stored_at": stored_at,
            }
        )
        s.held = s.held[-MAX_HELD:]
        if s.held_since is None:
            s.held_since = stored_at
        return False
