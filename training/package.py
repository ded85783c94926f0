"""Store a TorchScript classifier and its reference profile in the BentoML model store."""

from __future__ import annotations

from typing import Any, Mapping

from monitors.reference import ReferenceProfile

WEIGHTS_FILE = "model.ts"
PROFILE_KEY = "classguard_profile"


def save_to_store(
    name: str,
    scripted: Any,
    profile: ReferenceProfile,
    *,
    labels: Mapping[str, str] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> str:
    """Create `name:<new version>` holding model.ts (TorchScript), with the profile in its metadata."""
    import bentoml
    import torch

    metadata = {PROFILE_KEY: profile.to_dict(), "format": "torchscript", "torch_version": str(torch.__version__)}
    metadata.update(extra or {})
    with bentoml.models.create(name, metadata=metadata, labels=dict(labels or {})) as model:
        torch.jit.save(scripted, model.path_of(WEIGHTS_FILE))
    return str(model.tag)


def model_exists(tag: str) -> bool:
    import bentoml
    from bentoml.exceptions import NotFound

    try:
        bentoml.models.get(tag)
    except NotFound:
        return False
    return True
