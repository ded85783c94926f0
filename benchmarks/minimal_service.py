"""The comparison point: the same TorchScript model behind the plainest BentoML endpoint
(PIL input, resize, forward, label + confidence), no monitoring, no batching."""

from __future__ import annotations

import bentoml
import numpy as np
from PIL.Image import Image


@bentoml.service(name="minimal", workers=1, logging={"access": {"enabled": False}})
class Minimal:
    model_ref = bentoml.models.BentoModel("classguard-baseline:latest")

    def __init__(self) -> None:
        import torch

        torch.set_num_threads(1)
        self.torch = torch
        self.model = torch.jit.load(self.model_ref.path_of("model.ts")).eval()

    @bentoml.api
    def classify(self, image: Image) -> dict:
        pixels = np.asarray(image.convert("L").resize((8, 8)), dtype=np.float32) / 255.0
        with self.torch.inference_mode():
            probs = self.torch.softmax(self.model(self.torch.from_numpy(pixels)[None, None]), dim=1)[0]
        best = int(probs.argmax())
        return {"label": str(best), "confidence": float(probs[best])}
