"""Fraud: a functional Keras model with named numeric and string inputs, named JSON records."""
