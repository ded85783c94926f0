"""A batch's probabilities: one matrix when every answering model has as many classes, else a
row each (a routed model may have other classes). What serving and the monitors read them with."""

from __future__ import annotations

from typing import Sequence

import numpy as np


def rows_of(probs: np.ndarray | Sequence[np.ndarray], idx: Sequence[int]) -> np.ndarray:
    """The rows `idx` of a batch's probabilities as one matrix (all of them: the matrix itself)."""
    if isinstance(probs, np.ndarray):
        return probs if len(idx) == len(probs) else probs[idx]
    return np.stack([probs[i] for i in idx])


def falling(probs: np.ndarray | Sequence[np.ndarray]) -> Sequence[np.ndarray]:
    """Each image's classes by falling probability: one argsort for the batch when every answer
    has as many classes (rows are sorted independently, so each gets the order its own argsort
    gives), else one per image (routed models may have other classes)."""
    if not isinstance(probs, np.ndarray):
        if len({len(p) for p in probs}) > 1:
            return [np.argsort(p)[::-1] for p in probs]
        probs = np.stack(probs)
    return np.argsort(probs, axis=1)[:, ::-1]


def rounded(values: np.ndarray) -> list:
    """`[round(float(v), 6) for v in values]` (any shape, as nested lists), in one numpy pass for
    float32. Exact: a float32 times 10**6 has at most 24 + 20 significant bits, so numpy's
    multiply-rint-divide rounds the exact value as Python's correctly rounded `round` does
    (tests/runtime/test_probability_rows.py checks millions of values, halves included)."""
    if values.dtype == np.float32:
        return np.round(values.astype(np.float64), 6).tolist()
    return np.frompyfunc(lambda v: round(float(v), 6), 1, 1)(values).tolist()
