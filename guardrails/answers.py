"""Guardrails that change the answer: suppress labels, abstain, guard known confusions."""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from core.keys import flag_pair
from guardrails.columns import AnswerColumns, RequestColumns
from guardrails.core import Answer, Decision, Request


def _below(value: float, threshold: float) -> str:
    """`value` with as many digits as it takes to read as below `threshold` (3 rounded
    0.9996 up to a reason that said "confidence 1.000 < 1.0")."""
    for digits in (3, 6):
        text = f"{value:.{digits}f}"
        if float(text) < threshold:
            return text
    return repr(float(value))


def _names(names: Sequence[str] | None) -> frozenset[str] | None:
    return frozenset(names) if names else None


class AllowAll:
    """The null guardrail: changes nothing, records that it was asked."""

    kind = "answer"
    name = "allow_all"

    decision = Decision(name, "allow", "no guardrail configured")

    def __call__(self, request: Request, answer: Answer) -> Answer:
        return answer.decided(self.decision)

    def many(self, requests: RequestColumns, answers: AnswerColumns) -> None:
        answers.add(np.arange(len(answers)), self.decision)


class Abstain:
    """Abstain on every request in `subgroups` and `regions` (abstain on `novel`: inputs far
    from everything the model was validated on)."""

    kind = "answer"
    name = "abstain"

    def __init__(self, subgroups: Sequence[str] | None = None, regions: Sequence[str] | None = None) -> None:
        if not subgroups and not regions:
            raise ValueError("abstain needs subgroups or regions (abstaining on every request answers nothing)")
        self.subgroups, self.regions = _names(subgroups), _names(regions)

    def __call__(self, request: Request, answer: Answer) -> Answer:
        if answer.label is None or not request.within(self.subgroups, self.regions):
            return answer
        where = [f"subgroup {request.subgroup_key}"] if self.subgroups else []
        where += [f"region {request.region}"] if self.regions else []
        return answer.decided(Decision(self.name, "abstain", " and ".join(where)), label=None)

    def many(self, requests: RequestColumns, answers: AnswerColumns) -> None:
        inside = requests.within(self.subgroups, self.regions)[answers.rows] & (answers.label >= 0)
        answers.each(self, requests, np.flatnonzero(inside))


class SuppressLabels:
    """Never emit `labels` (for `subgroups` and `regions` only, if given). The best remaining label answers
    when its probability is at least `floor`; otherwise the service abstains. Suppressed
    labels are also kept out of `top_k`."""

    kind = "answer"
    name = "suppress_labels"

    def __init__(self, labels: Sequence[str], floor: float = 0.5, subgroups: Sequence[str] | None = None,
                 regions: Sequence[str] | None = None) -> None:
        if not labels:
            raise ValueError("suppress_labels needs at least one label")
        self.labels, self.floor = tuple(labels), _checked_floor(floor)
        self.subgroups, self.regions = _names(subgroups), _names(regions)
        self.passed = Decision(self.name, "pass", "answer is not a suppressed label")

    def __call__(self, request: Request, answer: Answer) -> Answer:
        if not request.within(self.subgroups, self.regions):
            return answer
        hidden = frozenset(i for i, name in enumerate(answer.labels) if name in self.labels)
        if answer.label is None or answer.label not in hidden:
            return answer.decided(self.passed, suppressed=answer.suppressed | hidden)
        return _fallback(self.name, answer, answer.suppressed | hidden, self.floor,
                         f"label {answer.labels[answer.label]} is suppressed")

    def many(self, requests: RequestColumns, answers: AnswerColumns) -> None:
        """Rows whose answer is not a suppressed label pass here; the others fall back as one
        image would."""
        inside = requests.within(self.subgroups, self.regions)[answers.rows]
        hidden = np.array([name in self.labels for name in answers.labels])
        hit = inside & (answers.label >= 0) & hidden[np.maximum(answers.label, 0)]
        passed = inside & ~hit
        answers.suppressed[passed] |= hidden
        answers.add(np.flatnonzero(passed), self.passed)
        answers.each(self, requests, np.flatnonzero(hit))


