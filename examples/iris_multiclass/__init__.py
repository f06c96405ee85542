"""Iris: a saved `.keras` softmax model, three named classes, CSV records with class names."""
