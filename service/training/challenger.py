"""Challenger: a second model that learns the champion's batches and replaces it when better.

With `STREAMFIT_CHALLENGER_MODEL` set, `ChampionChallenger` holds two `Learner`s. Each batch is
learned by the champion, then by the challenger, with the same test-then-train protocol (one
compiled call each), so both prequential windows score the same records. After each batch the
`PromotionRule` compares the two over the newest `PROMOTE_WINDOW` samples, on the task's gate
metric (accuracy, higher is better; RMSE, lower is better); a challenger ahead by at least
`PROMOTE_MARGIN` becomes the champion, and the old champion the challenger. `Roles` says which
spec holds which role; a checkpoint stores them with both learners' states, and a restart
resumes them (they win over MODEL and CHALLENGER_MODEL after a promotion).

Not thread-safe: the learner thread owns it (`LearnerThread`).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from service import metrics
from service.model.inputs import Batch
from service.online_stats import PrequentialWindow
from service.serving.policy import gate_metric
from service.settings import Settings

if TYPE_CHECKING:
    from service.training.learner import BatchResult, Learner

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Roles:
    """Which model spec is the champion (served, checkpointed as before) and which the
    challenger; how many promotions happened and at which sample count the last one did."""

    champion: str
    challenger: str | None = None
    promotions: int = 0
    promoted_at: int | None = None

    @classmethod
    def configured(cls, settings: Settings) -> Roles:
        return cls(settings.model_spec, settings.challenger_model)

    @classmethod
    def resolve(cls, settings: Settings, state: dict[str, Any] | None) -> Roles:
        """The roles to start with: a checkpoint's when it names the same two models as
        MODEL and CHALLENGER_MODEL (in either role), otherwise the settings'.

        >>> s = Settings(model="linear", challenger_model="mlp")
        >>> stored = {"roles": {"champion": "mlp", "challenger": "linear", "promotions": 1}}
        >>> Roles.resolve(s, stored).champion, Roles.resolve(s, None).champion
        ('mlp', 'linear')
        """
        configured = cls.configured(settings)
        stored = cls.from_state((state or {}).get("roles"))
        if stored is None or configured.challenger is None:
            return configured
        if {stored.champion, stored.challenger} == {configured.champion, configured.challenger}:
            return stored
        return replace(configured, promotions=stored.promotions)

    def promoted(self, samples: int) -> Roles:
        """The roles after the challenger was promoted at `samples`."""
        assert self.challenger is not None
        return Roles(self.challenger, self.champion, self.promotions + 1, samples)

    def state(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_state(cls, state: dict[str, Any] | None) -> Roles | None:
        if not state:
            return None
        promoted_at = state.get("promoted_at")
        return cls(
            str(state["champion"]),
            state.get("challenger"),
            int(state.get("promotions", 0)),
            None if promoted_at is None else int(promoted_at),
        )


@dataclass(frozen=True)
class Verdict:
    """Why a challenger is promoted: both models' gate metric over the same newest samples."""

    metric: str
    champion: float
    challenger: float
    samples: int


class PromotionRule:
    """Promote when the challenger's gate metric over the newest `window` samples beats the
    champion's by at least `margin` (absolute), both windows holding `window` samples, and at
    least `window` samples after the previous promotion (each decision on fresh evidence).

    >>> champion, challenger = PrequentialWindow(), PrequentialWindow()
    >>> champion.add_totals(2000, 1500, 1000.0); challenger.add_totals(2000, 1540, 900.0)
    >>> PromotionRule(0.01, 2000).judge(champion, challenger, samples=2000, promoted_at=None)
    Verdict(metric='accuracy', champion=0.75, challenger=0.77, samples=2000)
    >>> PromotionRule(0.03, 2000).judge(champion, challenger, samples=2000, promoted_at=None)
    """

    def __init__(self, margin: float, window: int) -> None:
        self.margin = margin
        self.window = window

    def judge(
        self,
        champion: PrequentialWindow,
        challenger: PrequentialWindow,
        samples: int,
        promoted_at: int | None,
    ) -> Verdict | None:
        if promoted_at is not None and samples - promoted_at < self.window:
            return None
        metric = gate_metric(champion.task)
        ours, ours_n = champion.metrics_over_last(self.window)
        theirs, theirs_n = challenger.metrics_over_last(self.window)
        a, b = ours.get(metric), theirs.get(metric)
        if min(ours_n, theirs_n) < self.window or a is None or b is None:
            return None
        ahead = b - a if metric == "accuracy" else a - b
        # A small tolerance: 0.77 - 0.75 is 0.01999... in floating point.
        if ahead <= 0 or ahead < self.margin - 1e-9:
            return None
        return Verdict(metric, a, b, min(ours_n, theirs_n))


