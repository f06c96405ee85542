"""streamfit: online learning from Kafka into a Keras model, served over HTTP.

A record's path through the package, left to right:
settings -> stream (Kafka in) -> codec (bytes to arrays, rejects to the dead-letter topic)
-> learner (model, standardization, prequential metrics) -> checkpoints (atomic, with offsets)
-> trainer (the loop that ties them) -> serving (immutable snapshot the API reads)
-> api (routes) -> cli.
"""

__version__ = "0.1.0"
