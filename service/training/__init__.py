"""Training: from fetched records to a learned model and checkpoints that hold their offsets.

`trainer` runs the loop; each step has one owner: `offsets` (where each partition stands and
the resume rule), `pipeline` (decode, then learn, batches in flight), `learner_thread` (all
that runs on the learner's worker thread), `learner` (the Keras model and its compiled
test-then-train step), `checkpointing` (checkpoint, then commit), `rebalance` (partitions
assigned and revoked), `drift_response` (what drift does to the model), `fitting` (`streamfit
fit`).
"""
