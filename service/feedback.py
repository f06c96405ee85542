"""Feedback: served predictions waiting for labels that arrive later on a labels topic.

With `STREAMFIT_LABELS_TOPIC` set, every `:predict` request's rows are remembered under its
request id (the `X-Request-ID` header, or a generated one returned in the response). A label
record on the labels topic, key = request id, value = `0`/`1` (one instance) or a JSON list of
0/1 (one per instance), joins them into training rows. The store is bounded by rows and age
and lives in memory: labels for predictions served before a restart, or evicted, go to the
dead-letter topic as `unknown_request`.
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from typing import Any

import numpy as np

from service.codec import DecodedBatch, Reject
from service.model.task import LabelError, Task


class PendingPredictions:
    """Rows served per request id, oldest first; bounded by `capacity_rows` and `ttl_s`."""

    def __init__(
        self,
        num_features: int,
        capacity_rows: int = 100_000,
        ttl_s: float = 3600.0,
        task: Task | None = None,
    ):
        self.num_features = num_features
        self.task = task or Task()
        self.capacity_rows = capacity_rows
        self.ttl_s = ttl_s
        self._rows = 0
        self._entries: OrderedDict[str, tuple[float, np.ndarray]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def remember(self, request_id: str, x: np.ndarray) -> None:
        """Keep the rows of one served request until its labels come (or it expires)."""
        now = time.monotonic()
        old = self._entries.pop(request_id, None)
        if old is not None:
            self._rows -= old[1].shape[0]
        self._entries[request_id] = (now, x)
        self._rows += x.shape[0]
        while self._entries and (
            self._rows > self.capacity_rows
            or next(iter(self._entries.values()))[0] < now - self.ttl_s
        ):
            _, (_, evicted) = self._entries.popitem(last=False)
            self._rows -= evicted.shape[0]

    def join(self, records: list[Any]) -> tuple[DecodedBatch, list[str]]:
        """Training rows for label records (not yet forgotten), and the ids they used."""
        features: list[np.ndarray] = []
        labels: list[np.ndarray] = []
        rejects: list[Reject] = []
        used: list[str] = []
        for record in records:
            if record.key is None:
                rejects.append(
                    Reject(record, "missing_key", "label record needs the request id as key")
                )
                continue
            request_id = record.key.decode("utf-8", errors="replace")
            entry = self._entries.get(request_id)
            if entry is None or request_id in used:
                rejects.append(
                    Reject(record, "unknown_request", f"no pending prediction {request_id[:64]!r}")
                )
                continue
            rows = entry[1]
            try:
                parsed = json.loads(record.value or b"")
            except ValueError:
                parsed = None
            values = parsed if isinstance(parsed, list) else [parsed]
            if self.task.is_default_binary:
                labels_or_errors = [
                    float(v)
                    if v in (0, 1) and not isinstance(v, bool)
                    else LabelError("bad_label", "")
                    for v in values
                ]
            else:
                labels_or_errors = [self.task.label(v) for v in values]
            error = next((e for e in labels_or_errors if isinstance(e, LabelError)), None)
            if error is not None:
                detail = error.detail or "labels must be 0/1 or a list of 0/1"
                rejects.append(Reject(record, error.reason, detail))
                continue
            if len(values) != rows.shape[0]:
                rejects.append(
                    Reject(record, "width", f"{len(values)} labels for {rows.shape[0]} instances")
                )
                continue
            features.append(rows)
            labels.append(np.asarray(labels_or_errors, dtype=np.float32))
            used.append(request_id)
        if not features:
            empty = np.empty((0, self.num_features), np.float32)
            return DecodedBatch(empty, np.empty((0,), np.float32), rejects), used
        return DecodedBatch(np.concatenate(features), np.concatenate(labels), rejects), used

    def forget(self, request_ids: list[str]) -> None:
        """Drop requests whose labels have been learned."""
        for request_id in request_ids:
            entry = self._entries.pop(request_id, None)
            if entry is not None:
                self._rows -= entry[1].shape[0]
