"""Metrics: every Prometheus metric of the service, declared once (names from SPEC.md)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.samples import Sample

SAMPLES_TRAINED = Counter("streamfit_samples_trained", "Samples the model has learned from")
BATCHES_TRAINED = Counter("streamfit_batches_trained", "Mini-batches trained")
RECORDS_REJECTED = Counter(
    "streamfit_records_rejected", "Records sent to the dead-letter topic, by reason", ["reason"]
)
DEAD_LETTER_FAILURES = Counter(
    "streamfit_dead_letter_failures", "Dead-letter writes that failed and will be retried"
)
MODEL_VERSION = Gauge("streamfit_model_version", "Version of the model being served")
LATEST_MODEL_VERSION = Gauge(
    "streamfit_latest_model_version", "Newest stored checkpoint version (served or not)"
)
SERVE_HELD_SECONDS = Gauge(
    "streamfit_serve_held_seconds",
    "Seconds since the oldest stored version the serve policy held back was stored (0: none)",
)
SERVE_HELD_VERSIONS = Gauge(
    "streamfit_serve_held_versions", "Stored versions newer than the served one, held back"
)
PREQUENTIAL_ACCURACY = Gauge(
    "streamfit_prequential_accuracy", "Test-then-train accuracy over the recent window"
)
PREQUENTIAL_LOSS = Gauge(
    "streamfit_prequential_loss", "Test-then-train log-loss over the recent window"
)
PREQUENTIAL_MAE = Gauge(
    "streamfit_prequential_mae", "Test-then-train mean absolute error over the recent window"
)
PREQUENTIAL_RMSE = Gauge(
    "streamfit_prequential_rmse", "Test-then-train root mean squared error over the recent window"
)
PREQUENTIAL = {
    "accuracy": PREQUENTIAL_ACCURACY,
    "loss": PREQUENTIAL_LOSS,
    "mae": PREQUENTIAL_MAE,
    "rmse": PREQUENTIAL_RMSE,
}
CHALLENGER_PREQUENTIAL_ACCURACY = Gauge(
    "streamfit_challenger_prequential_accuracy",
    "The challenger's test-then-train accuracy over the recent window",
)
CHALLENGER_PREQUENTIAL_LOSS = Gauge(
    "streamfit_challenger_prequential_loss",
    "The challenger's test-then-train log-loss over the recent window",
)
CHALLENGER_PREQUENTIAL_MAE = Gauge(
    "streamfit_challenger_prequential_mae",
    "The challenger's test-then-train mean absolute error over the recent window",
)
CHALLENGER_PREQUENTIAL_RMSE = Gauge(
    "streamfit_challenger_prequential_rmse",
    "The challenger's test-then-train root mean squared error over the recent window",
)
CHALLENGER_PREQUENTIAL = {
    "accuracy": CHALLENGER_PREQUENTIAL_ACCURACY,
    "loss": CHALLENGER_PREQUENTIAL_LOSS,
    "mae": CHALLENGER_PREQUENTIAL_MAE,
    "rmse": CHALLENGER_PREQUENTIAL_RMSE,
}
PROMOTIONS = Counter(
    "streamfit_promotions", "Challengers promoted to champion (STREAMFIT_CHALLENGER_MODEL)"
)
SCHEMA_REGISTRY_UP = Gauge(
    "streamfit_schema_registry_up",
    "1 when the Schema Registry answered the last schema lookup (Avro records), 0 when not",
)
TRAIN_LOSS = Gauge("streamfit_train_loss", "Training loss of the last mini-batch")
CONSUMER_LAG = Gauge(
    "streamfit_consumer_lag", "Records in the partition not yet learned", ["topic", "partition"]
)
CHECKPOINT_TIMESTAMP = Gauge(
    "streamfit_checkpoint_timestamp_seconds", "Unix time of the newest checkpoint"
)
CHECKPOINT_LEASE_HELD = Gauge(
    "streamfit_checkpoint_lease_held",
    "1 while this trainer holds the lease on its checkpoint prefix (service.lease)",
)
CHECKPOINT_DURATION = Histogram(
    "streamfit_checkpoint_duration_seconds",
    "Time to write a checkpoint",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
CHECKPOINT_FAILURES = Counter(
    "streamfit_checkpoint_failures", "Checkpoint writes that failed (offsets not committed)"
)
REGISTRY_FAILURES = Counter(
    "streamfit_registry_failures",
    "Exports whose registration in the MLflow model registry failed (the next export is "
    "registered as usual)",
)
TRAIN_BATCH_DURATION = Histogram(
    "streamfit_train_batch_duration_seconds",
    "Time to test-then-train one mini-batch (a hand-off learned in one call: its mean)",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
PREDICTION_DURATION = Histogram(
    "streamfit_prediction_duration_seconds",
    "Time to compute one prediction request's probabilities",
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1),
)
KAFKA_CONNECTED = Gauge("streamfit_kafka_connected", "1 if the last Kafka fetch succeeded")
TRAINING_ACTIVE = Gauge("streamfit_training_active", "1 while the trainer consumes and learns")
HTTP_REQUESTS = Counter(
    "streamfit_http_requests",
    "HTTP requests by route, method and status",
    ["route", "method", "status"],
)
HTTP_DURATION = Histogram(
    "streamfit_http_request_duration_seconds",
    "HTTP request latency by route",
    ["route", "method"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1),
)
EVENT_LOOP_LAG = Histogram(
    "streamfit_event_loop_lag_seconds",
    "How late the event loop runs a timer (blocking shows here before heartbeats fail)",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
DRIFT_DETECTED = Counter(
    "streamfit_drift_detected", "Concept drifts detected on the prequential loss", ["policy"]
)
CONSUMER_LAG_SECONDS = Gauge(
    "streamfit_consumer_lag_seconds",
    "Age of the oldest record not yet learned (0 when caught up)",
    ["topic", "partition"],
)
CONSUMER_LAG_STATUS = Gauge(
    "streamfit_consumer_lag_status",
    "Burrow-style partition status: 1 for the current one of OK/WARN/STALL/STOP/REWIND",
    ["topic", "partition", "status"],
)
OFFSET_RESETS = Counter(
    "streamfit_offset_resets",
    "Positions that no longer fit the partition's log, reset to the log start, by reason "
    "(replaced: beyond the log end; expired: before the log start)",
    ["topic", "partition", "reason"],
)
RECORDS_LOST = Counter(
    "streamfit_records_lost",
    "Records deleted by retention before the model learned them",
    ["topic", "partition"],
)
EXPORT_VERSION = Gauge(
    "streamfit_export_version", "Version of the newest model exported as a SavedModel (EXPORT_DIR)"
)
EXPORT_DURATION = Histogram(
    "streamfit_export_duration_seconds",
    "Time to export one checkpoint as a SavedModel and make it visible",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
EXPORT_FAILURES = Counter(
    "streamfit_export_failures", "Exports that failed (training and checkpoints go on)"
)
RECORDS_SCORED = Counter(
    "streamfit_records_scored",
    "Predictions the scorer (ROLE=scorer, `score --follow`) wrote to its output topic",
)
SCORE_LAG = Gauge(
    "streamfit_score_lag",
    "Records of an input partition the scorer group has not scored yet (not the trainer's "
    "streamfit_consumer_lag)",
    ["group", "topic", "partition"],
)


# What an HTTP worker process records (service.serving.workers); the trainer adds these.
WORKER_FAMILIES = frozenset(
    {
        "streamfit_http_requests",
        "streamfit_http_request_duration_seconds",
        "streamfit_prediction_duration_seconds",
    }
)


def exposition(workers_dir: Path | None = None) -> bytes:
    """The text exposition of this process's metrics, with the HTTP workers' request and
    prediction metrics (prometheus-client's multiprocess files in `workers_dir`) summed in."""
    if workers_dir is None:
        return generate_latest()
    return generate_latest(_WithWorkers(workers_dir))


class _WithWorkers:
    """This process's registry, with the same families of the workers' files summed in."""

    def __init__(self, workers_dir: Path) -> None:
        self.workers_dir = workers_dir

    def collect(self) -> Iterator[Metric]:
        theirs = {
            family.name: family
            for family in MultiProcessCollector(None, path=str(self.workers_dir)).collect()
            if family.name in WORKER_FAMILIES
        }
        for family in REGISTRY.collect():
            other = theirs.pop(family.name, None)
            yield family if other is None else _summed(family, other)


def _summed(ours: Metric, theirs: Metric) -> Metric:
    def key(sample: Sample) -> tuple[str, tuple[tuple[str, str], ...]]:
        labels = {k: (_bound(v) if k == "le" else v) for k, v in sample.labels.items()}
        return sample.name, tuple(sorted(labels.items()))

    added = {key(s): s.value for s in theirs.samples}
    summed = Metric(ours.name, ours.documentation, ours.type, ours.unit)
    for sample in ours.samples:
        extra = added.pop(key(sample), 0.0)
        summed.samples.append(sample._replace(value=sample.value + extra))
    for sample in theirs.samples:
        if key(sample) in added:  # label sets only the workers have
            summed.samples.append(sample)
    return summed


def _bound(value: str) -> str:
    return repr(float(value))
