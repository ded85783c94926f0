"""Resolve a request's subgroup from what the client sent and what the input shows.

Values outside an attribute's declared set become `other`, so a client can never mint a new
metric label value. Pure Python: the derive functions receive the decoded image as a numpy
array scaled to [0, 1] (channels x height x width) before model normalisation. A derive
function may carry a `batch` attribute: the same inference for N images (N x C x H x W) at
once, which `resolve_many` uses.

A deriver may also read what the upload's header says about it (`ImageFacts`: its size as
sent, its format, the camera its EXIF names) by taking a second parameter, `facts`: the
resized pixels no longer know whether the upload was a 4000-pixel phone photo or a thumbnail.
A deriver that raises, or returns a value outside the attribute's set, gives `other` for that
image (never a failed request) and is counted
(`classguard_subgroup_derive_failures_total{attribute, reason}`).

Where an attribute has a deriver, the derived value decides by default (`prefer: derived`):
the subgroup is exactly what a client may not know or may misstate, and the guardrails and
monitors act on it. Trusting clients is a setting (`prefer: client`). Either way every claim
a client makes is compared with what the image shows, and counted
(`classguard_subgroup_claims_total{attribute, claimed, derived, outcome}`).
"""

from __future__ import annotations

import importlib
import inspect
import logging
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from core import metrics

OTHER = "other"
Deriver = Callable[..., str]
DERIVE_FAILURES = ("raised", "unknown")  # the `reason` label's values
_WARN_EVERY_SECONDS = 60.0
_RAISED = object()  # what `one` gives for an image its deriver raised on (already counted)
log = logging.getLogger("classguard.subgroups")


@dataclass(frozen=True)
class ImageFacts:
    """What an upload's header says about it, for derivers that take `facts`. An array upload
    has no header: its facts are the array's size and the format `npy`."""

    width: int
    height: int
    format: str  # Pillow's name: PNG, JPEG, ...; `npy` for an array upload
    camera: str | None = None  # EXIF Make and Model ("Apple iPhone 12"), when the upload carries them


def camera_of(image: Any) -> str | None:
    """EXIF Make and Model of a Pillow image, read from its header; None when absent or unreadable."""
    try:
        exif = image.getexif()
    except Exception:  # a corrupt EXIF block is the client's; the image itself may still be fine
        return None
    parts = [str(exif.get(tag, "")).strip("\x00 ") for tag in (0x010F, 0x0110)]  # Make, Model
    text = " ".join(p for p in parts if p)
    return text[:128] or None


def takes_facts(derive: Callable[..., Any]) -> bool:
    """Whether a deriver takes a second parameter (the image's facts)."""
    try:
        parameters = list(inspect.signature(derive).parameters.values())
    except (TypeError, ValueError):  # a builtin without a signature: pixels only
        return False
    positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 2 or any(p.kind == p.VAR_POSITIONAL for p in parameters)


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
        self.with_facts = {name for name, derive in self.derivers.items() if takes_facts(derive)}
        self._warned: dict[tuple[str, str], float] = {}

    @property
    def wants_facts(self) -> bool:
        """Whether any deriver reads the uploads' facts (else the preparer does not gather them)."""
        return bool(self.with_facts)

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

    def failure_labels(self) -> list[tuple[str, str]]:
        """Every label set `classguard_subgroup_derive_failures_total` can take."""
        return [(name, reason) for name in self.derivers for reason in DERIVE_FAILURES]

    def resolve(self, context: Mapping[str, Any] | None, pixels: np.ndarray,
                facts: ImageFacts | None = None) -> dict[str, str]:
        return self.resolve_many([context], pixels[None], None if facts is None else [facts])[0]

    def resolve_many(self, contexts: Sequence[Mapping[str, Any] | None], pixels: np.ndarray,
                     facts: Sequence[ImageFacts | None] | None = None) -> list[dict[str, str]]:
        """`resolve` for N images (N x C x H x W); derive functions with a `batch` form run once
        (`batch(pixels)`, or `batch(pixels, facts)` for a deriver that takes facts)."""
        facts = list(facts) if facts is not None else [None] * len(pixels)
        failures: Counter = Counter()
        batched = {}
        for name, derive in self.derivers.items():
            batch = getattr(derive, "batch", None)
            if batch is None:
                continue
            try:
                values = list(batch(pixels, facts) if name in self.with_facts else batch(pixels))
            except Exception as exc:  # the deriver's own bug: each image is tried alone below
                self._warn(name, "raised", exc)
                continue
            if len(values) == len(pixels):
                batched[name] = values
            else:
                self._warn(name, "raised", ValueError(f"batch gave {len(values)} values for {len(pixels)} images"))

        def one(name: str, i: int) -> Any:
            if name in batched:
                return batched[name][i]
            try:
                if name in self.with_facts:
                    return self.derivers[name](pixels[i], facts[i])
                return self.derivers[name](pixels[i])
            except Exception as exc:
                failures[name, "raised"] += 1
                self._warn(name, "raised", exc)
                return _RAISED

        claims: Counter = Counter()
        resolved = [self._resolve(context, lambda name, i=i: one(name, i), claims, failures)
                    for i, context in enumerate(contexts)]
        count_claims(claims)
        for (name, reason), n in failures.items():
            metrics.child(metrics.SUBGROUP_DERIVE_FAILURES, (name, reason)).inc(n)
        return resolved

    def _warn(self, name: str, reason: str, exc: BaseException) -> None:
        """One warning per attribute and reason a minute: a broken deriver fails every request."""
        now = time.monotonic()
        if now - self._warned.get((name, reason), -_WARN_EVERY_SECONDS) >= _WARN_EVERY_SECONDS:
            self._warned[name, reason] = now
            error = f"{type(exc).__name__}: {str(exc)[:200]}"
            log.warning("subgroup deriver of %s failed (%s); its images are `other`: %s", name, reason, error,
                        extra={"attribute": name, "reason": reason, "error": error})

    def _resolve(self, context: Mapping[str, Any] | None, derived: Callable[[str], Any],
                 claims: Counter, failures: Counter) -> dict[str, str]:
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
            if value is not _RAISED and seen == OTHER and value != OTHER:
                failures[name, "unknown"] += 1  # a raise is counted where it is caught
            if sent is not None:
                claims[name, claimed, seen] += 1
            resolved[name] = claimed if sent is not None and self.prefer[name] == "client" else seen
        return resolved


def count_claims(claims: Counter) -> None:
    """One increment per label set of a batch (each is a file write in multiprocess mode)."""
    for (name, claimed, seen), n in claims.items():
        outcome = "agree" if claimed == seen else "disagree"
        metrics.child(metrics.SUBGROUP_CLAIMS, (name, claimed, seen, outcome)).inc(n)
