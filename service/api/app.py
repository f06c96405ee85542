"""App: assembles the FastAPI app from routers, middleware and error handlers; nothing else.

The lifespan starts the runtime (trainer or follower, by role) in the background, so the
server answers `/healthz` while a model loads.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from service import __version__
from service.api import admin, errors, health, model, v1, v2
from service.api.auth import PredictKeys
from service.api.fast_predict import add_fast_predict
from service.api.middleware import RequestContext
from service.checkpoints import store_for
from service.runtime import Runtime
from service.serving.workers import HttpWorkers
from service.settings import Settings


def create_app(
    settings: Settings, runtime: Runtime | None = None, workers: HttpWorkers | None = None
) -> FastAPI:
    """The HTTP app over `runtime` (built from `settings` if not given).

    Nothing starts until the server runs the lifespan; a test may instead start `runtime`
    itself and drive the app over ASGI.
    """
    runtime = runtime or Runtime(settings, workers)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        starting = asyncio.create_task(runtime.start())
        try:
            yield
        finally:
            await runtime.stop_starting(starting)
            await runtime.stop()

    app = FastAPI(
        title="streamfit",
        version=__version__,
        description="Online learning from Kafka into a Keras model, served over HTTP.",
        lifespan=lifespan,
    )
    app.state.runtime = runtime
    errors.install(app)
    dataplane = runtime.dataplane
    guard = PredictKeys(settings.predict_api_keys)
    app.include_router(v1.router(v1.V1Endpoints(dataplane), guard))
    app.include_router(v2.router(v2.V2Endpoints(dataplane), guard))
    app.include_router(model.router(model.ModelEndpoints(dataplane)))
    app.include_router(
        health.router(
            health.HealthEndpoints(
                dataplane,
                runtime.loopwatch,
                runtime.started_at,
                runtime.workers.metrics_dir if runtime.workers is not None else None,
            )
        )
    )
    store = store_for(settings)
    app.include_router(
        admin.router(
            admin.AdminEndpoints(settings.api_key, settings.role, store, lambda: runtime.trainer)
        )
    )
    add_fast_predict(app, dataplane, settings.predict_api_keys)
    app.add_middleware(RequestContext, max_body=settings.max_request_bytes)
    return app
