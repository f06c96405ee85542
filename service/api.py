"""API: the FastAPI app factory, its lifespan (trainer or follower) and every HTTP route."""

from __future__ import annotations

import hmac
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field

from service import __version__, metrics
from service.checkpoints import CheckpointError, CheckpointStore
from service.feedback import PendingPredictions
from service.follower import CheckpointFollower
from service.logs import request_id
from service.loopwatch import LoopWatch
from service.serving import MicroBatcher, ModelSnapshot, SnapshotHolder
from service.settings import Settings
from service.trainer import Trainer

log = logging.getLogger(__name__)

Number = Annotated[float, Field(strict=True, allow_inf_nan=False)]


class PredictRequest(BaseModel):
    """TF Serving / KServe v1 row format."""

    model_config = ConfigDict(extra="ignore")
    instances: list[list[Number]] = Field(min_length=1, max_length=100_000)


class PredictResponse(BaseModel):
    predictions: list[float]
    model_version: int
    request_id: str | None = None


class InferInput(BaseModel):
    name: str
    shape: list[int] = Field(min_length=2, max_length=2)
    datatype: Literal["FP32", "FP64"]
    data: list[Number] | list[list[Number]] = Field(min_length=1)


class InferRequest(BaseModel):
    """Open Inference Protocol (KServe v2) request with one FP32 input."""

    id: str | None = None
    inputs: list[InferInput] = Field(min_length=1, max_length=1)


