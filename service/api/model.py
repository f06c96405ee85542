"""Model routes: what the served model is and has learned (`/model`, `/history`, `/lag`), and
the live dashboard page."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter
from fastapi.responses import FileResponse

from service.serving.dataplane import DataPlane

DASHBOARD = Path(__file__).with_name("dashboard.html")


class ModelEndpoints:
    def __init__(self, dataplane: DataPlane) -> None:
        self.dataplane = dataplane

    async def model_info(self) -> dict[str, Any]:
        """The served model: version, samples learned, newest checkpoint, prequential metrics."""
        return self.dataplane.model_info()

    async def history(self) -> dict[str, Any]:
        """Prequential accuracy/loss along the stream, with drift, checkpoint, rollback events."""
        return self.dataplane.history()

    async def lag(self) -> dict[str, Any]:
        """Per partition: committed offset, learned position, log-end offset and lag."""
        return self.dataplane.lag()

    async def dashboard(self) -> FileResponse:
        """A live page: learning curve, version, accuracy, lag."""
        return FileResponse(DASHBOARD, media_type="text/html")


def router(endpoints: ModelEndpoints) -> APIRouter:
    routes = APIRouter()
    routes.add_api_route("/model", endpoints.model_info, methods=["GET"], tags=["model"])
    routes.add_api_route("/history", endpoints.history, methods=["GET"], tags=["model"])
    routes.add_api_route(
        "/dashboard",
        endpoints.dashboard,
        methods=["GET"],
        tags=["model"],
        response_class=FileResponse,
    )
    routes.add_api_route("/lag", endpoints.lag, methods=["GET"], tags=["kafka"])
    return routes
