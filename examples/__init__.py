"""Runnable user setups of streamfit: bring-your-own models, tasks and records (not shipped)."""
