"""The guardrail chain: an ordered list of guardrails and the short runner that applies it.

Routes are tried in list order and the first that matches decides the model; answer
guardrails then run in list order on that model's answer; shadow guardrails name models to
compare off the response path. Each has a batch form (`route_many`, `answer_many`,
`shadows_many`) that decides what the per-image form decides for every row (guardrails.columns).
A chain is immutable: swapping chains is replacing one
reference, so no request ever sees half of a chain.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from guardrails.columns import AnswerColumns, RequestColumns
from guardrails.core import Answer, Decision, Request


class Chain:
    def __init__(self, guardrails: Sequence, *, profile: str = "", config_hash: str = "",
                 specs: Sequence[dict] = ()) -> None:
        kinds = {g.kind for g in guardrails} - {"route", "answer", "shadow"}
        if kinds:
            raise ValueError(f"unknown guardrail kind(s) {sorted(kinds)}")
        self.guardrails = tuple(guardrails)
        self.profile, self.config_hash = profile, config_hash
        self.specs = tuple(specs)  # the validated configuration it was built from, as JSON data
        self._routes = [g for g in self.guardrails if g.kind == "route"]
        self._answers = [g for g in self.guardrails if g.kind == "answer"]
        self._shadows = [g for g in self.guardrails if g.kind == "shadow"]
        self.routes_after_primary = any(g.after_primary for g in self._routes)

    def models(self) -> set[str]:
        """Every model the chain may call: route targets and shadow models."""
        return {g.target for g in self._routes} | {g.model for g in self._shadows}

    def route(self, request: Request, flags: Sequence[str] | None = None) -> Decision | None:
        """Before the model runs (flags None): routes without flag or region conditions. After
        the primary answered: routes with them, judged on its flags and the request's region."""
        for guardrail in self._routes:
            if guardrail.after_primary == (flags is not None):
                decision = guardrail(request, flags or ())
                if decision is not None:
                    return decision
        return None

    def timeout_s(self, target: str) -> float:
        return min((g.timeout_s for g in self._routes if g.target == target), default=1.0)

    def answer(self, request: Request, answer: Answer) -> Answer:
        for guardrail in self._answers:
            answer = guardrail(request, answer)
        return answer

    def shadows(self, request: Request) -> list[Decision]:
        return [d for d in (g(request) for g in self._shadows) if d is not None]

    def route_many(self, requests: RequestColumns, rows: Sequence[int],
                   flags: Sequence[Sequence[str]] | None = None) -> dict[int, Decision]:
        """`route` for the given rows of a batch: the rows a route takes, each with its decision."""
        taken: dict[int, Decision] = {}
        if not self._routes:
            return taken
        rows = np.asarray(rows, dtype=np.int64)
        for guardrail in self._routes:
            if guardrail.after_primary == (flags is not None) and len(rows):
                found = guardrail.many(requests, rows, flags)
                if found:
                    taken.update(found)
                    rows = rows[~np.isin(rows, list(found))]
        return taken

    def answer_many(self, requests: RequestColumns, answers: AnswerColumns) -> None:
        """`answer` for every row of one model's answers, in place."""
        for guardrail in self._answers:
            guardrail.many(requests, answers)

    def shadows_many(self, requests: RequestColumns) -> list[list[Decision]]:
        """`shadows` for every row."""
        out: list[list[Decision]] = [[] for _ in range(len(requests))]
        for guardrail in self._shadows:
            for i in guardrail.many(requests):
                out[i].append(guardrail.sampled)
        return out
