"""Schemas: the request and response bodies of the inference protocols (pydantic)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

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
