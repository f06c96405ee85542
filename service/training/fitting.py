"""Fitting: batch training from a whole topic, for epochs, into a checkpoint `serve` resumes.

`streamfit fit` is the tutorial's batch-training flow. It reads the topic once into memory with
a group-less consumer assigned to every partition, up to each partition's end as it was when
the read began (the high watermark from fetch responses: Tansu's ListOffsets(latest) is wrong,
SPEC.md "The embedded broker"). It then trains a `Learner` on that data for `epochs` passes,
shuffled per epoch, and writes a checkpoint whose offsets are those ends; then it commits the
same offsets for the service's consumer group. `streamfit serve` with the same checkpoint
directory restores it and seeks there, so online learning continues with the first record the
fit did not see (warm start). With `EXPORT_DIR`, the checkpoint is also exported for TF Serving.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from aiokafka import TopicPartition
from aiokafka.errors import KafkaError

from service.checkpoints import (
    Checkpoint,
    CheckpointStore,
    offset_key,
    parse_offset_key,
    store_for,
)
from service.codec import Codec
from service.export import exporter_for
from service.kafka.clients import new_consumer
from service.kafka.commits import commit_offsets
from service.kafka.reading import BoundedRead, ReadStalled
from service.kafka.topics import topic_partitions
from service.lease import Lease, LeaseHeld
from service.model.inputs import Batch, concat, take
from service.model.startup import check_model
from service.online_stats import PrequentialWindow
from service.settings import Settings
from service.training.pipeline import handoff_records

log = logging.getLogger(__name__)


class FitError(Exception):
    """The topic cannot be fitted (missing, empty, unreadable) or the checkpoint does not fit."""


@dataclass
class TopicData:
    """A topic's decodable records in memory, where it ended, and what was rejected."""

    features: Batch
    labels: np.ndarray
    end_offsets: dict[TopicPartition, int]
    rejected: Counter[str] = field(default_factory=Counter)

    def __len__(self) -> int:
        return int(self.labels.shape[0])


async def read_topic(
    client_options: dict[str, Any],
    topic: str,
    codec: Codec,
    progress: bool = True,
    timeout_s: float = 60.0,
) -> TopicData:
    """Read `topic` from its beginning to its current end (per partition) and decode it.

    The end of each partition is fixed at the first high watermark a fetch reports, so records
    written meanwhile are left for online training rather than read forever.
    """
    from tqdm import tqdm

    consumer = new_consumer(client_options, client_id="streamfit-fit")
    features: list[Batch] = []
    labels: list[np.ndarray] = []
    rejected: Counter[str] = Counter()
    bar = tqdm(unit="rec", desc=f"reading {topic}", disable=not progress, leave=False)
    try:
        await consumer.start()
        partitions = await topic_partitions(consumer, topic)
        if not partitions:
            raise FitError(f"topic {topic!r} does not exist")
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        read = BoundedRead(consumer, partitions, max_records=10_000, timeout_s=timeout_s)
        async for chunk in read.chunks():
            if chunk.records:
                decoded = codec.decode(chunk.records)
                features.append(decoded.features)
                labels.append(decoded.labels)
                rejected.update(reject.reason for reject in decoded.rejects)
                bar.update(len(chunk.records))
    except ReadStalled as exc:
        raise FitError(str(exc)) from None
    finally:
        bar.close()
        await consumer.stop()
    ends = read.ends
    width = codec.num_features
    return TopicData(
        features=concat(features) if features else np.empty((0, width), np.float32),
        labels=np.concatenate(labels) if labels else np.empty((0,), np.float32),
        end_offsets=ends,
        rejected=rejected,
    )


@dataclass(frozen=True)
class FitReport:
    """What a fit did: the data, the last epoch's training metrics, the checkpoint written."""

    topic: str
    records: int
    rejected: dict[str, int]
    epochs: int
    accuracy: float | None
    log_loss: float | None
    metrics: dict[str, float | None]  # the task's two: accuracy and loss, or mae and rmse
    samples_trained: int
    resumed_from: int | None
    version: int
    offsets: dict[str, int]
    path: Path | str
    committed_group: str | None
    exported: str | None = None  # the SavedModel's version directory (EXPORT_DIR)


def train_epochs(
    learner: Any,
    data: TopicData,
    epochs: int,
    batch_size: int,
    seed: int,
    progress: bool = True,
) -> PrequentialWindow:
    """Train `epochs` shuffled passes (test-then-train per batch); the last epoch's metrics.

    Each batch is scored before it is trained on, so in epoch 1 the metrics are prequential
    (honest); in later epochs the model has seen the records before.
    """
    from tqdm import tqdm

    n = len(data)
    metrics = PrequentialWindow(window=n + 1, task=learner.task)
    for epoch in range(1, epochs + 1):
        order = np.random.default_rng([seed, epoch]).permutation(n)
        metrics = PrequentialWindow(window=n + 1, task=learner.task)
        with tqdm(total=n, unit="rec", desc=f"epoch {epoch}/{epochs}", disable=not progress) as bar:
            # Several mini-batches per compiled call, as the service's learner thread learns.
            chunk = handoff_records(batch_size)
            for start in range(0, n, chunk):
                rows = order[start : start + chunk]
                labels = data.labels[rows]
                results = learner.learn_in_order(take(data.features, rows), labels, batch_size)
                for first, result in zip(range(0, len(rows), batch_size), results, strict=True):
                    metrics.add(result.outputs, labels[first : first + result.samples])
                bar.update(len(rows))
                bar.set_postfix(
                    {k: f"{v:.4f}" for k, v in metrics.metrics().items() if v is not None}
                )
    return metrics


