"""Time-bucketed counters: the mergeable state behind every monitor's window.

A window of `n_buckets` buckets of `bucket_s` seconds, aligned to the Unix epoch, so two
processes that saw different halves of the same traffic hold buckets that simply add up:
`a.merge(b)` gives exactly the counts one process would have. Updates are vectorised
(`np.add.at`), O(1) per event.
"""

from __future__ import annotations

import numpy as np


class BucketedCounts:
    """Counts of shape `shape` per time bucket; `window_total(now)` sums the live window."""

    def __init__(self, shape: tuple[int, ...], *, bucket_s: float, n_buckets: int) -> None:
        if bucket_s <= 0 or n_buckets < 1:
            raise ValueError(f"bucket_s must be > 0 and n_buckets >= 1, got {bucket_s}, {n_buckets}")
        self.shape = tuple(shape)
        self.bucket_s = float(bucket_s)
        self.n_buckets = int(n_buckets)
        self._reset()

    def _reset(self) -> None:
        self._ids = np.full(self.n_buckets, -1, dtype=np.int64)  # which bucket each slot holds
        self._counts = np.zeros((self.n_buckets, *self.shape), dtype=np.float64)

    reset = _reset

    def bucket_of(self, t: np.ndarray | float) -> np.ndarray:
        return np.floor(np.asarray(t, dtype=np.float64) / self.bucket_s).astype(np.int64)

    def _claim(self, ids: np.ndarray) -> np.ndarray:
        """Slots for bucket ids, clearing slots that still hold an older bucket."""
        slots = ids % self.n_buckets
        low, high = int(ids.min()), int(ids.max())
        # a drain's events mostly share one bucket; the slot follows from the bucket, and older
        # buckets come first, so a slot ends holding the newest (as the window needs)
        for bucket in [low] if low == high else np.unique(ids).tolist():
            slot = bucket % self.n_buckets
            if self._ids[slot] < bucket:
                self._ids[slot] = bucket
                self._counts[slot] = 0.0
        return slots

    def add(self, t: np.ndarray, index: tuple[np.ndarray, ...], values: np.ndarray | float = 1.0) -> None:
        """Add `values` at `index` (a tuple of arrays into `shape`) in the buckets of times `t`."""
        ids = self.bucket_of(t)
        if ids.size == 0:
            return
        slots = self._claim(ids)
        keep = self._ids[slots] == ids  # events older than the window are dropped
        np.add.at(self._counts, (slots[keep], *(i[keep] for i in index)),
                  values if np.isscalar(values) else np.asarray(values)[keep])

    def merge(self, other: "BucketedCounts") -> "BucketedCounts":
        if (other.shape, other.bucket_s, other.n_buckets) != (self.shape, self.bucket_s, self.n_buckets):
            raise ValueError("can only merge counts with the same shape and buckets")
        for slot in range(self.n_buckets):
            theirs = other._ids[slot]
            if theirs < 0 or theirs < self._ids[slot]:
                continue
            if theirs > self._ids[slot]:
                self._ids[slot] = theirs
                self._counts[slot] = 0.0
            self._counts[slot] += other._counts[slot]
        return self

    __iadd__ = merge

    def live_slots(self, now: float) -> np.ndarray:
        """Slots inside the window ending at `now`, oldest first."""
        newest = int(self.bucket_of(now))
        ok = (self._ids > newest - self.n_buckets) & (self._ids <= newest)
        slots = np.flatnonzero(ok)
        return slots[np.argsort(self._ids[slots])]

    def window_total(self, now: float) -> np.ndarray:
        return self._counts[self.live_slots(now)].sum(axis=0)

    def window_series(self, now: float) -> np.ndarray:
        """Per-bucket counts in time order (empty buckets omitted): the input of sequential tests."""
        return self._counts[self.live_slots(now)]

    # state for sharing between processes
    def state(self) -> dict[str, np.ndarray]:
        return {"ids": self._ids.copy(), "counts": self._counts.copy()}

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        if state["counts"].shape != self._counts.shape:
            raise ValueError(f"state shape {state['counts'].shape} does not match {self._counts.shape}")
        self._ids = state["ids"].astype(np.int64).copy()
        self._counts = state["counts"].astype(np.float64).copy()
