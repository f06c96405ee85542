"""Open Inference Protocol (KServe v2) routes: infer and model metadata."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from service.api.schemas import InferRequest
from service.api.v1 import require_json
from service.serving.dataplane import DataPlane


class V2Endpoints:
    def __init__(self, dataplane: DataPlane) -> None:
        self.dataplane = dataplane

    async def infer(self, name: str, body: InferRequest) -> dict[str, Any]:
        """Open Inference Protocol: FP32 input [n, num_features] -> output `probability` [n, 1]."""
        tensor = body.inputs[0]
        return await self.dataplane.infer(name, tensor.shape, tensor.data, body.id)

    async def model_metadata(self, name: str) -> dict[str, Any]:
        """Open Inference Protocol model metadata."""
        return self.dataplane.model_metadata(name)


def router(endpoints: V2Endpoints) -> APIRouter:
    routes = APIRouter()
    routes.add_api_route(
        "/v2/models/{name}/infer",
        endpoints.infer,
        methods=["POST"],
        dependencies=[Depends(require_json)],
        tags=["predict"],
    )
    routes.add_api_route(
        "/v2/models/{name}", endpoints.model_metadata, methods=["GET"], tags=["model"]
    )
    return routes