def fit(
    settings: Settings, topic: str, epochs: int, fresh: bool = False, progress: bool = True
) -> FitReport:
    """Replay `topic` into the learner for `epochs` passes and checkpoint it at the topic's end.

    Starts from the newest checkpoint in `settings.checkpoint_dir` unless `fresh`.
    """
    if epochs < 1:
        raise FitError("--epochs must be at least 1")
    store = store_for(settings)
    lease = Lease(store.storage, settings.lease_ttl_s)
    try:
        lease.acquire()  # a trainer writes this prefix: fitting into it would fork its history
    except LeaseHeld as exc:
        raise FitError(str(exc)) from None
    try:
        return _fit(settings, store, lease, topic, epochs, fresh, progress)
    finally:
        lease.release()


def _fit(
    settings: Settings,
    store: CheckpointStore,
    lease: Lease,
    topic: str,
    epochs: int,
    fresh: bool,
    progress: bool,
) -> FitReport:
    task, inputs = check_model(settings, with_checkpoint=False)
    codec = Codec.for_settings(settings, inputs, task)
    try:
        data = asyncio.run(read_topic(settings.kafka_client_options(), topic, codec, progress))
    except KafkaError as exc:
        raise FitError(f"cannot read {topic!r}: {type(exc).__name__}: {exc}") from exc
    if len(data) == 0:
        raise FitError(f"topic {topic!r} has no decodable records to fit")
    if data.rejected:
        log.warning(
            "records rejected, not trained",
            extra={"topic": topic, "rejected": dict(data.rejected)},
        )

    from service.training.learner import learner_for  # TensorFlow loads here, only for fitting

    learner = learner_for(settings)
    previous = None if fresh else store.latest()
    offsets: dict[str, int] = {}
    if previous is not None:
        try:
            learner.restore(previous.state)
        except ValueError as exc:
            raise FitError(f"{exc}; use --fresh to start a new model") from exc
        # Positions on other topics stay what the restored model learned up to.
        offsets = {
            key: offset
            for key, offset in previous.offsets.items()
            if parse_offset_key(key)[0] != topic
        }
    metrics = train_epochs(learner, data, epochs, settings.batch_size, settings.seed, progress)
    offsets.update({offset_key(tp.topic, tp.partition): o for tp, o in data.end_offsets.items()})
    version = store.newest_version() + 1
    checkpoint = Checkpoint(
        version=version,
        state=learner.state(),
        offsets=offsets,
        extra={
            "fit": {
                "topic": topic,
                "epochs": epochs,
                "records": len(data),
                "rejected": dict(data.rejected),
                "resumed_from": previous.version if previous else None,
            }
        },
    )
    lease.check()
    path = store.save(checkpoint)
    log.info("checkpoint written", extra={"version": version, "offsets": offsets})
    exporter = exporter_for(settings)
    exported = exporter.export_quietly(checkpoint) if exporter is not None else None
    committed = asyncio.run(
        commit_group_offsets(settings.kafka_client_options(), settings.group_id, data.end_offsets)
    )
    return FitReport(
        topic=topic,
        records=len(data),
        rejected=dict(data.rejected),
        epochs=epochs,
        accuracy=metrics.accuracy,
        log_loss=metrics.loss,
        metrics=metrics.metrics(),
        samples_trained=learner.samples_trained,
        resumed_from=previous.version if previous else None,
        version=version,
        offsets=offsets,
        path=path,
        committed_group=settings.group_id if committed else None,
        exported=exported,
    )


async def commit_group_offsets(
    client_options: dict[str, Any], group_id: str, offsets: dict[TopicPartition, int]
) -> bool:
    """Commit a checkpoint's offsets for the service's consumer group; False if refused.

    The checkpoint is what `serve` resumes from; committing the same offsets for its group
    makes `streamfit lag` show where the model is, and a service that starts from committed
    offsets starts there too. A group with live members refuses an outsider's commit: the
    checkpoint still holds the truth.
    """
    consumer = new_consumer(client_options, group_id=group_id, client_id="streamfit-fit")
    try:
        await consumer.start()
        consumer.assign(list(offsets))
        await commit_offsets(consumer, offsets)
    except (KafkaError, TimeoutError) as exc:
        log.warning(
            "offsets not committed for the group (the checkpoint holds them)",
            extra={"group_id": group_id, "error": f"{type(exc).__name__}: {exc}"},
        )
        return False
    finally:
        await consumer.stop()
    return True


def format_fit_report(report: FitReport) -> str:
    """The lines `streamfit fit` prints."""
    rejected = sum(report.rejected.values())
    reasons = ", ".join(f"{k}={v}" for k, v in sorted(report.rejected.items()))
    start = f"checkpoint {report.resumed_from}" if report.resumed_from else "a new model"
    lines = [
        f"fitted {report.records} records of {report.topic} x {report.epochs} epochs, "
        f"starting from {start}",
        f"rejected (not trained): {rejected}" + (f" ({reasons})" if reasons else ""),
        "last epoch (test-then-train): "
        + "  ".join(
            f"{'log-loss' if name == 'loss' else name} {value:.4f}"
            for name, value in report.metrics.items()
            if value is not None
        ),
        f"checkpoint version {report.version}: {report.path} "
        f"(samples trained {report.samples_trained}; offsets "
        + ", ".join(f"{k}={v}" for k, v in sorted(report.offsets.items()))
        + ")",
    ]
    if report.committed_group:
        lines.append(f"offsets committed for consumer group {report.committed_group}")
    if report.exported:
        lines.append(f"exported for TF Serving: {report.exported}")
    return "\n".join(lines)
