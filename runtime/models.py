"""The one place torch lives: load stored TorchScript classifiers and run forward passes."""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from monitors.estimates import PublishedEstimate
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


def stored_regions(stored: Any) -> list[str]:
    """A stored model's region names (`r00`.., `novel`), from its profile's codebook; none
    when it was profiled without one."""
    from monitors.regions import region_names

    codebook = stored.info.metadata.get(PROFILE_KEY, {}).get("regions")
    return region_names(len(codebook["prototypes"])) if codebook else []


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
    codebook: Any = None  # monitors.regions.Codebook from the profile, when the model has one and exports `embed`
    one_pass: bool = False  # `head(embed(x))` is `forward(x)`: regions cost no second pass
    new_regions: Any = None  # runtime.new_regions.NewRegionTracker: novel rows placed in the fleet's new regions

    @property
    def tag(self) -> str:
        return f"{self.name}:{self.version}"

    @functools.cached_property
    def estimate(self) -> PublishedEstimate:
        """What `estimated_accuracy` counts for this model's answers (from its profile)."""
        return PublishedEstimate.of(self.profile)

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
        profile = ReferenceProfile.from_dict(metadata[PROFILE_KEY])
        served = cls(stored.tag.name, stored.tag.version, role, profile, device, precision, module, stored.path)
        if profile.regions is not None and hasattr(module, "embed"):
            served.codebook = profile.codebook()
            served.one_pass = served._head_of_embed_is_forward()
        return served

    def _head_of_embed_is_forward(self) -> bool:
        """Whether the module's `head` applied to `embed` gives its forward pass (DigitCNN's
        layout), checked on a probe batch: then one pass yields both logits and embeddings."""
        import torch

        if not hasattr(self.module, "head"):
            return False
        spec = self.profile.input_spec
        x = torch.rand(4, spec.channels, spec.height, spec.width, generator=torch.Generator().manual_seed(0))
        x = x.to(self.device).half() if self.precision == "float16" else x.to(self.device)
        try:
            with torch.inference_mode():
                return bool(torch.allclose(self.module.head(self.module.embed(x)).float(), self.module(x).float(),
                                           rtol=1e-3, atol=1e-4))
        except Exception:  # a `head` that is not the last layer, or takes another shape
            return False

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
            return torch.softmax(self.module(self._input(batch)).float(), dim=1).cpu().numpy()

    def predict_with_regions(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Probabilities and each row's region: the codebook's index (K: novel), or a new region's
        (K + 1 + its slot) for a novel row inside one."""
        import torch

        with torch.inference_mode():
            x = self._input(batch)
            embedded = self.module.embed(x)
            logits = self.module.head(embedded) if self.one_pass else self.module(x)
            probs = torch.softmax(logits.float(), dim=1).cpu().numpy()
            vectors = embedded.float().reshape(len(batch), -1).cpu().numpy()
        regions = self.codebook.assign(vectors)
        return probs, (regions if self.new_regions is None else self.new_regions.place(vectors, regions))

    def _input(self, batch: np.ndarray) -> Any:
        import torch

        x = torch.from_numpy(batch).to(self.device, non_blocking=True)
        return x.half() if self.precision == "float16" else x
