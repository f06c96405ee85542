"""Health routes: liveness, readiness (also in their Open Inference forms) and metrics."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from service.loopwatch import LoopWatch
from service.metrics import exposition
from service.serving.dataplane import liveness


class Readiness(Protocol):
    """What answers `/readyz`: the data plane, or the scorer."""

    def readiness(self) -> tuple[bool, dict[str, Any]]: ...


class HealthEndpoints:
    def __init__(
        self,
        dataplane: Readiness,
        loopwatch: LoopWatch,
        started_at: float,
        workers_metrics: Path | None = None,
    ) -> None:
        self.dataplane = dataplane
        self.loopwatch = loopwatch
        self.started_at = started_at
        self.workers_metrics = workers_metrics

    async def live(self) -> dict[str, Any]:
        return liveness(self.started_at, self.loopwatch.max_lag_s, self.loopwatch.recent_max_lag_s)

    async def ready(self) -> JSONResponse:
        ready, body = self.dataplane.readiness()
        return JSONResponse(body, status_code=200 if ready else 503)

    async def metrics(self) -> Response:
        """Prometheus text exposition (with the HTTP workers' requests and predictions)."""
        return Response(exposition(self.workers_metrics), media_type=CONTENT_TYPE_LATEST)


def router(endpoints: HealthEndpoints) -> APIRouter:
    routes = APIRouter(tags=["health"])
    for path in ("/healthz", "/v2/health/live"):
        routes.add_api_route(path, endpoints.live, methods=["GET"], summary="Liveness")
    for path in ("/readyz", "/v2/health/ready"):
        routes.add_api_route(path, endpoints.ready, methods=["GET"], summary="Readiness")
    routes.add_api_route("/metrics", endpoints.metrics, methods=["GET"], response_class=Response)
    return routes
