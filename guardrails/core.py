"""The data every guardrail reads and writes.

A guardrail is a callable; a chain is a list of them; every decision is a `Decision`
(guardrail, action, reason) so responses, metrics and incident records read the same trace.
Three kinds, told apart by `kind`:

- "route":  __call__(request, flags) -> Decision | None. Which model answers. Called before the
            model runs (flags empty) and again after the primary answered, with its flags and
            the image's region.
- "answer": __call__(request, answer) -> Answer. Changes the answer (suppress, abstain).
- "shadow": __call__(request) -> Decision | None. Which model to compare against, off the
            response path.

Each kind also has a batch form, `many`, over a batch's columns (guardrails.columns): routes
`many(requests, rows, flags) -> {row: Decision}`, answers `many(requests, answers)` in place,
shadows `many(requests) -> rows sampled`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from typing import Mapping

import numpy as np


def bucket(salt: str, key: str) -> float:
    """A stable number in [0, 1) from `key`: the same key always lands the same, and each salt
    (canary, shadow, log sampling) draws independently of the others."""
    digest = hashlib.blake2b(f"{salt}:{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


@dataclass(frozen=True)
class Decision:
    guardrail: str
    action: str
    reason: str
    model: str | None = None  # the model a route or shadow decision names

    def as_dict(self) -> dict[str, str]:
        """As a response shows it; made once per decision and shared by every response that
        carries it (a chain's constant decisions: allow, pass, shadow), so never to be changed."""
        shown = self.__dict__.get("_shown")
        if shown is None:
            shown = self.__dict__["_shown"] = {"guardrail": self.guardrail, "action": self.action,
                                               "reason": self.reason}
        return shown


@dataclass(frozen=True)
class Request:
    """What guardrails may know about a request: before any model runs, and (`region`) once
    the primary has placed the image in its embedding's codebook."""

    request_id: str
    subgroup: Mapping[str, str]
    subgroup_key: str
    alerts: frozenset[str] = frozenset()  # monitors alarming for this subgroup, e.g. "representation"
    # the primary's region of the image (`r07`, `novel`); None before the primary ran, when
    # another model answered without it, or when regions are off
    region: str | None = None

    def bucket(self, salt: str) -> float:
        """A stable number in [0, 1) from the request id: the same id always lands the same."""
        return bucket(salt, self.request_id)

    def within(self, subgroups: frozenset[str] | None, regions: frozenset[str] | None = None) -> bool:
        """Whether the request is in the named subgroups and regions (None: any). A region
        condition never matches a request with no region."""
        return ((subgroups is None or self.subgroup_key in subgroups)
                and (regions is None or self.region in regions))


@dataclass(frozen=True)
class Answer:
    """A model's output and what guardrails made of it. `label` is a class index or None when
    the service abstains; suppressed classes never appear in `top_k`."""

    model: str
    labels: tuple[str, ...]
    probs: np.ndarray
    label: int | None
    suppressed: frozenset[int] = frozenset()
    decisions: tuple[Decision, ...] = ()
    flags: tuple[str, ...] = field(default=())

    @classmethod
    def of(cls, model: str, labels: tuple[str, ...], probs: np.ndarray, flags=()) -> "Answer":
        return cls(model, labels, probs, int(np.argmax(probs)), flags=tuple(flags))

    @property
    def abstained(self) -> bool:
        return self.label is None

    @property
    def confidence(self) -> float:
        return float(self.probs[self.label]) if self.label is not None else 0.0

    def best_allowed(self) -> int | None:
        order = np.argsort(self.probs)[::-1]
        return next((int(i) for i in order if int(i) not in self.suppressed), None)

    def top_k(self, k: int) -> list[tuple[str, float]]:
        order = [int(i) for i in np.argsort(self.probs)[::-1] if int(i) not in self.suppressed]
        return [(self.labels[i], float(self.probs[i])) for i in order[:k]]

    def decided(self, decision: Decision, **changes) -> "Answer":
        return replace(self, decisions=self.decisions + (decision,), **changes)