def _checked_floor(floor: float) -> float:
    if not 0.0 <= floor <= 1.0:
        raise ValueError(f"floor must be within [0, 1], got {floor}")
    return floor


def _fallback(name: str, answer: Answer, suppressed: frozenset[int], floor: float, why: str) -> Answer:
    candidate = answer.decided(Decision(name, "suppress", why), suppressed=suppressed)
    best = candidate.best_allowed()
    if best is not None and answer.probs[best] >= floor:
        return candidate.decided(Decision(name, "fallback_label", f"next allowed label {answer.labels[best]} "
                                          f"has probability {answer.probs[best]:.3f} >= {floor}"), label=best)
    return candidate.decided(Decision(name, "abstain", f"no allowed label reaches probability {floor}"), label=None)


class AbstainBelow:
    """Abstain when the answer's confidence is below `threshold` (or the subgroup's own)."""

    kind = "answer"
    name = "abstain_below"

    def __init__(self, threshold: float, per_subgroup: Mapping[str, float] | None = None) -> None:
        for value in [threshold, *(per_subgroup or {}).values()]:
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"thresholds must be within [0, 1], got {value}")
        self.threshold, self.per_subgroup = threshold, dict(per_subgroup or {})

    def __call__(self, request: Request, answer: Answer) -> Answer:
        if answer.label is None:
            return answer
        threshold = self.per_subgroup.get(request.subgroup_key, self.threshold)
        if answer.confidence >= threshold:
            return answer
        return answer.decided(Decision(self.name, "abstain", f"confidence {_below(answer.confidence, threshold)} "
                                                             f"< {threshold}"),
                              label=None)

    def many(self, requests: RequestColumns, answers: AnswerColumns) -> None:
        thresholds = requests.key_values(self.per_subgroup, self.threshold)[answers.rows]
        confidence = answers.probs[np.arange(len(answers)), np.maximum(answers.label, 0)]
        answers.each(self, requests, np.flatnonzero((answers.label >= 0) & (confidence < thresholds)))


class ConfusionGuard:
    """When a known-confusion detector fired on this prediction: abstain, or suppress the
    emitted label and fall back like suppress_labels."""

    kind = "answer"
    name = "confusion_guard"

    def __init__(self, action: str = "abstain", floor: float = 0.5, pairs: Sequence[str] | None = None,
                 subgroups: Sequence[str] | None = None, regions: Sequence[str] | None = None) -> None:
        if action not in ("abstain", "suppress"):
            raise ValueError(f"action must be 'abstain' or 'suppress', got {action!r}")
        self.action, self.floor = action, _checked_floor(floor)
        self.pairs = _names(pairs)
        self.subgroups, self.regions = _names(subgroups), _names(regions)

    def __call__(self, request: Request, answer: Answer) -> Answer:
        if answer.label is None or not request.within(self.subgroups, self.regions):
            return answer
        fired = [p for p in map(flag_pair, answer.flags) if p is not None]
        fired = [p for p in fired if self.pairs is None or p in self.pairs]
        if not fired:
            return answer
        why = f"known confusion {', '.join(fired)} fired"
        if self.action == "abstain":
            return answer.decided(Decision(self.name, "abstain", why), label=None)
        return _fallback(self.name, answer, answer.suppressed | {answer.label}, self.floor, why)

    def many(self, requests: RequestColumns, answers: AnswerColumns) -> None:
        """Only rows with a flag can have a fired pair."""
        flagged = np.fromiter((bool(f) for f in answers.flags), dtype=bool, count=len(answers))
        inside = requests.within(self.subgroups, self.regions)[answers.rows] & (answers.label >= 0)
        answers.each(self, requests, np.flatnonzero(inside & flagged))
