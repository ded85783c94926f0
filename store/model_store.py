"""Store a TorchScript classifier and its reference profile in the BentoML model store."""

from __future__ import annotations

from typing import Any, Mapping

from monitors.reference import ReferenceProfile

WEIGHTS_FILE = "model.ts"
REFERENCE_FILE = "reference.npz"  # validation predictions, for on-demand drift reports
PROFILE_KEY = "classguard_profile"


def split_tag(tag: str) -> tuple[str, str]:
    """`name:version` -> (name, version); a bare name has the version `latest`."""
    name, _, version = tag.partition(":")
    return name, version or "latest"


def reference_rows(logits: Any, labels: Any, subgroups: Any) -> dict[str, Any]:
    """Per validation image: subgroup key, predicted class index, top-class probability, label."""
    import numpy as np

    from monitors.reference import softmax

    probs = softmax(np.asarray(logits, dtype=np.float64))
    return {"subgroup": np.asarray(subgroups, dtype=str), "predicted": probs.argmax(axis=1),
            "confidence": probs.max(axis=1), "label": np.asarray(labels)}


def save_to_store(
    name: str,
    scripted: Any,
    profile: ReferenceProfile,
    *,
    labels: Mapping[str, str] | None = None,
    extra: Mapping[str, Any] | None = None,
    reference: Mapping[str, Any] | None = None,
) -> str:
    """Create `name:<new version>` holding model.ts (TorchScript), with the profile in its metadata."""
    import bentoml
    import torch

    metadata = {PROFILE_KEY: profile.to_dict(), "format": "torchscript", "torch_version": str(torch.__version__)}
    metadata.update(extra or {})
    with bentoml.models.create(name, metadata=metadata, labels=dict(labels or {})) as model:
        torch.jit.save(scripted, model.path_of(WEIGHTS_FILE))
        if reference is not None:
            import numpy as np

            np.savez(model.path_of(REFERENCE_FILE), **reference)
    return str(model.tag)


def model_exists(tag: str) -> bool:
    import bentoml
    from bentoml.exceptions import NotFound

    try:
        bentoml.models.get(tag)
    except NotFound:
        return False
    return True
