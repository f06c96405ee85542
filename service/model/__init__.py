"""Model: what the user's model is (its task and its inputs) and how it is built.

`task` and `inputs` are pure NumPy (the predictor role reads them from a checkpoint without
TensorFlow); `resolve` builds the Keras model from `STREAMFIT_MODEL` and checks it fits.
"""
