"""Worker app: what one HTTP worker process of a trainer serves.

The trainer's process keeps the GIL for the consumer and the learner; its HTTP workers
(`STREAMFIT_HTTP_WORKERS`, `service.serving.workers`) take the public port. A worker answers
the two prediction routes itself, from the served snapshot the trainer shares
(`service.serving.shared`), through the same routers, validation, errors, auth and metrics as
the trainer's own app; every other request (model information, lag, health, metrics, admin,
version and label routes, the dashboard) is forwarded unchanged to the trainer's app on its
private socket, so its answer means what it always meant.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import Response

from service import __version__, metrics
from service.api import errors
from service.api.auth import PredictKeys
from service.api.fast_predict import ASGIApp, FastPredict
from service.api.middleware import RequestContext
from service.api.v1 import V1Endpoints, require_json
from service.api.v2 import V2Endpoints
from service.serving.batcher import MicroBatcher
from service.serving.dataplane import DataPlane
from service.serving.shared import SnapshotReader
from service.serving.snapshot import SnapshotHolder
from service.settings import Settings

FORWARDED = "/{path:path}"  # the route of forwarded requests: the trainer's app counts them
# Hop-by-hop headers (RFC 9110 7.6.1) and the ones the worker sets itself.
_DROP_REQUEST = {"connection", "keep-alive", "transfer-encoding", "upgrade", "host"}
_DROP_RESPONSE = {
    "connection",
    "keep-alive",
    "transfer-encoding",
    "content-length",
    "x-request-id",
    "date",
    "server",
}


# One line per forwarded request would be the access log the service does not keep.
logging.getLogger("httpx").setLevel(logging.WARNING)
log = logging.getLogger(__name__)


class Forwarder:
    """Forwards a request to the trainer's app on its Unix socket and relays the answer."""

    def __init__(self, control_socket: Path, timeout_s: float = 60.0) -> None:
        self.base = httpx.URL("http://streamfit")
        self.client = httpx.AsyncClient(
            transport=httpx.AsyncHTTPTransport(uds=str(control_socket)), timeout=timeout_s
        )

    async def __call__(self, request: Request) -> Response:
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in _DROP_REQUEST]
        # The path and query exactly as the client sent them (percent-encoded), so the
        # trainer's app parses what it would have parsed itself.
        target = request.scope.get("raw_path") or request.url.path.encode()
        query = request.scope.get("query_string") or b""
        url = self.base.copy_with(raw_path=target + (b"?" + query if query else b""))
        try:
            answer = await self.client.request(
                request.method, url, headers=headers, content=await request.body()
            )
        except httpx.TransportError as exc:
            return errors.error_response(
                503, f"the trainer's process does not answer ({type(exc).__name__})"
            )
        relayed = [
            (k, v) for k, v in answer.headers.multi_items() if k.lower() not in _DROP_RESPONSE
        ]
        response = Response(answer.content, status_code=answer.status_code)
        response.raw_headers = [
            *[(k.encode("latin-1"), v.encode("latin-1")) for k, v in relayed],
            (b"content-length", str(len(answer.content)).encode()),
        ]
        return response

    async def close(self) -> None:
        await self.client.aclose()


async def _exit_with_parent(alive: Callable[[], bool]) -> None:
    while alive():
        await asyncio.sleep(0.5)
    os._exit(1)  # an orphan must not serve a model nobody trains, nor hold the port


def create_worker_app(
    settings: Settings,
    shared: Path,
    control_socket: Path,
    alive: Callable[[], bool] | None = None,
) -> ASGIApp:
    """The worker's app: the prediction routes over the shared snapshot, the rest forwarded.

    Request context (id, body limit, metrics) and the fast predict path wrap the FastAPI app
    from outside, so the common prediction request skips FastAPI's own middleware too.

    A worker loads the served model before it accepts its first connection (the trainer has
    one unless it is starting). Readiness is forwarded too, but a worker that holds no model
    yet answers 503 itself, so a client told "ready" is never answered "no model loaded" by a
    worker. `alive` (the trainer's process still runs) is polled where the kernel does not end
    orphans itself.
    """
    holder = SnapshotHolder()
    reader = SnapshotReader(shared, holder)
    forward = Forwarder(control_socket)
    dataplane = DataPlane(
        settings.model_name,
        holder,
        MicroBatcher(holder, metrics.PREDICTION_DURATION.observe),
        role=settings.role,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Everything imported and built: out of the garbage collector's reach, so a full
        # collection (tens of milliseconds over these objects) never stalls a request.
        gc.collect()
        gc.freeze()
        # The served model before the first accept (uvicorn accepts once this returns): a
        # worker started again while others serve must not take requests it answers 503.
        try:
            await asyncio.to_thread(reader.refresh)
        except Exception:
            log.exception("could not load the served model from the trainer")
        tasks = [asyncio.create_task(reader.follow(), name="streamfit-snapshot-reader")]
        if alive is not None:
            tasks.append(asyncio.create_task(_exit_with_parent(alive), name="streamfit-parent"))
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await forward.close()

    app = FastAPI(title="streamfit", version=__version__, lifespan=lifespan, openapi_url=None)
    readiness = ("/readyz", "/v2/health/ready")
    errors.install(app)
    guard = [Depends(PredictKeys(settings.predict_api_keys)), Depends(require_json)]
    routes = APIRouter()
    routes.add_api_route(
        "/v1/models/{name}:predict",
        V1Endpoints(dataplane).predict,
        methods=["POST"],
        dependencies=guard,
        response_class=Response,
    )
    routes.add_api_route(
        "/v2/models/{name}/infer",
        V2Endpoints(dataplane).infer,
        methods=["POST"],
        dependencies=guard,
    )

    async def ready(request: Request) -> Response:
        answer = await forward(request)
        if answer.status_code == 200 and holder.current is None and not reader.refresh():
            return errors.error_response(503, "this HTTP worker has not loaded the model yet")
        return answer

    for path in readiness:
        routes.add_api_route(path, ready, methods=["GET"], include_in_schema=False)
    methods = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
    routes.add_api_route(FORWARDED, forward, methods=methods, include_in_schema=False)
    app.include_router(routes)
    return RequestContext(
        FastPredict(app, dataplane, settings.predict_api_keys),
        max_body=settings.max_request_bytes,
        skip=(FORWARDED, *readiness),
    )
