"""Evaluation: accuracy, ROC AUC, log-loss and confusion of scored labelled records."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from service.model.task import Task
from service.online_stats import log_losses


def roc_auc(probabilities: np.ndarray, labels: np.ndarray) -> float | None:
    """Area under the ROC curve by ranks (Mann-Whitney U; ties get their average rank).

    >>> roc_auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1]))
    0.75
    >>> roc_auc(np.array([0.5, 0.5]), np.array([0, 1]))
    0.5
    """
    positives = int((labels == 1).sum())
    negatives = int(labels.shape[0]) - positives
    if positives == 0 or negatives == 0:
        return None
    _, inverse, counts = np.unique(probabilities, return_inverse=True, return_counts=True)
    average_rank = np.cumsum(counts) - (counts - 1) / 2.0
    ranks = average_rank[inverse]
    u = ranks[labels == 1].sum() - positives * (positives + 1) / 2.0
    return float(u / (positives * negatives))


@dataclass(frozen=True)
class Evaluation:
    """Accuracy (threshold 0.5), ROC AUC, log-loss and the confusion matrix of labelled rows.

    `confusion` is ((true negatives, false positives), (false negatives, true positives)):
    rows are the actual label, columns the predicted one.
    """

    count: int
    accuracy: float
    roc_auc: float | None
    log_loss: float
    confusion: tuple[tuple[int, int], tuple[int, int]]


def evaluate(probabilities: np.ndarray, labels: np.ndarray) -> Evaluation | None:
    """Metrics of probabilities against 0/1 labels; None if there are no labelled rows.

    >>> e = evaluate(np.array([0.9, 0.2, 0.6, 0.4]), np.array([1, 0, 0, 1]))
    >>> e.accuracy, e.confusion
    (0.5, ((1, 1), (1, 1)))
    """
    if labels.shape[0] == 0:
        return None
    y = labels.astype(np.int64)
    predicted = (probabilities >= 0.5).astype(np.int64)
    log_loss = float(log_losses(probabilities, y).mean())
    cells = np.bincount(2 * y + predicted, minlength=4)
    return Evaluation(
        count=int(y.shape[0]),
        accuracy=float((predicted == y).mean()),
        roc_auc=roc_auc(probabilities, y),
        log_loss=log_loss,
        confusion=((int(cells[0]), int(cells[1])), (int(cells[2]), int(cells[3]))),
    )


def evaluate_task(task: Task, outputs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Metrics of a multiclass or regression task: accuracy and log-loss, or MAE, RMSE, R².

    >>> evaluate_task(Task("regression", ()), np.array([[1.0], [3.0]]), np.array([2.0, 3.0]))
    {'mae': 0.5, 'rmse': 0.7071067811865476, 'r2': -1.0}
    """
    if task.classification:
        correct, loss = task.batch_totals(outputs, labels)
        return {"accuracy": correct / len(labels), "log_loss": loss / len(labels)}
    error = outputs[:, 0].astype(np.float64) - labels
    spread = float(((labels - labels.mean()) ** 2).sum())
    r2 = 1.0 - float((error**2).sum()) / spread if spread > 0 else float("nan")
    return {
        "mae": float(np.abs(error).mean()),
        "rmse": float(np.sqrt((error**2).mean())),
        "r2": r2,
    }
