"""Label-free accuracy estimates: what a window of answers is likely to score, before any true
label arrives. Each estimator is fitted once on the validation split (confidences, whether
each answer was right, its region) and then reads only what the service sees live.

- `average_confidence`: the mean calibrated top-class probability (NannyML's CBPE idea; what
  `estimated_accuracy` published before ATC, now `mean_calibrated_confidence`). Known to be
  optimistic under covariate shift.
- `DifferenceOfConfidences`: validation accuracy, moved by how far the live mean confidence
  moved from validation's (Guillory et al., 2021).
- `ThresholdedConfidence` (ATC, Garg et al., ICLR 2022): the threshold on calibrated confidence
  above which validation has as many answers as it had right ones; the estimate is the live
  share above it. What `estimated_accuracy` publishes (`make bench-estimate` measured it the
  closest on stationary and phone-share traffic, and no worse than the others under shift).
- `RegionWeighted`: validation accuracy per region of the embedding (the codebook's, novel
  included), weighted by the live share of each region: a shift that moves traffic into
  regions the model did badly on lowers the estimate even when the model stays confident.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from monitors.reference import ALL


def average_confidence(confidence: np.ndarray) -> float:
    return float(np.mean(confidence))


@dataclass(frozen=True)
class DifferenceOfConfidences:
    accuracy: float  # validation's
    mean_confidence: float  # validation's

    @classmethod
    def fit(cls, confidence: np.ndarray, correct: np.ndarray) -> "DifferenceOfConfidences":
        return cls(float(np.mean(correct)), float(np.mean(confidence)))

    def estimate(self, confidence: np.ndarray) -> float:
        return float(np.clip(self.accuracy + np.mean(confidence) - self.mean_confidence, 0.0, 1.0))


@dataclass(frozen=True)
class ThresholdedConfidence:
    threshold: float

    @classmethod
    def fit(cls, confidence: np.ndarray, correct: np.ndarray) -> "ThresholdedConfidence":
        """The threshold t with mean(confidence > t) = mean(correct) on validation: the
        (1 - accuracy) quantile of the confidences."""
        return cls(float(np.quantile(confidence, 1.0 - float(np.mean(correct)), method="lower")))

    def estimate(self, confidence: np.ndarray) -> float:
        return float(np.mean(confidence > self.threshold))


@dataclass(frozen=True)
class RegionWeighted:
    """Validation accuracy per region; a region validation saw fewer than `min_count` times
    borrows the mean calibrated confidence of its live answers instead."""

    accuracy: tuple[float, ...]  # by region index; NaN where validation had too few
    min_count: int = 5

    @classmethod
    def fit(cls, region: np.ndarray, correct: np.ndarray, regions: int, min_count: int = 5) -> "RegionWeighted":
        counts = np.bincount(region, minlength=regions)[:regions]
        hits = np.bincount(region, weights=correct.astype(np.float64), minlength=regions)[:regions]
        with np.errstate(invalid="ignore", divide="ignore"):
            accuracy = np.where(counts >= min_count, hits / np.maximum(counts, 1), np.nan)
        return cls(tuple(float(a) for a in accuracy), min_count)

    def estimate(self, region: np.ndarray, confidence: np.ndarray) -> float:
        accuracy = np.asarray(self.accuracy)[region]
        known = ~np.isnan(accuracy)
        return float(np.mean(np.where(known, accuracy, confidence)))


def calibrated_confidence(probs: np.ndarray, temperature: float) -> np.ndarray:
    """Top-class probability of softmax(log(p) / T) per row (N x classes): p ** (1 / T),
    normalised, in one numpy pass."""
    q = np.power(np.asarray(probs, np.float64), 1.0 / temperature)
    return q.max(axis=1) / q.sum(axis=1)


@dataclass(frozen=True)
class PublishedEstimate:
    """What `estimated_accuracy` counts for one model's answers: each answer's credit is 1 when
    its calibrated confidence is above its subgroup's ATC threshold, else 0, and the estimate is
    the mean credit. A subgroup without a reference of its own takes the whole validation
    set's threshold; a profile made before thresholds were stored (no threshold) credits each
    answer its calibrated confidence (the mean calibrated confidence, as before). The monitor's
    streaming windows, the feedback's estimate on labelled answers and the incident's one-pass
    reading of the log all call `credit`, so the three agree by construction."""

    temperature: float
    thresholds: Mapping[str, float] = field(default_factory=dict)  # subgroup -> threshold (NaN: none)

    @classmethod
    def of(cls, profile: Any) -> "PublishedEstimate":
        """From a ReferenceProfile."""
        return cls(float(profile.temperature), {key: _threshold(ref) for key, ref in profile.subgroups.items()})

    def threshold(self, subgroup: str) -> float:
        return self.thresholds.get(subgroup, self.thresholds.get(ALL, math.nan))

    def credit_probs(self, probs: np.ndarray, subgroup: str) -> np.ndarray:
        """`credit` for N answers of one subgroup given their probabilities (N x classes)."""
        return credit(calibrated_confidence(probs, self.temperature), self.threshold(subgroup))


def credit(calibrated: np.ndarray, threshold: float | np.ndarray) -> np.ndarray:
    """Per answer, its share of the published estimate: 1 above its ATC threshold, else 0; its
    calibrated confidence where the threshold is NaN (N calibrated confidences, one threshold
    each or one for all)."""
    calibrated = np.asarray(calibrated, np.float64)
    threshold = np.broadcast_to(np.asarray(threshold, np.float64), calibrated.shape)
    return np.where(np.isnan(threshold), calibrated, (calibrated > threshold).astype(np.float64))


def _threshold(reference: Any) -> float:
    value = getattr(reference, "atc_threshold", None)
    return math.nan if value is None else float(value)
