"""Resolve a request's subgroup from what the client sent and what the input shows.

Values outside an attribute's declared set become `other`, so a client can never mint a new
metric label value. Pure Python: the derive functions receive the decoded image as a numpy
array scaled to [0, 1] (channels x height x width) before model normalisation. A derive
function may carry a `batch` attribute: the same inference for N images (N x C x H x W) at
once, which `resolve_many` uses.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from monitors.keys import subgroup_key

OTHER = "other"
Deriver = Callable[[np.ndarray], str]


def load_callable(path: str) -> Callable[..., Any]:
    """Import `package.module:function`."""
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise ValueError(f"expected 'package.module:function', got {path!r}")
    return getattr(importlib.import_module(module_name), attr)


class SubgroupResolver:
    """Built once from validated configuration; `resolve` is called per image."""

    def __init__(self, attributes: Mapping[str, Any]) -> None:
        # attributes: name -> object with .values (list[str]), .derive (str | None), .prefer
        self.allowed = {name: frozenset(a.values) for name, a in attributes.items()}
        self.derivers: dict[str, Deriver] = {
            name: load_callable(a.derive) for name, a in attributes.items() if a.derive
        }
        self.prefer = {name: a.prefer for name, a in attributes.items()}

    def keys(self) -> list[str]:
        """Every subgroup key this resolver can produce (the metric label's full value set)."""
        keys = [""]
        for name, values in self.allowed.items():
            keys = [f"{k},{name}={v}" if k else f"{name}={v}" for k in keys for v in [*sorted(values), OTHER]]
        return keys

    def resolve(self, context: Mapping[str, Any] | None, pixels: np.ndarray) -> dict[str, str]:
        return self._resolve(context, lambda name: self.derivers[name](pixels))

    def resolve_many(self, contexts: Sequence[Mapping[str, Any] | None], pixels: np.ndarray) -> list[dict[str, str]]:
        """`resolve` for N images (N x C x H x W); derive functions with a `batch` form run once."""
        batched = {name: list(derive.batch(pixels)) for name, derive in self.derivers.items()
                   if getattr(derive, "batch", None) is not None}

        def derived(i: int) -> Callable[[str], str]:
            return lambda name: batched[name][i] if name in batched else self.derivers[name](pixels[i])

        return [self._resolve(context, derived(i)) for i, context in enumerate(contexts)]

    def _resolve(self, context: Mapping[str, Any] | None, derived: Callable[[str], str]) -> dict[str, str]:
        resolved: dict[str, str] = {}
        context = context or {}
        for name, allowed in self.allowed.items():
            sent = context.get(name)
            if name in self.derivers and (sent is None or self.prefer[name] == "derived"):
                value = derived(name)
            else:
                value = sent
            resolved[name] = value if isinstance(value, str) and value in allowed else OTHER
        return resolved
