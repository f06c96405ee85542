"""Probes: what reliability tests read of a running service and of its checkpoint directory.

Also the exceptions that name known service bugs, so a test can be marked
`xfail(strict=True, raises=...)` for exactly that bug while any other failure still fails.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from service.checkpoints import MANIFEST, CheckpointStore
from tests.support import ServiceProcess


class KnownBug(AssertionError):
    """A failed expectation that documents a service bug (see docs/RELIABILITY.md)."""


class OutageNotVisible(KnownBug):
    """A Kafka outage does not show in /readyz's trainer status nor in streamfit_kafka_connected."""


class CommitNotRetried(KnownBug):
    """Offsets whose commit failed are not committed again until more records are learned."""


class FallbackSkipsRecords(KnownBug):
    """After falling back to an older checkpoint, records it did not learn are skipped."""


class StaleError(KnownBug):
    """/readyz keeps reporting an error after the fault behind it is gone."""


class PoisonPill(KnownBug):
    """One record stops all training (the trainer fails or retries it forever)."""


class SecretInRepr(KnownBug):
    """A secret setting shows in repr(Settings)."""


def metric(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample in Prometheus text, or None if absent."""
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    pattern = re.compile(rf"^{re.escape(name)}(\{{[^}}]*\}})? (\S+)$", re.MULTILINE)
    for match in pattern.finditer(text):
        found = (match.group(1) or "").strip("{}")
        if ",".join(sorted(found.split(","))) == wanted:
            return float(match.group(2))
    return None


@dataclass
class Observation:
    """One look at a service during a fault."""

    at: float
    healthz: int
    readyz: int
    predict: int
    kafka_connected: bool | None
    last_error: str | None
    connected_metric: float | None

    @property
    def shows_outage(self) -> bool:
        return self.kafka_connected is False or bool(self.last_error)


ROW = [0.1] * 18


def observe(service: ServiceProcess, started: float) -> Observation:
    ready_status, ready = service.request("GET", "/readyz")
    trainer = (ready.get("trainer") or {}) if isinstance(ready, dict) else {}
    predict_status, _ = service.request("POST", "/v1/models/susy:predict", {"instances": [ROW]})
    return Observation(
        at=round(time.monotonic() - started, 2),
        healthz=service.status("/healthz"),
        readyz=ready_status,
        predict=predict_status,
        kafka_connected=trainer.get("kafka_connected"),
        last_error=trainer.get("last_error"),
        connected_metric=metric(service.get_text("/metrics"), "streamfit_kafka_connected"),
    )


def committed_and_positions(service: ServiceProcess) -> dict[int, tuple[Any, Any]]:
    """Per assigned partition: (committed offset, learned position), from /lag."""
    return {
        p["partition"]: (p["committed_offset"], p["position"])
        for p in service.get("/lag")["partitions"]
    }


def group_committed(bootstrap: str, group: str, topic: str, partitions: int) -> list[int | None]:
    """The group's committed offset per partition, asked of Kafka (no group join)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    async def ask() -> list[int | None]:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False
        )
        await consumer.start()
        try:
            return [await consumer.committed(TopicPartition(topic, p)) for p in range(partitions)]
        finally:
            await consumer.stop()

    return asyncio.run(ask())


def rss_bytes(pid: int) -> int:
    """Resident set size of a process, from /proc/<pid>/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def newest_manifest_entry(directory: Path) -> dict[str, Any]:
    return json.loads((directory / MANIFEST).read_text())["checkpoints"][-1]


def assert_checkpoints_intact(directory: Path) -> list[int]:
    """Every checkpoint file loads and matches the manifest; no temporary file is left.

    Returns the versions on disk.
    """
    store = CheckpointStore(directory)
    leftovers = [p.name for p in directory.iterdir() if p.name.endswith(".tmp")]
    assert not leftovers, f"temporary files left behind: {leftovers}"
    versions = store.versions()
    assert versions, f"no checkpoint in {directory}"
    for version in versions:
        store.load(version)  # raises CheckpointError if corrupt or not matching the manifest
    listed = [int(e["version"]) for e in store.manifest()["checkpoints"]]
    missing = [v for v in listed if v not in versions]
    assert not missing, f"manifest lists versions with no file: {missing}"
    return versions
