"""TF Serving / KServe v1 routes: predict and model status, thin over the data plane."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from service.api.auth import PredictKeys
from service.api.schemas import PredictRequest, PredictResponse
from service.errors import UnsupportedMediaType
from service.logs import request_id
from service.serving.dataplane import DataPlane


async def require_json(request: Request) -> None:
    """Inference bodies are JSON (415 otherwise)."""
    content_type = request.headers.get("content-type", "")
    if content_type.split(";")[0].strip().lower() != "application/json":
        raise UnsupportedMediaType(f"content-type must be application/json, got {content_type!r}")


class V1Endpoints:
    def __init__(self, dataplane: DataPlane) -> None:
        self.dataplane = dataplane

    async def predict(self, name: str, body: PredictRequest) -> Response:
        """One prediction per instance (the task's form), from the current model snapshot."""
        answer = await self.dataplane.predict(name, body.instances, request_id.get())
        # Serialized directly: FastAPI's generic encoder costs more than the model here.
        return Response(json.dumps(answer), media_type="application/json")

    async def predict_version(self, name: str, version: int, body: PredictRequest) -> Response:
        """TF Serving's version route: exactly the stored weights of `version`."""
        answer = await self.dataplane.predict(name, body.instances, version=version)
        return Response(json.dumps(answer), media_type="application/json")

    async def predict_label(self, name: str, label: str, body: PredictRequest) -> Response:
        """TF Serving's label route: `stable` (served), `latest`, `challenger`."""
        answer = await self.dataplane.predict(name, body.instances, label=label)
        return Response(json.dumps(answer), media_type="application/json")

    async def model_status(self, name: str) -> dict[str, Any]:
        """TF Serving model status."""
        return self.dataplane.model_status(name)


def router(endpoints: V1Endpoints, guard: PredictKeys) -> APIRouter:
    """The routes; `guard` checks the prediction key (`service.api.auth`)."""
    routes = APIRouter()
    routes.add_api_route(
        "/v1/models/{name}:predict",
        endpoints.predict,
        methods=["POST"],
        dependencies=[Depends(guard), Depends(require_json)],
        responses={200: {"model": PredictResponse}},
        response_class=Response,
        tags=["predict"],
    )
    for path, endpoint in (
        ("/v1/models/{name}/versions/{version}:predict", endpoints.predict_version),
        ("/v1/models/{name}/labels/{label}:predict", endpoints.predict_label),
    ):
        routes.add_api_route(
            path,
            endpoint,
            methods=["POST"],
            dependencies=[Depends(guard), Depends(require_json)],
            responses={200: {"model": PredictResponse}},
            response_class=Response,
            tags=["predict"],
        )
    routes.add_api_route(
        "/v1/models/{name}", endpoints.model_status, methods=["GET"], tags=["model"]
    )
    return routes
