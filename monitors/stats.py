"""Distances and sequential tests used by the monitors (scipy where it has them)."""

from __future__ import annotations

import numpy as np

EPS = 1e-6


def js_distance(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Jensen-Shannon distance (base 2, in [0, 1]) between count or probability vectors along
    the last axis; rows of zeros give NaN. Vectorised over leading axes (scipy's
    `jensenshannon` computes one pair per call, too slow for every subgroup on every tick)."""
    p = np.asarray(p, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    ps, qs = p.sum(axis=-1, keepdims=True), q.sum(axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        p, q = p / ps, q / qs
        m = 0.5 * (p + q)
        kl = lambda a: np.where(a > 0, a * np.log2(a / m), 0.0).sum(axis=-1)  # noqa: E731
        d = np.sqrt(np.clip(0.5 * kl(p) + 0.5 * kl(q), 0.0, None))
    return np.where((ps[..., 0] > 0) & (qs[..., 0] > 0), d, np.nan)


def psi(live: np.ndarray, reference: np.ndarray) -> float:
    """Population stability index, with empty bins floored at EPS."""
    a = np.clip(np.asarray(live, dtype=np.float64) / max(np.sum(live), EPS), EPS, None)
    e = np.clip(np.asarray(reference, dtype=np.float64) / max(np.sum(reference), EPS), EPS, None)
    return float(np.sum((a - e) * np.log(a / e)))


def bernoulli_llr(p0: np.ndarray, p1: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Log-likelihood ratio of one success and of one failure, H1: rate p1 vs H0: rate p0."""
    return np.log(p1 / p0), np.log((1.0 - p1) / (1.0 - p0))


def bernoulli_cusum(successes: np.ndarray, trials: np.ndarray, p0: np.ndarray, p1: np.ndarray) -> np.ndarray:
    """Page's one-sided CUSUM for a rise from rate p0 to p1, run over buckets in time order.

    successes, trials: (T, ...) counts per bucket (trials may broadcast against successes);
    p0, p1 broadcast over (...). Returns the
    statistic after the last bucket, S_T with S_t = max(0, S_{t-1} + LLR of bucket t), computed
    in closed form as C_T - min(0, min_k C_k) over the cumulative LLR C. Bucket-level
    increments make it independent of event order within a bucket, which is what lets several
    workers' merged buckets reproduce one process's answer."""
    hit, miss = bernoulli_llr(np.asarray(p0, np.float64), np.asarray(p1, np.float64))
    successes = np.asarray(successes, dtype=np.float64)
    if len(successes) == 0:
        return np.zeros(np.broadcast_shapes(np.shape(p0), np.shape(p1)))
    c = np.cumsum(successes * hit + (np.asarray(trials, np.float64) - successes) * miss, axis=0)
    return c[-1] - np.minimum(0.0, c.min(axis=0))
