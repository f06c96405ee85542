"""Open Inference Protocol (KServe v2) routes: infer and model metadata."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from service.api.auth import PredictKeys
from service.api.schemas import InferRequest
from service.api.v1 import require_json
from service.serving.dataplane import DataPlane


class V2Endpoints:
    def __init__(self, dataplane: DataPlane) -> None:
        self.dataplane = dataplane

    async def infer(self, name: str, body: InferRequest) -> dict[str, Any]:
        """Open Inference Protocol: one [n, F] tensor or one input per named feature -> the
        task's output (`probability` [n, 1], `probabilities` [n, K] or `prediction` [n, 1])."""
        tensors = [(t.name, t.shape, t.datatype, t.data) for t in body.inputs]
        return await self.dataplane.infer(name, tensors, body.id)

    async def model_metadata(self, name: str) -> dict[str, Any]:
        """Open Inference Protocol model metadata."""
        return self.dataplane.model_metadata(name)


def router(endpoints: V2Endpoints, guard: PredictKeys) -> APIRouter:
    """The routes; `guard` checks the prediction key (`service.api.auth`)."""
    routes = APIRouter()
    routes.add_api_route(
        "/v2/models/{name}/infer",
        endpoints.infer,
        methods=["POST"],
        dependencies=[Depends(guard), Depends(require_json)],
        tags=["predict"],
    )
    routes.add_api_route(
        "/v2/models/{name}", endpoints.model_metadata, methods=["GET"], tags=["model"]
    )
    return routes
