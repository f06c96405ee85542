"""Schemas: the request and response bodies of the inference protocols (pydantic)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Number = Annotated[float, Field(strict=True, allow_inf_nan=False)]


class PredictRequest(BaseModel):
    """TF Serving / KServe v1 row format: rows in feature order, or objects keyed by feature
    name (TF Serving's named-input rows); strings only for a model's string inputs."""

    model_config = ConfigDict(extra="ignore")
    instances: list[list[Number]] | list[dict[str, Any]] | list[list[Number | str]] = Field(
        min_length=1, max_length=100_000
    )


class PredictResponse(BaseModel):
    predictions: list[float] | list[list[float]]
    model_version: int
    request_id: str | None = None


class InferInput(BaseModel):
    name: str
    shape: list[int] = Field(min_length=1, max_length=2)
    datatype: Literal["FP32", "FP64", "INT32", "INT64", "BOOL", "BYTES"]
    data: list[Number] | list[list[Number]] | list[str] | list[list[str]] = Field(min_length=1)


class InferRequest(BaseModel):
    """Open Inference Protocol (KServe v2) request: one [n, F] tensor, or one input per
    named feature ([n] or [n, 1]; BYTES for string features)."""

    id: str | None = None
    inputs: list[InferInput] = Field(min_length=1, max_length=10_000)