class Runtime:
    """What the routes read: settings, the served snapshot, and the trainer or follower."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.snapshots = SnapshotHolder()
        self.batcher = MicroBatcher(self.snapshots, metrics.PREDICTION_DURATION.observe)
        self.loopwatch = LoopWatch()
        self.store = CheckpointStore(settings.checkpoint_dir, settings.checkpoint_keep)
        self.pending = (
            PendingPredictions(
                settings.num_features, settings.feedback_capacity, settings.feedback_ttl_s
            )
            if settings.labels_topic and settings.role != "predictor"
            else None
        )
        self.trainer: Trainer | None = None
        self.follower: CheckpointFollower | None = None
        self.started_at = time.time()
        self.startup_error: str | None = None

    async def start(self) -> None:
        self.loopwatch.start()
        try:
            if self.settings.role == "predictor":
                self.follower = CheckpointFollower(
                    self.store, self.snapshots, self.settings.predictor_reload_s
                )
                await self.follower.start()
            else:
                self.trainer = Trainer(self.settings, self.snapshots, self.pending)
                await self.trainer.start()
        except Exception as exc:
            self.startup_error = f"{type(exc).__name__}: {exc}"
            log.exception("start-up failed")

    async def stop(self) -> None:
        await self.loopwatch.stop()
        if self.trainer is not None:
            await self.trainer.stop()
        if self.follower is not None:
            await self.follower.stop()


def _error(status: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status)


class RequestContext:
    """Pure ASGI middleware: request id, body size limit (413), HTTP metrics."""

    def __init__(self, app: Callable[..., Awaitable[None]], max_body: int) -> None:
        self.app = app
        self.max_body = max_body

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        rid = headers.get(b"x-request-id", b"").decode("latin-1")[:128] or uuid.uuid4().hex
        token = request_id.set(rid)
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", rid.encode())]
            await send(message)

        try:
            length = headers.get(b"content-length")
            too_large = length is not None and length.isdigit() and int(length) > self.max_body
            if not too_large and length is None and scope["method"] in ("POST", "PUT", "PATCH"):
                body, too_large = await self._read_limited(receive)
                receive = _replay(body)
            if too_large:
                response = _error(413, f"request body is larger than {self.max_body} bytes")
                await response(scope, receive, send_with_id)
            else:
                await self.app(scope, receive, send_with_id)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", None) or "unmatched"
            elapsed = time.perf_counter() - started
            metrics.HTTP_REQUESTS.labels(path, scope["method"], str(status)).inc()
            metrics.HTTP_DURATION.labels(path, scope["method"]).observe(elapsed)
            request_id.reset(token)

    async def _read_limited(self, receive: Any) -> tuple[bytes, bool]:
        chunks, size = [], 0
        while True:
            message = await receive()
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                return b"", True
            chunks.append(chunk)
            if not message.get("more_body"):
                return b"".join(chunks), False


def _replay(body: bytes) -> Callable[[], Awaitable[dict[str, Any]]]:
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive


def create_app(settings: Settings) -> FastAPI:
    """The HTTP app. Nothing starts until the server runs the lifespan."""
    runtime = Runtime(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        import asyncio

        starting = asyncio.create_task(runtime.start())
        try:
            yield
        finally:
            await starting
            await runtime.stop()

    app = FastAPI(
        title="streamfit",
        version=__version__,
        description="Online learning from Kafka into a Keras model, served over HTTP.",
        lifespan=lifespan,
    )
    app.state.runtime = runtime
    app.add_middleware(RequestContext, max_body=settings.max_request_bytes)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        details = [
            {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
            for e in exc.errors()[:20]
        ]
        first = details[0] if details else {"loc": [], "msg": "invalid request"}
        where = ".".join(str(p) for p in first["loc"])
        return _error(422, f"invalid request: {where}: {first['msg']}", detail=details)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail), detail=exc.detail)

    def snapshot_for(name: str) -> ModelSnapshot:
        if name != settings.model_name:
            raise HTTPException(
                404, f"model {name!r} not found; this service serves {settings.model_name!r}"
            )
        snapshot = runtime.snapshots.current
        if snapshot is None:
            raise HTTPException(503, "no model loaded yet")
        return snapshot

    def features(rows: Any, snapshot: ModelSnapshot) -> np.ndarray:
        x = np.asarray(rows, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != snapshot.num_features:
            width = x.shape[-1] if x.ndim >= 1 and x.size else 0
            raise HTTPException(
                422, f"each instance needs {snapshot.num_features} numbers, got {width}"
            )
        if not np.isfinite(x).all():
            raise HTTPException(422, "features must be finite (float32 range)")
        return x

    async def require_json(request: Request) -> None:
        content_type = request.headers.get("content-type", "")
        if content_type.split(";")[0].strip().lower() != "application/json":
            raise HTTPException(415, f"content-type must be application/json, got {content_type!r}")

    json_only = [Depends(require_json)]

    @app.post(
        "/v1/models/{name}:predict",
        dependencies=json_only,
        responses={200: {"model": PredictResponse}},
        response_class=Response,
        tags=["predict"],
    )
    async def predict_v1(name: str, body: PredictRequest) -> Response:
        """One probability per instance, from the current model snapshot."""
        snapshot = snapshot_for(name)
        if len({len(row) for row in body.instances}) != 1:
            raise HTTPException(422, "all instances must have the same number of features")
        x = features(body.instances, snapshot)
        probabilities, version = await runtime.batcher.predict(x)
        answer: dict[str, Any] = {"predictions": probabilities.tolist(), "model_version": version}
        if runtime.pending is not None:
            rid = request_id.get() or ""
            runtime.pending.remember(rid, x)
            answer["request_id"] = rid
        # Serialized directly: FastAPI's generic encoder costs more than the model here.
        return Response(json.dumps(answer), media_type="application/json")

    @app.post("/v2/models/{name}/infer", dependencies=json_only, tags=["predict"])
    async def infer_v2(name: str, body: InferRequest) -> dict[str, Any]:
        """Open Inference Protocol: FP32 input [n, num_features] -> output `probability` [n, 1]."""
        snapshot = snapshot_for(name)
        tensor = body.inputs[0]
        try:
            flat = np.asarray(tensor.data, dtype=np.float32).reshape(-1)
        except ValueError:
            raise HTTPException(
                422, "input data must be a flat or rectangular list of numbers"
            ) from None
        n, width = tensor.shape
        if n < 1 or n * width != flat.size:
            raise HTTPException(422, f"shape {tensor.shape} does not match {flat.size} data values")
        x = features(flat.reshape(n, width), snapshot)
        probabilities, version = await runtime.batcher.predict(x)
        return {
            "model_name": name,
            "model_version": str(version),
            "id": body.id,
            "outputs": [
                {
                    "name": "probability",
                    "shape": [n, 1],
                    "datatype": "FP32",
                    "data": probabilities.tolist(),
                }
            ],
        }

    @app.get("/v1/models/{name}", tags=["model"])
    async def model_status(name: str) -> dict[str, Any]:
        """TF Serving model status."""
        snapshot = snapshot_for(name)
        return {
            "model_version_status": [
                {
                    "version": str(snapshot.version),
                    "state": "AVAILABLE",
                    "status": {"error_code": "OK", "error_message": ""},
                }
            ]
        }

    @app.get("/v2/models/{name}", tags=["model"])
    async def model_metadata(name: str) -> dict[str, Any]:
        """Open Inference Protocol model metadata."""
        snapshot = snapshot_for(name)
        return {
            "name": name,
            "versions": [str(snapshot.version)],
            "platform": "tensorflow",
            "inputs": [
                {"name": "features", "datatype": "FP32", "shape": [-1, snapshot.num_features]}
            ],
            "outputs": [{"name": "probability", "datatype": "FP32", "shape": [-1, 1]}],
        }

    @app.get("/model", tags=["model"])
    async def model_info() -> dict[str, Any]:
        """The served model: version, samples learned, newest checkpoint, prequential metrics."""
        snapshot = runtime.snapshots.current
        trainer, follower = runtime.trainer, runtime.follower
        checkpoint = None
        prequential: dict[str, Any] = {"accuracy": None, "loss": None}
        if trainer is not None:
            checkpoint = trainer.checkpoint_meta
            if trainer.learner is not None:
                window = trainer.learner.prequential
                prequential = {"accuracy": window.accuracy, "loss": window.loss}
        elif follower is not None:
            checkpoint = follower.checkpoint.metadata() if follower.checkpoint else None
            prequential = follower.prequential()
        return {
            "name": settings.model_name,
            "version": snapshot.version if snapshot else None,
            "samples_trained": snapshot.samples_trained if snapshot else 0,
            "batches_trained": snapshot.batches_trained if snapshot else 0,
            "updated_at": snapshot.updated_at if snapshot else None,
            "checkpoint": checkpoint,
            "prequential": prequential,
            "role": settings.role,
            "trainer": trainer.status() if trainer else None,
            "drift": trainer.drift_summary() if trainer and trainer.learner else None,
        }

    @app.get("/history", tags=["model"])
    async def history() -> dict[str, Any]:
        """Prequential accuracy/loss along the stream, with drift, checkpoint, rollback events."""
        trainer, follower = runtime.trainer, runtime.follower
        if trainer is not None and trainer.learner is not None:
            return dict(trainer.learner.history.state())
        if follower is not None and follower.checkpoint is not None:
            return dict(follower.checkpoint.state.get("history", {}))
        return {"every": None, "points": [], "events": []}

    @app.get("/dashboard", tags=["model"], response_class=FileResponse)
    async def dashboard() -> FileResponse:
        """A live page: learning curve, version, accuracy, lag."""
        return FileResponse(Path(__file__).with_name("dashboard.html"), media_type="text/html")

    @app.get("/lag", tags=["kafka"])
    async def lag() -> dict[str, Any]:
        """Per partition: committed offset, learned position, log-end offset and lag."""
        trainer = runtime.trainer
        rows = trainer.lag_by_partition() if trainer else []
        known = [r["lag"] for r in rows if r["lag"] is not None]
        return {
            "group_id": settings.group_id,
            "topic": settings.train_topic,
            "partitions": rows,
            "total_lag": sum(known) if rows and len(known) == len(rows) else None,
            "status": trainer.lag_health.worst() if trainer else None,
        }

    async def live() -> dict[str, Any]:
        return {
            "status": "alive",
            "uptime_s": round(time.time() - runtime.started_at, 3),
            "event_loop_lag_max_s": round(runtime.loopwatch.max_lag_s, 6),
            "event_loop_lag_recent_max_s": round(runtime.loopwatch.recent_max_lag_s, 6),
        }

    async def ready() -> JSONResponse:
        snapshot = runtime.snapshots.current
        body: dict[str, Any] = {"role": settings.role}
        if runtime.trainer is not None:
            body["trainer"] = runtime.trainer.status()
        if snapshot is None:
            reason = runtime.startup_error or "loading model"
            if runtime.follower is not None and runtime.follower.checkpoint is None:
                reason = f"waiting for a checkpoint in {settings.checkpoint_dir}"
            return JSONResponse({"status": "not ready", "reason": reason, **body}, status_code=503)
        probe = snapshot.predict(np.zeros((1, snapshot.num_features), np.float32))
        if not np.isfinite(probe).all():
            return JSONResponse(
                {"status": "not ready", "reason": "model predicts non-finite values", **body},
                status_code=503,
            )
        return JSONResponse({"status": "ready", "model_version": snapshot.version, **body})

    app.add_api_route("/healthz", live, methods=["GET"], tags=["health"], summary="Liveness")
    app.add_api_route("/v2/health/live", live, methods=["GET"], tags=["health"], summary="Liveness")
    app.add_api_route("/readyz", ready, methods=["GET"], tags=["health"], summary="Readiness")
    app.add_api_route(
        "/v2/health/ready", ready, methods=["GET"], tags=["health"], summary="Readiness"
    )

    @app.get("/metrics", tags=["health"], response_class=Response)
    async def prometheus_metrics() -> Response:
        """Prometheus text exposition."""
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    # -- admin -------------------------------------------------------------------------------

    async def require_admin(request: Request) -> None:
        if not settings.api_key:
            raise HTTPException(403, "admin routes are disabled: STREAMFIT_API_KEY is not set")
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            token.encode(), settings.api_key.encode()
        ):
            raise HTTPException(401, "missing or wrong bearer token")

    def require_trainer() -> Trainer:
        trainer = runtime.trainer
        if trainer is None or trainer.learner is None:
            raise HTTPException(409, f"no trainer in role {settings.role!r} (or not started yet)")
        return trainer

    admin = [Depends(require_admin)]

    @app.post("/admin/pause", dependencies=admin, tags=["admin"])
    async def pause() -> dict[str, Any]:
        """Stop learning (the consumer stays in its group); predictions go on."""
        trainer = require_trainer()
        trainer.paused = True
        if trainer.state == "running":
            trainer.state = "paused"
        return trainer.status()

    @app.post("/admin/resume", dependencies=admin, tags=["admin"])
    async def resume() -> dict[str, Any]:
        trainer = require_trainer()
        trainer.paused = False
        if trainer.state == "paused":
            trainer.state = "running"
        return trainer.status()

    @app.post("/admin/checkpoint", dependencies=admin, tags=["admin"])
    async def checkpoint_now() -> dict[str, Any]:
        """Write a checkpoint now (and commit its offsets)."""
        trainer = require_trainer()
        written = await trainer.checkpoint()
        return {"written": written is not None, "checkpoint": trainer.checkpoint_meta}

    @app.post("/admin/rollback/{version}", dependencies=admin, tags=["admin"])
    async def rollback(version: int) -> dict[str, Any]:
        """Go back to a retained checkpoint's model; it is saved as a new, higher version."""
        trainer = require_trainer()
        if version not in runtime.store.versions():
            raise HTTPException(404, f"checkpoint version {version} is not retained")
        try:
            written = await trainer.rollback(version)
        except CheckpointError as exc:
            raise HTTPException(409, f"checkpoint version {version} is unusable: {exc}") from exc
        return {"rolled_back_to": version, "checkpoint": written.metadata() if written else None}

    @app.get("/admin/versions", dependencies=admin, tags=["admin"])
    async def versions() -> dict[str, Any]:
        """Retained checkpoint versions (from the manifest)."""
        entries = runtime.store.manifest()["checkpoints"]
        return {
            "versions": [
                {k: e.get(k) for k in ("version", "created_at", "samples_trained", "offsets")}
                for e in entries
            ]
        }

    return app
