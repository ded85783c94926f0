"""Resolve a request's subgroup from what the client sent and what the input shows.

Values outside an attribute's declared set become `other`, so a client can never mint a new
metric label value. Pure Python: the derive functions receive the decoded image as a numpy
array scaled to [0, 1] (channels x height x width) before model normalisation. A derive
function may carry a `batch` attribute: the same inference for N images (N x C x H x W) at
once, which `resolve_many` uses.

Where an attribute has a deriver, the derived value decides by default (`prefer: derived`):
the subgroup is exactly what a client may not know or may misstate, and the guardrails and
monitors act on it. Trusting clients is a setting (`prefer: client`). Either way every claim
a client makes is compared with what the image shows, and counted
(`classguard_subgroup_claims_total{attribute, claimed, derived, outcome}`).
"""

from __future__ import annotations

import importlib
from collections import Counter
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from core import metrics

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

    def claim_labels(self) -> list[tuple[str, str, str, str]]:
        """Every label set `classguard_subgroup_claims_total` can take (attributes with a deriver)."""
        return [(name, claimed, seen, "agree" if claimed == seen else "disagree")
                for name in self.derivers for claimed in [*sorted(self.allowed[name]), OTHER]
                for seen in [*sorted(self.allowed[name]), OTHER]]

    def resolve(self, context: Mapping[str, Any] | None, pixels: np.ndarray) -> dict[str, str]:
        claims: Counter = Counter()
        resolved = self._resolve(context, lambda name: self.derivers[name](pixels), claims)
        count_claims(claims)
        return resolved

    def resolve_many(self, contexts: Sequence[Mapping[str, Any] | None], pixels: np.ndarray) -> list[dict[str, str]]:
        """`resolve` for N images (N x C x H x W); derive functions with a `batch` form run once."""
        batched = {name: list(derive.batch(pixels)) for name, derive in self.derivers.items()
                   if getattr(derive, "batch", None) is not None}

        def derived(i: int) -> Callable[[str], str]:
            return lambda name: batched[name][i] if name in batched else self.derivers[name](pixels[i])

        claims: Counter = Counter()
        resolved = [self._resolve(context, derived(i), claims) for i, context in enumerate(contexts)]
        count_claims(claims)
        return resolved

    def _resolve(self, context: Mapping[str, Any] | None, derived: Callable[[str], str],
                 claims: Counter) -> dict[str, str]:
        """The image's subgroup; each claim a deriver can check is added to `claims` as
        (attribute, claimed value, derived value), both within the declared set or `other`."""
        resolved: dict[str, str] = {}
        context = context or {}
        for name, allowed in self.allowed.items():
            sent = context.get(name)
            claimed = sent if isinstance(sent, str) and sent in allowed else OTHER
            if name not in self.derivers:
                resolved[name] = claimed
                continue
            value = derived(name)
            seen = value if isinstance(value, str) and value in allowed else OTHER
            if sent is not None:
                claims[name, claimed, seen] += 1
            resolved[name] = claimed if sent is not None and self.prefer[name] == "client" else seen
        return resolved


def count_claims(claims: Counter) -> None:
    """One increment per label set of a batch (each is a file write in multiprocess mode)."""
    for (name, claimed, seen), n in claims.items():
        outcome = "agree" if claimed == seen else "disagree"
        metrics.child(metrics.SUBGROUP_CLAIMS, (name, claimed, seen, outcome)).inc(n)
