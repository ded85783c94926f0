"""The ceiling for /classify_batch on this stack: the plainest BentoML endpoint that takes the
same multipart `.npy` of N images and answers the same columns' core (label and confidence per
image), with the forward pass inline and nothing else: no monitors, guardrails, log, limits or
per-image metrics. What is left between it and the raw forward is BentoML, HTTP and the client."""

from __future__ import annotations

import io
from typing import Any

import bentoml
import numpy as np
from pydantic import BaseModel


class _Form(bentoml.IODescriptor):
    """Leaves the body to the endpoint, as classguard's own forms do."""

    @classmethod
    async def from_http_request(cls, request: Any, serde: Any) -> "_Form":
        return cls.model_construct()


class _Columns(BaseModel):
    answers: dict


@bentoml.service(name="bare-batch", workers=1, logging={"access": {"enabled": False}})
class BareBatch:
    model_ref = bentoml.models.BentoModel("classguard-baseline:latest")

    def __init__(self) -> None:
        import torch

        torch.set_num_threads(1)
        self.torch = torch
        self.model = torch.jit.load(self.model_ref.path_of("model.ts")).eval()

    @bentoml.api(route="/classify_batch", input_spec=_Form, output_spec=_Columns)
    async def classify_batch(self, ctx: bentoml.Context, **_: object) -> Any:
        import orjson
        from starlette.responses import Response

        form = await ctx.request.form()
        pixels = np.load(io.BytesIO(await form["array"].read()), allow_pickle=False)
        x = self.torch.from_numpy(pixels.astype(np.float32) / 255.0)[:, None]
        with self.torch.inference_mode():
            probs = self.torch.softmax(self.model(x), dim=1).numpy()
        body = {"answers": {"label": probs.argmax(1).astype(str).tolist(),
                            "confidence": probs.max(1).round(4).tolist()}}
        return Response(orjson.dumps(body), media_type="application/json")
