"""streamfit: online learning from Kafka into a Keras model, served over HTTP.

A record's path through the package, in order:
settings -> kafka (clients, reading, commits) -> codec (bytes to arrays; rejects to
kafka.dead_letters) -> training (pipeline -> learner_thread -> learner; checkpointing: atomic
checkpoint with offsets, then commit) -> checkpoints -> serving (snapshot, dataplane) -> api
(routers) -> cli. `runtime` decides what a process runs by role.
"""

__version__ = "0.1.0"
