"""Serving: the model as predictions see it, and the data plane the HTTP routes call.

`snapshot` (immutable, NumPy-only model snapshots and the one holder of the served one),
`batcher` (micro-batched predictions), `follower` (the predictor role's model source: newer
checkpoints as a trainer writes them), `dataplane` (predict, infer, model status, readiness:
every answer the routes give, without HTTP).
"""
