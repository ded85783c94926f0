"""Request and response shapes, as the OpenAPI document (/docs.json) describes them."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import bentoml
from bentoml.validators import ContentType
from pydantic import BaseModel, Field


class _DeferredForm(bentoml.IODescriptor):
    """Documents a multipart form but leaves parsing to the endpoint (service.http_input),
    which enforces size limits and answers bad input with clear 4xx errors."""

    @classmethod
    async def from_http_request(cls, request: Any, serde: Any) -> "_DeferredForm":
        return cls.model_construct(**{name: None for name in cls.model_fields})


class ClassifyForm(_DeferredForm):
    image: Annotated[Path, ContentType("image/*")] = Field(description="any PIL-readable image, any size")
    context: Optional[str] = Field(None, description='JSON object of subgroup attributes, e.g. {"capture": "phone"}')


class ClassifyBatchForm(_DeferredForm):
    # no Optional around the file types: BentoML's schema conversion cannot hash them in a Union
    images: list[Annotated[Path, ContentType("image/*")]] = Field(
        None, description="repeat the field once per image (or send `array`)")
    array: Annotated[Path, ContentType("application/octet-stream")] = Field(
        None, description="instead of images: one NumPy .npy of N images at the model's input size, "
                          "uint8 (0-255) or float (0-1), N x H x W or N x C x H x W")
    contexts: Optional[list[str]] = Field(None, description="one JSON object per image, or one JSON array")


class FeedbackItem(BaseModel):
    request_id: str = Field(description="the answer's request_id, or the client's correlation id if it names one answer")
    label: str = Field(description="the true class name")


class FeedbackForm(_DeferredForm):
    request_id: Optional[str] = Field(None, description="one item: the answered request's id")
    label: Optional[str] = Field(None, description="one item: its true label")
    items: Optional[list[FeedbackItem]] = Field(None, description="or many items at once (at most 1,000)")


class FeedbackResponse(BaseModel):
    recorded: int
    results: list[dict[str, Any]] = Field(description="per item: request_id, result, status, detail")


class TopK(BaseModel):
    label: str
    probability: float


class Decision(BaseModel):
    guardrail: str
    action: str
    reason: str


class Prediction(BaseModel):
    request_id: str = Field(description="the service's id of this answer (also the X-Request-ID response header)")
    correlation_id: Optional[str] = Field(None, description="the client's X-Request-ID, when it sent a valid one")
    label: Optional[str] = Field(description="null when the service abstains")
    confidence: float
    top_k: list[TopK]
    abstained: bool
    model: str = Field(description="name:version of the model that produced the answer")
    subgroup: dict[str, str]
    guardrails: list[Decision]
    flags: list[str]


class BatchResponse(BaseModel):
    request_id: str
    correlation_id: Optional[str] = None
    model: str
    results: list[dict[str, Any]] = Field(description="in upload order: a prediction, or an error for that image")
