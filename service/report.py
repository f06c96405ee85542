"""Report: a PNG learning curve of the task's two prequential metrics (accuracy and log-loss,
or MAE and RMSE), with drift, checkpoint, rollback and promotion events, from a learner's
history (`LearningHistory.state()`, with the challenger's curve when there is one) or a
checkpoint.

Drawn with matplotlib's object API on the Agg canvas (no pyplot, no display, no global state),
so a server thread can render it; the file is written atomically.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from service.checkpoints import CheckpointStore
from service.online_stats import history_of_checkpoint

ACCURACY_COLOR = "#1f77b4"
LOSS_COLOR = "#d62728"
DRIFT_COLOR = "#ff7f0e"
CHECKPOINT_COLOR = "#2ca02c"
ROLLBACK_COLOR = "#9467bd"
CHALLENGER_COLOR = "#7f7f7f"
PROMOTION_COLOR = "#17becf"
HELD_COLOR = "#e377c2"
MAX_CHECKPOINT_LABELS = 12


class ReportError(Exception):
    """There is nothing to draw a report from."""


@dataclass(frozen=True)
class Panel:
    """One metric's panel: the history key, its legend and axis labels, whether it is a
    fraction (drawn within [0, 1]) or a non-negative error (drawn from 0)."""

    key: str
    legend: str
    axis: str
    fraction: bool = False


CLASSIFICATION_PANELS = (
    Panel("accuracy", "accuracy", "prequential accuracy", fraction=True),
    Panel("loss", "log-loss", "prequential log-loss"),
)
REGRESSION_PANELS = (
    Panel("mae", "MAE", "prequential MAE"),
    Panel("rmse", "RMSE", "prequential RMSE"),
)


def panels_for(points: list[dict[str, Any]]) -> tuple[Panel, Panel]:
    """The task's two panels, told from the keys of the history's points (`mae` and `rmse`
    for regression, `accuracy` and `loss` for classification and for an empty history)."""
    if any("mae" in point or "rmse" in point for point in points):
        return REGRESSION_PANELS
    return CLASSIFICATION_PANELS


def _values(points: list[dict[str, Any]], key: str) -> list[float]:
    return [math.nan if p.get(key) is None else float(p[key]) for p in points]


def _samples_label(value: float, _position: object = None) -> str:
    for size, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= size:
            return f"{value / size:g}{suffix}"
    return f"{value:g}"


def _events(history: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [e for e in history.get("events", []) if e.get("kind") == kind and "samples" in e]


def write_report(history: dict[str, Any], path: Path | str, title: str) -> Path:
    """Draw the task's metrics against samples learned: accuracy (top) and log-loss (bottom),
    or MAE (top) and RMSE (bottom) for regression; return the path.

    Drift events are dashed vertical lines, rollbacks solid ones, checkpoints triangles on
    the top panel labelled with their version (the newest ones when there are many). With a
    challenger ("challenger": {"model", "points"}), its curves are drawn dashed beside the
    champion's, and each promotion is a dotted vertical line naming the new champion.
    """
    path = Path(path)
    points = sorted(history.get("points", []), key=lambda p: p["samples"])
    samples = [p["samples"] for p in points]
    first, second = panels_for(points)
    upper, lower = _values(points, first.key), _values(points, second.key)
    challenger = history.get("challenger") or {}
    rival = sorted(challenger.get("points", []), key=lambda p: p["samples"])
    champion_label = f" ({history.get('model')}, champion)" if challenger else ""

    figure = Figure(figsize=(10, 6.5), dpi=110, layout="constrained")
    FigureCanvasAgg(figure)
    top, bottom = figure.subplots(2, 1, sharex=True, height_ratios=(3, 2))
    figure.suptitle(title, fontsize=13)
    top.plot(
        samples, upper, color=ACCURACY_COLOR, linewidth=1.6, label=first.legend + champion_label
    )
    bottom.plot(
        samples, lower, color=LOSS_COLOR, linewidth=1.6, label=second.legend + champion_label
    )
    if rival:
        rival_samples = [p["samples"] for p in rival]
        label = f" ({challenger.get('model')}, challenger)"
        for axes, panel in ((top, first), (bottom, second)):
            axes.plot(
                rival_samples,
                _values(rival, panel.key),
                color=CHALLENGER_COLOR,
                linestyle="--",
                linewidth=1.4,
                label=panel.legend + label,
            )
        upper, lower = upper + _values(rival, first.key), lower + _values(rival, second.key)
    top.set_ylabel(first.axis)
    bottom.set_ylabel(second.axis)
    bottom.set_xlabel("samples learned")
    bottom.xaxis.set_major_formatter(FuncFormatter(_samples_label))
    for axes in (top, bottom):
        axes.grid(True, alpha=0.3)
    if not points:
        top.text(0.5, 0.5, "no history yet", transform=top.transAxes, ha="center", va="center")

    drifts = _events(history, "drift")
    rollbacks = _events(history, "rollback")
    for axes in (top, bottom):
        for i, event in enumerate(drifts):
            axes.axvline(
                event["samples"],
                color=DRIFT_COLOR,
                linestyle="--",
                linewidth=1.4,
                label="drift detected" if i == 0 and axes is top else None,
            )
        for i, event in enumerate(rollbacks):
            axes.axvline(
                event["samples"],
                color=ROLLBACK_COLOR,
                linewidth=1.6,
                label="rollback" if i == 0 and axes is top else None,
            )
    for event in rollbacks:
        version = event.get("to_version", event.get("version"))
        if version is not None:
            top.annotate(
                f"to v{version}",
                (event["samples"], 1.0),
                xycoords=("data", "axes fraction"),
                xytext=(3, -12),
                textcoords="offset points",
                color=ROLLBACK_COLOR,
                fontsize=8,
            )

    promotions = _events(history, "promotion")
    for axes in (top, bottom):
        for i, event in enumerate(promotions):
            axes.axvline(
                event["samples"],
                color=PROMOTION_COLOR,
                linestyle=":",
                linewidth=1.8,
                label="promotion" if i == 0 and axes is top else None,
            )
    last_labelled = -math.inf
    span = max((p["samples"] for p in points), default=1) or 1
    for event in promotions:
        if event["samples"] - last_labelled < 0.15 * span:
            continue  # a label per promotion would overlap where roles flip back and forth
        last_labelled = event["samples"]
        top.annotate(
            f"{event.get('champion', '')} promoted",
            (event["samples"], 1.0),
            xycoords=("data", "axes fraction"),
            xytext=(3, -24),
            textcoords="offset points",
            color=PROMOTION_COLOR,
            fontsize=8,
        )

    checkpoints = _events(history, "checkpoint")
    if checkpoints:
        _marks(top, checkpoints, "^", 30, CHECKPOINT_COLOR, "checkpoint")
        labelled = checkpoints[:: max(1, -(-len(checkpoints) // MAX_CHECKPOINT_LABELS))]
        for event in labelled:
            if "version" in event:
                top.annotate(
                    f"v{event['version']}",
                    (event["samples"], 0.05),
                    xycoords=("data", "axes fraction"),
                    ha="center",
                    fontsize=7,
                    color=CHECKPOINT_COLOR,
                )
    held = _events(history, "held")
    if held:  # drawn over the checkpoint they are
        _marks(top, held, "x", 40, HELD_COLOR, "checkpoint held back (serve policy)", zorder=4)
    if points:
        if rival:
            bottom.legend(loc="best", fontsize=8, framealpha=0.9)
        top.legend(loc="best", fontsize=8, framealpha=0.9)
        for axes, panel, values in ((top, first, upper), (bottom, second, lower)):
            _set_limits(axes, panel, [v for v in values if math.isfinite(v)])

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        figure.savefig(tmp, format="png")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _marks(
    axes: Any,
    events: list[dict[str, Any]],
    marker: str,
    size: int,
    color: str,
    label: str,
    zorder: int = 3,
) -> None:
    """A marker per event at its sample count, along the bottom edge of `axes`."""
    axes.scatter(
        [e["samples"] for e in events],
        [0.02] * len(events),
        transform=axes.get_xaxis_transform(),
        marker=marker,
        s=size,
        color=color,
        zorder=zorder,
        label=label,
        clip_on=False,
    )


def _set_limits(axes: Any, panel: Panel, values: list[float]) -> None:
    if not values:
        return
    if panel.fraction:
        lowest = min(min(values), 0.5)
        axes.set_ylim(max(0.0, lowest - 0.05), min(1.0, max(values) + 0.05))
    else:
        axes.set_ylim(0.0, max(values) * 1.08 if max(values) > 0 else 1.0)


def report_from_checkpoints(
    checkpoint_dir: Path | str, path: Path | str, title: str | None = None
) -> Path:
    """Draw the history held by the newest readable checkpoint in `checkpoint_dir`."""
    store = CheckpointStore(checkpoint_dir)
    checkpoint = store.latest()
    if checkpoint is None:
        raise ReportError(f"no readable checkpoint in {checkpoint_dir}")
    history = history_of_checkpoint(checkpoint.state)
    history = {**history, "events": [*history.get("events", []), *held_events(store)]}
    if title is None:
        samples = int(checkpoint.state.get("samples_trained", 0))
        title = f"streamfit model v{checkpoint.version}: {samples:,} samples learned"
    return write_report(history, path, title)


def held_events(store: CheckpointStore) -> list[dict[str, Any]]:
    """The versions the serve policy held back (the manifest's decision), as history events
    at the samples each had learned."""
    manifest = store.manifest()
    learned = {int(e["version"]): e.get("samples_trained") for e in manifest["checkpoints"]}
    held = ((manifest.get("serving") or {}).get("held")) or []
    return [
        {"samples": learned[h["version"]], "kind": "held", "version": h["version"]}
        for h in held
        if learned.get(h["version"]) is not None
    ]
