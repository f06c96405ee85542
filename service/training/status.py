"""Status: the trainer's state as `/model` and `/readyz` show it, with its metrics."""

from __future__ import annotations

import logging
from typing import Any

from service import metrics

log = logging.getLogger(__name__)

CHECKPOINT_ERROR = "checkpoint failed"


class TrainerStatus:
    """State (starting, running, paused, finished, stopped, failed, fenced), Kafka reachability
    and the last error; each change goes through a method that keeps the metrics in step."""

    def __init__(self) -> None:
        self.state = "starting"
        self.paused = False
        self.kafka_connected = False
        self.schema_registry_error: str | None = None
        self.last_error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "paused": self.paused,
            "kafka_connected": self.kafka_connected,
            "last_error": self.last_error,
            **(
                {"schema_registry_error": self.schema_registry_error}
                if self.schema_registry_error
                else {}
            ),
        }

    def consuming(self) -> None:
        self.kafka_connected, self.last_error = True, None
        self.state = "paused" if self.paused else "running"
        metrics.KAFKA_CONNECTED.set(1)
        metrics.TRAINING_ACTIVE.set(1)

    def pause(self) -> None:
        self.paused = True
        if self.state == "running":
            self.state = "paused"

    def resume(self) -> None:
        self.paused = False
        if self.state == "paused":
            self.state = "running"

    def kafka_reachable(self) -> None:
        if not self.kafka_connected:
            log.info("kafka reachable again")
            if self.last_error and not self.last_error.startswith(CHECKPOINT_ERROR):
                self.last_error = None
        self.kafka_connected = True
        metrics.KAFKA_CONNECTED.set(1)

    def kafka_unreachable(self, exc: BaseException) -> None:
        self.kafka_connected = False
        self.last_error = f"{type(exc).__name__}: {exc}"
        metrics.KAFKA_CONNECTED.set(0)

    def checkpoint_failed(self, exc: BaseException) -> None:
        self.last_error = f"{CHECKPOINT_ERROR}: {exc}"

    def checkpoint_written(self) -> None:
        if self.last_error and self.last_error.startswith(CHECKPOINT_ERROR):
            self.last_error = None

    def failed(self, exc: BaseException) -> None:
        self.last_error = f"{type(exc).__name__}: {exc}"
        self.state = "failed"

    def fenced(self, exc: BaseException) -> None:
        """Another trainer took the checkpoint prefix: this one no longer trains."""
        self.last_error = str(exc)
        self.state = "fenced"

    def finished(self) -> None:
        self.state = "finished"

    def stopped(self) -> None:
        if self.state not in ("finished", "fenced"):
            self.state = "stopped"
        metrics.TRAINING_ACTIVE.set(0)
