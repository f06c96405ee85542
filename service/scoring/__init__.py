"""Scoring: predictions for the records of a topic, written to another topic, exactly once.

One module per concern: `batch` (`streamfit score`: a topic up to its end), `follow` (the
long-running loop of `score --follow` and the `scorer` role), `process` (that role's process:
model source, loop, health and metrics), `predictions` (records to output records), `output`
(write-then-commit, and the batch run's single transaction), `fencing` (one transactional
producer per input partition), `evaluation` (metrics of labelled records). docs/SCORING.md
says how it works.
"""

from service.scoring.batch import Scorer, ScoreReport, format_score_report, score
from service.scoring.errors import ScoringError
from service.scoring.evaluation import Evaluation, evaluate, evaluate_task, roc_auc
from service.scoring.output import CRASH_ENV, CRASH_EXIT_CODE, crash_hook_from_env
from service.scoring.predictions import (
    decode_for_scoring,
    outputs_rowwise,
    predict_rowwise,
    prediction_key,
    prediction_value,
)

__all__ = [
    "CRASH_ENV",
    "CRASH_EXIT_CODE",
    "Evaluation",
    "ScoreReport",
    "Scorer",
    "ScoringError",
    "crash_hook_from_env",
    "decode_for_scoring",
    "evaluate",
    "evaluate_task",
    "format_score_report",
    "outputs_rowwise",
    "predict_rowwise",
    "prediction_key",
    "prediction_value",
    "roc_auc",
    "score",
]
