"""Kafka plumbing shared by the trainer, `fit`, `score` and `lag`.

Each concern lives once: client options (`clients`), topics and their partitions (`topics`),
reading partitions up to their end and reading where a log starts and ends (`reading`), the
offset commit (`commits`), dead letters (`dead_letters`), the connectivity probe
(`connectivity`) and consumer-group lag seen from outside the group (`lag`).
"""
