"""Diabetes progression: the built-in MLP on a regression task, CSV records keyed by target."""
