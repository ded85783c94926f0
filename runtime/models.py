"""The one place torch lives: load stored TorchScript classifiers and run forward passes."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from monitors.reference import ReferenceProfile
from store.model_store import PROFILE_KEY, REFERENCE_FILE, WEIGHTS_FILE


class ModelNotFound(RuntimeError):
    pass


def resolve_device(setting: str) -> str:
    import torch

    if setting == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device is set to 'cuda' but no CUDA device is available")
    if setting == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return setting


def stored_labels(stored: Any) -> list[str]:
    """A stored model's class names, from its profile, without loading it."""
    return list(stored.info.metadata.get(PROFILE_KEY, {}).get("labels", []))


def find_stored(tag: str) -> Any:
    """The stored model for `tag`, or a clear error (BentoML would otherwise try a cloud pull)."""
    import bentoml
    from bentoml.exceptions import NotFound

    try:
        return bentoml.models.get(tag)
    except NotFound:
        home = os.environ.get("BENTOML_HOME", "~/bentoml")
        raise ModelNotFound(
            f"model {tag!r} is not in the model store under BENTOML_HOME={home}; "
            "run `make train` (or `classguard import-model`) with the same BENTOML_HOME first"
        ) from None


@dataclass
class ServedModel:
    """A loaded classifier: `predict` maps N x C x H x W float32 to N x K probabilities."""

    name: str
    version: str
    role: str
    profile: ReferenceProfile
    device: str
    precision: str
    module: Any
    path: str = ""

    @property
    def tag(self) -> str:
        return f"{self.name}:{self.version}"

    @classmethod
    def load(cls, stored: Any, role: str, device: str, half: bool) -> "ServedModel":
        import torch

        metadata = stored.info.metadata
        if PROFILE_KEY not in metadata:
            raise ValueError(f"{stored.tag} has no classguard profile; import it with `classguard import-model`")
        module = torch.jit.load(stored.path_of(WEIGHTS_FILE), map_location=device).eval()
        precision = "float16" if half and device == "cuda" else "float32"
        if precision == "float16":
            module = module.half()
        return cls(stored.tag.name, stored.tag.version, role, ReferenceProfile.from_dict(metadata[PROFILE_KEY]),
                   device, precision, module, stored.path)

    def reference_rows(self) -> dict[str, np.ndarray]:
        """The validation predictions stored with the model (for drift reports)."""
        path = os.path.join(self.path, REFERENCE_FILE)
        if not os.path.exists(path):
            raise FileNotFoundError(f"{self.tag} was stored without validation predictions; retrain or re-import it")
        with np.load(path) as arrays:
            return {k: arrays[k] for k in arrays.files}

    def predict(self, batch: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            x = torch.from_numpy(batch).to(self.device, non_blocking=True)
            if self.precision == "float16":
                x = x.half()
            return torch.softmax(self.module(x).float(), dim=1).cpu().numpy()
