"""Guardrails that choose which model answers (route) or is compared (shadow)."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from guardrails.columns import RequestColumns
from guardrails.core import Decision, Request, bucket

MAX_TIMEOUT_MS = 60_000.0  # a route waiting longer than a minute for its target is a stuck request


class Route:
    """Answer matching requests with `target`. A request matches when every given condition
    holds: its subgroup is in `subgroups`; the primary placed it in one of `regions`; one of
    `flags` fired on the primary's prediction;
    one of `alerts` (monitor names) is alarming for its subgroup; it falls in the `canary`
    share (deterministic by request id). If the target fails or times out, the primary
    answers and the fallback is recorded."""

    kind = "route"
    name = "route"

    def __init__(self, target: str, subgroups: Sequence[str] | None = None, flags: Sequence[str] | None = None,
                 alerts: Sequence[str] | None = None, canary: float | None = None, timeout_ms: float = 1000.0,
                 regions: Sequence[str] | None = None) -> None:
        if canary is not None and not 0.0 <= canary <= 1.0:
            raise ValueError(f"canary must be a share within [0, 1], got {canary}")
        if not 0.0 < timeout_ms <= MAX_TIMEOUT_MS:
            raise ValueError(f"timeout_ms must be within (0, {MAX_TIMEOUT_MS:g}], got {timeout_ms}")
        self.target, self.timeout_s = target, timeout_ms / 1000.0
        self.subgroups = frozenset(subgroups) if subgroups else None
        self.flags = frozenset(flags) if flags else None
        self.regions = frozenset(regions) if regions else None
        self.alerts = frozenset(alerts) if alerts else None
        self.canary = canary

    @property
    def after_primary(self) -> bool:
        """Flag and region conditions can only be judged after the primary has answered."""
        return self.flags is not None or self.regions is not None

    def __call__(self, request: Request, flags: Sequence[str] = ()) -> Decision | None:
        reasons = []
        if self.subgroups is not None:
            if request.subgroup_key not in self.subgroups:
                return None
            reasons.append(f"subgroup {request.subgroup_key}")
        if self.regions is not None:
            if request.region not in self.regions:
                return None
            reasons.append(f"region {request.region}")
        if self.flags is not None:
            hit = sorted(self.flags.intersection(flags))
            if not hit:
                return None
            reasons.append(f"flag {', '.join(hit)}")
        if self.alerts is not None:
            hit = sorted(self.alerts & request.alerts)
            if not hit:
                return None
            reasons.append(f"alert {', '.join(hit)} active")
        if self.canary is not None:
            if request.bucket("canary") >= self.canary:
                return None
            reasons.append(f"canary {self.canary:.0%}")
        return Decision(self.name, "route", "; ".join(reasons) or "every request", model=self.target)

    def many(self, requests: RequestColumns, rows: np.ndarray,
             flags: Sequence[Sequence[str]] | None = None) -> dict[int, Decision]:
        """The rows this route takes among `rows`, each with its decision: subgroup and region
        conditions judged on the columns, the rest per image on the rows they leave."""
        rows = rows[requests.within(self.subgroups, self.regions)[rows]]
        if self.flags is not None and flags is not None:
            rows = np.array([i for i in rows.tolist() if flags[i]], dtype=np.int64)
        taken = {}
        for i in rows.tolist():
            decision = self(requests.request(i), flags[i] if flags is not None else ())
            if decision is not None:
                taken[i] = decision
        return taken


class Shadow:
    """Also run `model` on a `share` of requests (deterministic by request id), off the
    response path, to measure agreement and class flips. Never changes the answer."""

    kind = "shadow"
    name = "shadow"

    def __init__(self, model: str, share: float = 1.0, subgroups: Sequence[str] | None = None,
                 regions: Sequence[str] | None = None) -> None:
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"share must be within [0, 1], got {share}")
        self.model, self.share = model, share
        self.subgroups = frozenset(subgroups) if subgroups else None
        self.regions = frozenset(regions) if regions else None
        self.sampled = Decision(self.name, "shadow", f"sampled into {self.share:.0%}", model=self.model)

    def __call__(self, request: Request) -> Decision | None:
        if not request.within(self.subgroups, self.regions):
            return None
        if request.bucket("shadow") >= self.share:
            return None
        return self.sampled

    def many(self, requests: RequestColumns) -> list[int]:
        """The rows sampled (each with the decision `sampled`)."""
        rows = np.flatnonzero(requests.within(self.subgroups, self.regions)).tolist()
        if self.share >= 1.0:  # every bucket is below 1
            return rows
        ids = requests.request_ids
        return [i for i in rows if bucket("shadow", ids[i]) < self.share]
