"""Data plane: every answer the HTTP routes give, computed without HTTP.

The routes (`service.api`) parse requests and serialize answers; this object checks inputs
against the served model, predicts, and reads the model source (a trainer, or the predictor
role's checkpoint follower: both answer the `ModelSource` questions). It raises the domain
errors of `service.errors`, which the API maps to status codes in one place.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from service.errors import InvalidInput, ModelNotFound, ModelNotReady
from service.feedback import PendingPredictions
from service.model.inputs import Batch, batch_rows
from service.serving.batcher import MicroBatcher
from service.serving.snapshot import ModelSnapshot, SnapshotHolder
from service.serving.versions import StoredVersions


class ModelSource(Protocol):
    """What the data plane asks of whatever keeps the served model current."""

    def checkpoint_info(self) -> dict[str, Any] | None: ...
    def prequential(self) -> dict[str, Any]: ...
    def history(self) -> dict[str, Any]: ...
    def not_ready_reason(self) -> str: ...
    def trainer_status(self) -> dict[str, Any] | None: ...
    def drift_summary(self) -> dict[str, Any] | None: ...
    def lag_rows(self) -> list[dict[str, Any]]: ...
    def lag_status(self) -> str | None: ...
    def serving_info(self) -> dict[str, Any] | None: ...
    def latest_snapshot(self) -> ModelSnapshot | None: ...
    def challenger_snapshot(self) -> ModelSnapshot | None: ...
    def challenger_info(self) -> dict[str, Any] | None: ...


class DataPlane:
    """Predictions and model information for one served model (`model_name`)."""

    def __init__(
        self,
        model_name: str,
        snapshots: SnapshotHolder,
        batcher: MicroBatcher,
        role: str = "all",
        group_id: str | None = None,
        topic: str | None = None,
        pending: PendingPredictions | None = None,
        versions: StoredVersions | None = None,
    ) -> None:
        self.model_name = model_name
        self.versions = versions
        self.snapshots = snapshots
        self.batcher = batcher
        self.role = role
        self.group_id = group_id
        self.topic = topic
        self.pending = pending
        self.source: ModelSource | None = None
        self.startup_error: str | None = None

    # -- inference ---------------------------------------------------------------------------

    def snapshot(self, name: str) -> ModelSnapshot:
        """The served snapshot of model `name`."""
        if name != self.model_name:
            raise ModelNotFound(
                f"model {name!r} not found; this service serves {self.model_name!r}"
            )
        snapshot = self.snapshots.current
        if snapshot is None:
            raise ModelNotReady("no model loaded yet")
        return snapshot

    @staticmethod
    def features(rows: Any, snapshot: ModelSnapshot) -> Batch:
        """Instances (rows in feature order, or objects keyed by feature name) as the model's
        input; InvalidInput naming what does not fit."""
        inputs = snapshot.input_spec
        if rows and all(isinstance(row, dict) for row in rows):
            if not inputs.has_names:
                raise InvalidInput(
                    "this model's features have no names (set STREAMFIT_FEATURES): send rows"
                )
            batch, errors = inputs.from_objects(rows)
            if errors:
                index, (_, detail) = min(errors.items())
                raise InvalidInput(f"instance {index}: {detail}")
            return batch
        if any(isinstance(row, dict) for row in rows):
            raise InvalidInput("instances must be all rows or all objects")
        try:
            return inputs.from_rows(rows)
        except ValueError as exc:
            raise InvalidInput(str(exc)) from None

    async def chosen(
        self, name: str, version: int | None = None, label: str | None = None
    ) -> ModelSnapshot | None:
        """The snapshot a version or label route names (None: the served one, batched).

        Labels: `stable` is the served version, `latest` the newest model (the trainer's live
        one, fresher than its checkpoint; a predictor's newest stored version), `challenger`
        the challenger model when one learns beside the champion.
        """
        if version is None and label in (None, "stable"):
            return None  # the served one: `predict` checks the name
        self.snapshot(name)  # the name exists and something is served
        if version is not None:
            return await self._stored().get(version)
        if label == "latest":
            live = self.source.latest_snapshot() if self.source else None
            return live if live is not None else await self._stored().newest()
        if label == "challenger":
            challenger = self.source.challenger_snapshot() if self.source else None
            if challenger is not None:
                return challenger
            if self.role == "predictor":
                raise ModelNotFound(
                    "the challenger is the trainer's live model: a predictor does not serve it"
                )
            raise ModelNotFound("no challenger model (STREAMFIT_CHALLENGER_MODEL is not set)")
        raise ModelNotFound(f"unknown label {label!r}: stable, latest or challenger")

    def _stored(self) -> StoredVersions:
        if self.versions is None:
            raise ModelNotFound("no stored versions")
        return self.versions

    async def predict(
        self,
        name: str,
        instances: list[Any],
        request_id: str | None = None,
        version: int | None = None,
        label: str | None = None,
    ) -> dict[str, Any]:
        """TF Serving / KServe v1: one prediction per instance, and the model version; from
        the served model, or the stored `version`, or the model a `label` names.

        With delayed labels on, rows predicted by the served model are kept under
        `request_id` for the label to join.
        """
        chosen = await self.chosen(name, version, label)
        if chosen is not None:
            x = self.features(instances, chosen)
            outputs = chosen.predict(x)
            return {"predictions": outputs.tolist(), "model_version": chosen.version}
        snapshot = self.snapshot(name)
        x = self.features(instances, snapshot)
        predictions, served = await self.batcher.predict(x)
        answer: dict[str, Any] = {"predictions": predictions.tolist(), "model_version": served}
        if self.pending is not None and isinstance(x, np.ndarray):
            self.pending.remember(request_id or "", x)
            answer["request_id"] = request_id or ""
        return answer

    async def infer(
        self,
        name: str,
        tensors: Sequence[tuple[str, list[int], str, list[Any]]],
        request_id: str | None,
    ) -> dict[str, Any]:
        """Open Inference Protocol: one [n, F] tensor, or one input per named feature ->
        the task's output."""
        snapshot = self.snapshot(name)
        inputs = snapshot.input_spec
        if len(tensors) == 1 and tensors[0][0] not in inputs.names:
            x = self._tensor(tensors[0], snapshot)
        else:
            x = self._named_tensors(tensors, snapshot)
        predictions, version = await self.batcher.predict(x)
        n = batch_rows(x)
        task = snapshot.task
        return {
            "model_name": name,
            "model_version": str(version),
            "id": request_id,
            "outputs": [
                {
                    "name": task.output_name,
                    "shape": [n, task.outputs],
                    "datatype": "FP32",
                    "data": predictions.reshape(-1).tolist(),
                }
            ],
        }

    def _tensor(
        self, tensor: tuple[str, list[int], str, list[Any]], snapshot: ModelSnapshot
    ) -> Batch:
        _, shape, _, data = tensor
        if len(shape) != 2:
            raise InvalidInput(f"a single input must have shape [n, {snapshot.num_features}]")
        try:
            flat = np.asarray(data, dtype=np.float32).reshape(-1)
        except ValueError:
            raise InvalidInput("input data must be a flat or rectangular list of numbers") from None
        n, width = shape
        if n < 1 or n * width != flat.size:
            raise InvalidInput(f"shape {shape} does not match {flat.size} data values")
        if width != snapshot.num_features:
            raise InvalidInput(f"each instance needs {snapshot.num_features} numbers, got {width}")
        if not np.isfinite(flat).all():
            raise InvalidInput("features must be finite (float32 range)")
        return snapshot.input_spec.from_matrix(flat.reshape(n, width))

    def _named_tensors(
        self, tensors: Sequence[tuple[str, list[int], str, list[Any]]], snapshot: ModelSnapshot
    ) -> Batch:
        inputs = snapshot.input_spec
        given = {name: (shape, data) for name, shape, _, data in tensors}
        unknown = [name for name in given if name not in inputs.names]
        if unknown:
            raise InvalidInput(
                f"unknown input {unknown[0]!r}; the model takes "
                f"{', '.join(inputs.names) or f'one [n, {inputs.width}] tensor'}"
            )
        missing = [name for name in inputs.names if name not in given]
        if missing:
            raise InvalidInput(f"input {missing[0]!r} is missing")
        columns: dict[str, list[Any]] = {}
        sizes = set()
        for name in inputs.names:
            shape, data = given[name]
            flat = [v for row in data for v in row] if data and isinstance(data[0], list) else data
            if len(shape) == 2 and shape[1] != 1 or shape[0] != len(flat):
                raise InvalidInput(
                    f"input {name!r}: shape {shape} does not match {len(flat)} values"
                )
            columns[name] = flat
            sizes.add(len(flat))
        if len(sizes) != 1:
            raise InvalidInput("named inputs must have the same number of instances")
        rows = [
            dict(zip(columns, values, strict=True))
            for values in zip(*columns.values(), strict=True)
        ]
        return self.features(rows, snapshot)

    # -- model information -------------------------------------------------------------------

    def model_status(self, name: str) -> dict[str, Any]:
        """TF Serving model status."""
        snapshot = self.snapshot(name)
        return {
            "model_version_status": [
                {
                    "version": str(snapshot.version),
                    "state": "AVAILABLE",
                    "status": {"error_code": "OK", "error_message": ""},
                }
            ]
        }

    def model_metadata(self, name: str) -> dict[str, Any]:
        """Open Inference Protocol model metadata."""
        snapshot = self.snapshot(name)
        inputs = snapshot.input_spec
        task = snapshot.task
        if inputs.named:
            described = [
                {"name": n, "datatype": "BYTES" if kind == "string" else "FP32", "shape": [-1, 1]}
                for n, kind in zip(inputs.names, inputs.kinds, strict=True)
            ]
        else:
            described = [{"name": "features", "datatype": "FP32", "shape": [-1, inputs.width]}]
        return {
            "name": name,
            "versions": [str(snapshot.version)],
            "platform": "tensorflow",
            "inputs": described,
            "outputs": [
                {"name": task.output_name, "datatype": "FP32", "shape": [-1, task.outputs]}
            ],
        }

    def model_info(self) -> dict[str, Any]:
        """The served model: version, samples learned, newest checkpoint, prequential metrics."""
        snapshot = self.snapshots.current
        source = self.source
        serving = source.serving_info() if source else None
        return {
            "name": self.model_name,
            "version": snapshot.version if snapshot else None,
            "served_version": snapshot.version if snapshot else None,
            "latest_version": serving.get("latest_version") if serving else None,
            "latest_samples_trained": serving.get("latest_samples_trained") if serving else None,
            "serving": serving,
            "samples_trained": snapshot.samples_trained if snapshot else 0,
            "batches_trained": snapshot.batches_trained if snapshot else 0,
            "updated_at": snapshot.updated_at if snapshot else None,
            "task": snapshot.task.kind if snapshot else None,
            "classes": list(snapshot.task.classes) if snapshot else None,
            "model": snapshot.spec if snapshot else None,
            "features": list(snapshot.input_spec.names) if snapshot else None,
            "checkpoint": source.checkpoint_info() if source else None,
            "prequential": source.prequential() if source else {"accuracy": None, "loss": None},
            "role": self.role,
            "trainer": source.trainer_status() if source else None,
            "drift": source.drift_summary() if source else None,
            "challenger": source.challenger_info() if source else None,
        }

    def history(self) -> dict[str, Any]:
        """Prequential accuracy/loss along the stream, with drift, checkpoint, rollback events."""
        if self.source is None:
            return {"every": None, "points": [], "events": []}
        return self.source.history()

    def lag(self) -> dict[str, Any]:
        """Per partition: committed offset, learned position, log-end offset and lag."""
        rows = self.source.lag_rows() if self.source else []
        known = [r["lag"] for r in rows if r["lag"] is not None]
        return {
            "group_id": self.group_id,
            "topic": self.topic,
            "partitions": rows,
            "total_lag": sum(known) if rows and len(known) == len(rows) else None,
            "status": self.source.lag_status() if self.source else None,
        }

    # -- health ------------------------------------------------------------------------------

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """(ready, body): a model is loaded and predicts finite values. A Kafka outage does
        not make the service unready; it shows in the body (`trainer`)."""
        body: dict[str, Any] = {"role": self.role}
        status = self.source.trainer_status() if self.source else None
        if status is not None:
            body["trainer"] = status
        snapshot = self.snapshots.current
        if snapshot is None:
            reason = self.startup_error or (
                self.source.not_ready_reason() if self.source else "loading model"
            )
            return False, {"status": "not ready", "reason": reason, **body}
        with np.errstate(invalid="ignore", over="ignore"):  # a broken model answers NaN
            probe = snapshot.outputs(snapshot.input_spec.probe())
        if not np.isfinite(probe).all():
            return False, {
                "status": "not ready",
                "reason": "model predicts non-finite values",
                **body,
            }
        return True, {"status": "ready", "model_version": snapshot.version, **body}


def liveness(started_at: float, max_lag_s: float, recent_max_lag_s: float) -> dict[str, Any]:
    """The process and its event loop answer: uptime and how late the loop has run timers."""
    return {
        "status": "alive",
        "uptime_s": round(time.time() - started_at, 3),
        "event_loop_lag_max_s": round(max_lag_s, 6),
        "event_loop_lag_recent_max_s": round(recent_max_lag_s, 6),
    }
