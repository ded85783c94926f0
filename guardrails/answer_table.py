"""A batch's answers as columns: what Serving decides, the log records and the endpoints render.

Row i is the batch's i-th image. Two renderings of the same table:

- `rows()`: a dict per answer (service/schemas.Prediction), the default response format;
- `columns()`: one object of arrays, for clients that read columns (`?format=columns`): no
  dict per answer to build on the server or to parse on the client. Subgroups and guardrail
  decisions repeat across a batch, so they are dictionary-encoded (as Arrow's dictionary
  arrays are): each distinct one once, and per row its index (for decisions, a list of them).

tests/runtime/test_serving.py holds the two equal answer by answer over random chains.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from guardrails.core import Decision

QUIET_ACTIONS = frozenset({"allow", "pass", "shadow"})  # guardrail actions that do not make an answer "flagged"


@dataclass(eq=False)
class AnswerTable:
    request_ids: Sequence[str]
    correlation_ids: Sequence[str | None]
    labels: list[str | None]  # the emitted class; None: abstained
    confidences: list[float]  # as shown: rounded to 6 places
    top_labels: list[list[str]]  # each row's top-k classes by falling probability, suppressed ones left out
    top_probabilities: list[list[float]]
    models: list[str]  # name:version of the model that answered
    subgroups: Sequence[Mapping[str, str]]
    decisions: list[list[Decision]]  # the trace: routes, answer guardrails, shadows
    flags: list[list[str]]

    def __len__(self) -> int:
        return len(self.labels)

    def flagged(self, i: int) -> bool:
        """Whether answer i is one the log keeps in every mode: a flag, an abstention, or a
        guardrail that did more than let it pass."""
        return bool(self.flags[i]) or self.labels[i] is None or any(
            d.action not in QUIET_ACTIONS for d in self.decisions[i])

    def top_k(self, i: int) -> list[dict[str, Any]]:
        return [{"label": label, "probability": p} for label, p in zip(self.top_labels[i], self.top_probabilities[i])]

    def row(self, i: int) -> dict[str, Any]:
        """Answer i as the client gets it in the per-answer format."""
        label = self.labels[i]
        return {
            "request_id": self.request_ids[i],
            "correlation_id": self.correlation_ids[i],
            "label": label,
            "confidence": self.confidences[i],
            "top_k": self.top_k(i),
            "abstained": label is None,
            "model": self.models[i],
            "subgroup": dict(self.subgroups[i]),
            "guardrails": [d.as_dict() for d in self.decisions[i]],
            "flags": list(self.flags[i]),
        }

    def rows(self) -> list[dict[str, Any]]:
        return [self.row(i) for i in range(len(self))]

    def columns(self) -> dict[str, Any]:
        """The columnar format: an array per field, row i of each the i-th answer. Row i's
        subgroup is `subgroups[subgroup[i]]`, its decisions `[decisions[j] for j in guardrails[i]]`."""
        subgroups: dict[tuple, int] = {}
        subgroup = [subgroups.setdefault(tuple(s.items()), len(subgroups)) for s in self.subgroups]
        decisions: dict[Decision, int] = {}
        guardrails = [[decisions.setdefault(d, len(decisions)) for d in trace] for trace in self.decisions]
        return {
            "request_id": self.request_ids,
            "correlation_id": self.correlation_ids,
            "label": self.labels,
            "confidence": self.confidences,
            "abstained": [label is None for label in self.labels],
            "top_k_labels": self.top_labels,
            "top_k_probabilities": self.top_probabilities,
            "model": self.models,
            "subgroup": subgroup,
            "subgroups": [dict(key) for key in subgroups],
            "flags": self.flags,
            "guardrails": guardrails,
            "decisions": [d.as_dict() for d in decisions],
        }

    @classmethod
    def from_rows(cls, rows: Sequence[Mapping[str, Any]]) -> "AnswerTable":
        """A table of answers in the per-answer format (what `rows()` gives back); `model` and
        `subgroup` may be left out (the log is told them apart)."""
        return cls(
            request_ids=[r["request_id"] for r in rows],
            correlation_ids=[r.get("correlation_id") for r in rows],
            labels=[r["label"] for r in rows],
            confidences=[r["confidence"] for r in rows],
            top_labels=[[t["label"] for t in r["top_k"]] for r in rows],
            top_probabilities=[[t["probability"] for t in r["top_k"]] for r in rows],
            models=[r.get("model", "") for r in rows],
            subgroups=[r.get("subgroup", {}) for r in rows],
            decisions=[[Decision(d["guardrail"], d["action"], d["reason"]) for d in r["guardrails"]] for r in rows],
            flags=[list(r["flags"]) for r in rows],
        )
