"""A batch's requests and answers as columns, so a chain decides a whole batch at once.

The per-image callables (`guardrails.core`) stay the definition of what a guardrail does.
Each guardrail also has a `many` method that decides a batch with numpy: it settles the
common rows with array operations (a pass, an allow, nothing in scope) and hands the rows
where something happens (a suppressed top label, a low confidence, a fired pair, a route's
candidates) to its own per-image call (`AnswerColumns.each`), so those decisions are the
per-image path's by construction. tests/guardrails/test_columns.py compares the two paths
over random batches, chains, flags and regions, answer by answer.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from guardrails.core import Answer, Decision, Request


def _codes(values: Sequence) -> tuple[np.ndarray, list]:
    """Each value's index among the distinct values (first seen first), and those values."""
    index: dict = {}
    codes = np.fromiter((index.setdefault(v, len(index)) for v in values), dtype=np.int64, count=len(values))
    return codes, list(index)


class RequestColumns:
    """The requests of one batch. Conditions on subgroups and regions are judged once per
    distinct key or region and spread to the rows by index."""

    def __init__(self, request_ids: Sequence[str], subgroups: Sequence[Mapping[str, str]], keys: Sequence[str],
                 alerts: Mapping[str, frozenset[str]]) -> None:
        self.request_ids, self.subgroups, self.keys, self.alerts = request_ids, subgroups, keys, alerts
        self.regions: Sequence[str | None] = [None] * len(keys)
        self._keys_coded: tuple[np.ndarray, list] | None = None  # made when a condition first needs them
        self._regions_coded: tuple[np.ndarray, list] | None = None

    def __len__(self) -> int:
        return len(self.keys)

    def place(self, regions: Sequence[str | None]) -> None:
        """Each request's region, once the primary has answered."""
        self.regions, self._regions_coded = regions, None

    def _keys(self) -> tuple[np.ndarray, list]:
        if self._keys_coded is None:
            self._keys_coded = _codes(self.keys)
        return self._keys_coded

    def _regions(self) -> tuple[np.ndarray, list]:
        if self._regions_coded is None:
            self._regions_coded = _codes(self.regions)
        return self._regions_coded

    def request(self, i: int) -> Request:
        """Row `i` as the per-image path sees it."""
        key = self.keys[i]
        return Request(self.request_ids[i], self.subgroups[i], key, self.alerts.get(key, frozenset()),
                       self.regions[i])

    def within(self, subgroups: frozenset[str] | None, regions: frozenset[str] | None = None) -> np.ndarray:
        """Per row, `Request.within`."""
        inside = np.ones(len(self.keys), dtype=bool)
        if subgroups is not None:
            codes, names = self._keys()
            inside &= np.array([k in subgroups for k in names])[codes]
        if regions is not None:
            codes, names = self._regions()
            inside &= np.array([r in regions for r in names])[codes]
        return inside

    def key_values(self, value_of: Mapping[str, float], default: float) -> np.ndarray:
        """Per row, `value_of[key]` or `default`."""
        codes, names = self._keys()
        return np.array([value_of.get(k, default) for k in names], dtype=np.float64)[codes]


class AnswerColumns:
    """One model's answers to some rows of a batch (one model: the same classes in every row).
    `label` is -1 where the service abstains; `suppressed` marks the classes kept out of top_k;
    `decisions` is each row's answer decisions so far."""

    def __init__(self, model: str, labels: tuple[str, ...], probs: np.ndarray, flags: Sequence[tuple[str, ...]],
                 rows: np.ndarray) -> None:
        self.model, self.labels, self.probs, self.flags, self.rows = model, labels, probs, flags, rows
        self.label = probs.argmax(axis=1).astype(np.int64)  # the first maximum, as Answer.of's argmax
        self.suppressed = np.zeros(probs.shape, dtype=bool)
        self.decisions: list[list[Decision]] = [[] for _ in range(len(rows))]

    def __len__(self) -> int:
        return len(self.rows)

    def answer(self, j: int) -> Answer:
        """Row `j` as the per-image path's Answer."""
        label = int(self.label[j])
        return Answer(self.model, self.labels, self.probs[j], label if label >= 0 else None,
                      frozenset(int(c) for c in np.flatnonzero(self.suppressed[j])), tuple(self.decisions[j]),
                      self.flags[j])

    def set(self, j: int, answer: Answer) -> None:
        """Row `j` becomes what a per-image guardrail made of it."""
        self.label[j] = -1 if answer.label is None else answer.label
        self.suppressed[j] = False
        self.suppressed[j, list(answer.suppressed)] = True
        self.decisions[j] = list(answer.decisions)

    def each(self, guardrail, requests: RequestColumns, rows: np.ndarray) -> None:
        """The per-image guardrail on the given rows of this block."""
        for j in rows.tolist():
            self.set(j, guardrail(requests.request(int(self.rows[j])), self.answer(j)))

    def add(self, rows: np.ndarray, decision: Decision) -> None:
        """The same decision on the given rows."""
        for j in rows.tolist():
            self.decisions[j].append(decision)
