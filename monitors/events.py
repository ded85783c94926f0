"""What monitors see: prediction events as columns of numbers, and what they say back."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Sequence

import numpy as np


# An event as one row (the request path queues rows, drift reports read arrays of them):
# the layout is stated here once; COLUMN[name] is a field's position.
EVENT_COLUMNS = ("t", "model", "subgroup", "predicted", "confidence", "confusions", "calibrated", "region",
                 "request")
COLUMN = {name: i for i, name in enumerate(EVENT_COLUMNS)}


@dataclass(frozen=True)
class EventBatch:
    """N prediction events. Indices refer to the suite's model and subgroup lists and to the
    model's class order; `confusions` is a bit mask of the known-confusion pairs that fired."""

    t: np.ndarray
    model: np.ndarray
    subgroup: np.ndarray
    predicted: np.ndarray
    confidence: np.ndarray
    confusions: np.ndarray
    calibrated: np.ndarray | None = None  # temperature-scaled top-class probability; None: as confidence
    region: np.ndarray | None = None  # index into the codebook's regions (monitors/regions.py); -1 or None: none
    # 1: the request's first answer; 0: a second model's answer to a request already counted (a
    # route judged after the primary). Monitors of the traffic's mix count requests (request == 1);
    # monitors of a model's answers count every answer. None: every event is a request.
    request: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.t)

    @classmethod
    def from_rows(cls, rows: Sequence[tuple]) -> "EventBatch":
        """From rows laid out as EVENT_COLUMNS (calibrated, region and request may be left off)."""
        if not rows:
            return cls.empty()
        columns = list(zip(*rows))
        t, model, subgroup, predicted, confidence, confusions = columns[:6]
        calibrated = np.asarray(columns[6], np.float64) if len(columns) > 6 else None
        region = np.asarray(columns[7], np.int64) if len(columns) > 7 else None
        request = np.asarray(columns[8], np.int64) if len(columns) > 8 else None
        return cls(np.asarray(t, np.float64), np.asarray(model, np.int64), np.asarray(subgroup, np.int64),
                   np.asarray(predicted, np.int64), np.asarray(confidence, np.float64),
                   np.asarray(confusions, np.int64), calibrated, region, request)

    @classmethod
    def empty(cls) -> "EventBatch":
        z = np.zeros(0)
        return cls(z, z.astype(np.int64), z.astype(np.int64), z.astype(np.int64), z, z.astype(np.int64))


class Score(NamedTuple):
    """One published number: a monitor's statistic for a model and subgroup (or the whole mix),
    its reference value where one exists, the window's sample size, and whether the monitor's
    decision rule fires (only ever with at least `min_samples` events). A named tuple: read-only
    and cheap, since a recompute builds hundreds of them."""

    monitor: str
    statistic: str
    value: float
    samples: int
    model: str = ""
    subgroup: str = ""
    pair: str = ""
    reference: float | None = None
    alarm: bool = False


@dataclass(frozen=True)
class WindowConfig:
    """Window and decision settings shared by the monitors."""

    bucket_s: float = 1.0
    n_buckets: int = 300
    min_samples: int = 100
    cusum_threshold: float = 20.0
    rate_ratio: float = 3.0
    rate_floor: float = 0.005
    js_threshold: float = 0.2

    def counts(self, shape: tuple[int, ...]):
        from monitors.buckets import BucketedCounts

        return BucketedCounts(shape, bucket_s=self.bucket_s, n_buckets=self.n_buckets)

    def sequential_rates(self, p0: np.ndarray, ratio: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """H0 and H1 rates of a rise test: the reference rate (kept within [rate_floor,
        1 - rate_floor]) and the rate whose odds are `ratio` (default `rate_ratio`) times its
        odds (for small rates, about `ratio` x the rate)."""
        base = np.clip(np.asarray(p0, np.float64), self.rate_floor, 1.0 - self.rate_floor)
        odds = (self.rate_ratio if ratio is None else ratio) * base / (1.0 - base)
        return base, odds / (1.0 + odds)
