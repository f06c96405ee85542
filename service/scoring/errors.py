"""Errors: why scoring cannot run."""

from __future__ import annotations


class ScoringError(Exception):
    """Scoring cannot run: no checkpoint, no such topic, transactions required but refused."""