class ChampionChallenger:
    """The champion `Learner` and, when configured, a challenger learning the same batches."""

    def __init__(
        self,
        champion: Learner,
        challenger: Learner | None,
        rule: PromotionRule,
        roles: Roles,
    ) -> None:
        self.champion = champion
        self.challenger = challenger
        self.rule = rule
        self.roles = roles

    def learn(self, x: Batch, y: np.ndarray) -> tuple[BatchResult, Verdict | None]:
        """Test-then-train the champion, then the challenger, on the batch; promote the
        challenger if the rule says so. The champion's result (before any promotion)."""
        result = self.champion.learn(x, y)
        if self.challenger is None:
            return result, None
        self.challenger.learn(x, y)
        verdict = self.rule.judge(
            self.champion.prequential,
            self.challenger.prequential,
            self.champion.samples_trained,
            self.roles.promoted_at,
        )
        if verdict is not None:
            self._promote(verdict)
        return result, verdict

    def _promote(self, verdict: Verdict) -> None:
        old, new = self.champion, self.challenger
        assert new is not None
        samples = new.samples_trained
        # The events (checkpoints, drifts, promotions) are the service's: they follow the
        # champion role; each model keeps its own learning curve.
        new.history.take_events(old.history)
        self.champion, self.challenger = new, old
        self.roles = self.roles.promoted(samples)
        new.history.event(
            samples,
            "promotion",
            champion=self.roles.champion,
            previous=self.roles.challenger,
            metric=verdict.metric,
            champion_value=verdict.challenger,
            previous_value=verdict.champion,
            window=verdict.samples,
        )
        metrics.PROMOTIONS.inc()
        log.info(
            "challenger promoted",
            extra={
                "champion": self.roles.champion,
                "previous": self.roles.challenger,
                "metric": verdict.metric,
                "champion_value": round(verdict.challenger, 4),
                "previous_value": round(verdict.champion, 4),
                "samples": samples,
            },
        )

    # -- checkpoints -------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """The champion's state where a checkpoint always held it, the challenger's full state
        under "challenger", and the roles."""
        state = self.champion.state()
        if self.challenger is not None:
            state["challenger"] = self.challenger.state()
            state["roles"] = self.roles.state()
        return state

    def restore(self, state: dict[str, Any]) -> None:
        """Load both learners from a checkpoint state (at start, or a rollback's), in the
        roles it stored when it names these two models; a challenger the checkpoint does not
        hold starts fresh."""
        stored = Roles.from_state(state.get("roles"))
        if stored is not None and self.challenger is not None:
            pair = (stored.champion, stored.challenger)
            if pair == (self.roles.challenger, self.roles.champion):  # promoted since
                self.champion, self.challenger = self.challenger, self.champion
                self.roles = stored
            elif pair == (self.roles.champion, self.roles.challenger):
                self.roles = stored
        self.champion.restore(state)
        if self.challenger is None:
            return
        theirs = state.get("challenger")
        if theirs is not None and (theirs.get("model") or {}).get("spec") == self.roles.challenger:
            self.challenger.restore(theirs)
        else:
            log.info(
                "the checkpoint holds no state of the challenger: it starts fresh",
                extra={"challenger": self.roles.challenger},
            )


def pair_for(settings: Settings, state: dict[str, Any] | None) -> ChampionChallenger:
    """The champion and challenger the settings describe, in the roles a checkpoint `state`
    gives them (restored from it when given)."""
    from service.training.learner import learner_for  # TensorFlow loads here

    roles = Roles.resolve(settings, state)
    configured = Roles.configured(settings)
    if roles.champion != configured.champion:
        log.info(
            "the checkpoint's roles win over MODEL and CHALLENGER_MODEL",
            extra={"champion": roles.champion, "challenger": roles.challenger},
        )
    champion = learner_for(settings.with_model(roles.champion))
    challenger = learner_for(settings.with_model(roles.challenger)) if roles.challenger else None
    pair = ChampionChallenger(
        champion,
        challenger,
        PromotionRule(settings.promote_margin, settings.promote_window),
        roles,
    )
    if state is not None:
        pair.restore(state)
    return pair
