"""Label-free accuracy estimates: what a window of answers is likely to score, before any true
label arrives. Each estimator is fitted once on the validation split (confidences, whether
each answer was right, its region) and then reads only what the service sees live.

- `average_confidence`: the mean calibrated top-class probability (NannyML's CBPE idea; what
  `estimated_accuracy` publishes today). Known to be optimistic under covariate shift.
- `DifferenceOfConfidences`: validation accuracy, moved by how far the live mean confidence
  moved from validation's (Guillory et al., 2021).
- `ThresholdedConfidence` (ATC, Garg et al., ICLR 2022): the threshold on calibrated confidence
  above which validation has as many answers as it had right ones; the estimate is the live
  share above it.
- `RegionWeighted`: validation accuracy per region of the embedding (the codebook's, novel
  included), weighted by the live share of each region: a shift that moves traffic into
  regions the model did badly on lowers the estimate even when the model stays confident.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


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
