"""Per-subgroup confidence drift and anomalies, without labels.

A prediction is `low confidence` when its top-class probability falls below the reference's
5th percentile for that model and subgroup, so on reference-like traffic about 5% are. Over
the window: the low-confidence rate and mean confidence against the reference, and a
one-sided Bernoulli CUSUM that catches a sudden collapse within a few dozen events. Per
prediction: `flag()` marks confidence below the reference's 1st percentile.

Without labels, accuracy is estimated by ATC (monitors/estimates.py, `PublishedEstimate`):
the share of answers whose calibrated confidence (the top-class probability after temperature
scaling with the model's validation temperature) is above the subgroup's validation
threshold, as a streaming count. The mean calibrated confidence (NannyML's CBPE idea, the
estimate before ATC) stays beside it as `mean_calibrated_confidence`.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from monitors.base import WindowedMonitor
from monitors.estimates import PublishedEstimate, calibrated_confidence, credit
from monitors.events import EventBatch, Score, WindowConfig
from monitors.reference import ReferenceProfile, reference_for
from monitors.stats import bernoulli_cusum

LOW_QUANTILE, FLAG_QUANTILE = "p05", "p01"
# what `estimated_accuracy` counts: replicas that count differently never merge windows
ESTIMATE = "atc"


class ConfidenceDrift(WindowedMonitor):
    name = "confidence"

    def __init__(self, models: Sequence[str], profiles: Sequence[ReferenceProfile], subgroups: Sequence[str],
                 window: WindowConfig) -> None:
        self.models, self.subgroups, self.window = list(models), list(subgroups), window
        refs = [[reference_for(p, key) for key in self.subgroups] for p in profiles]
        self._low = np.array([[r.confidence_quantiles[LOW_QUANTILE] for r in row] for row in refs])
        self._flag = np.array([[r.confidence_quantiles[FLAG_QUANTILE] for r in row] for row in refs])
        self._ref_mean = np.array([[r.mean_confidence for r in row] for row in refs])
        self._ref_accuracy = np.array([[r.accuracy for r in row] for row in refs])
        self.temperatures = [float(p.temperature) for p in profiles]
        estimates = [PublishedEstimate.of(p) for p in profiles]
        self._threshold = np.array([[e.threshold(key) for key in self.subgroups] for e in estimates])
        # the reference's own rate below its p05: 0.05 by construction, up to ties
        self._ref_low_rate = np.full(self._low.shape, 0.05)
        self._p0, self._p1 = window.sequential_rates(self._ref_low_rate)
        # last axis: events, low-confidence events, sum of confidence, sum of calibrated
        # confidence, sum of the estimate's credits
        self.counts_shape = (len(self.models), len(self.subgroups), 5)
        self.reset()

    def flag(self, model: int, subgroup: int, confidence: float) -> bool:
        return confidence < self._flag[model, subgroup]

    def flag_many(self, model: int, subgroups: np.ndarray, confidence: np.ndarray) -> np.ndarray:
        """`flag` for N predictions of one model."""
        return confidence < self._flag[model, subgroups]

    def calibrated_many(self, model: int, probs: np.ndarray) -> np.ndarray:
        """For N rows (N x classes) of one model, the top-class probability of softmax(log(probs)
        / T), T the model's validation temperature."""
        return calibrated_confidence(probs, self.temperatures[model])

    def update_many(self, events: EventBatch) -> None:
        low = events.confidence < self._low[events.model, events.subgroup]
        calibrated = events.confidence if events.calibrated is None else events.calibrated
        credits = credit(calibrated, self._threshold[events.model, events.subgroup])
        for column, values in enumerate((1.0, low.astype(np.float64), events.confidence, calibrated, credits)):
            self._counts.add(events.t, (events.model, events.subgroup, np.full(len(events), column)), values)

    def _statistics(self, now: float) -> tuple:
        series = self._counts.window_series(now)
        total = series.sum(axis=0) if len(series) else np.zeros((*self._low.shape, 5))
        cusum = bernoulli_cusum(series[..., 1], series[..., 0], self._p0, self._p1)
        alarm = (total[..., 0] >= self.window.min_samples) & (cusum > self.window.cusum_threshold)
        return total, cusum, alarm

    def decisions(self, now: float) -> np.ndarray:
        return self._statistics(now)[2].ravel()

    def results(self, now: float) -> list[Score]:
        total, cusum, alarm = self._statistics(now)
        n, low, conf_sum, calibrated_sum, credit_sum = (total[..., i] for i in range(5))
        with np.errstate(invalid="ignore", divide="ignore"):
            low_rate, mean, calibrated, estimate = low / n, conf_sum / n, calibrated_sum / n, credit_sum / n
        # plain Python values before the loop: numpy scalar indexing is the slow part here
        n, low_rate, mean, cusum, alarm = n.tolist(), low_rate.tolist(), mean.tolist(), cusum.tolist(), alarm.tolist()
        estimate, calibrated = estimate.tolist(), calibrated.tolist()
        ref_low, ref_mean, ref_accuracy = self._ref_low_rate.tolist(), self._ref_mean.tolist(), self._ref_accuracy.tolist()
        scores = []
        for m, model in enumerate(self.models):
            for s, key in enumerate(self.subgroups):
                k = int(n[m][s])
                scores += [
                    Score(self.name, "low_confidence_rate", low_rate[m][s], k, model, key, reference=ref_low[m][s]),
                    Score(self.name, "mean_confidence", mean[m][s], k, model, key, reference=ref_mean[m][s]),
                    Score(self.name, "estimated_accuracy", estimate[m][s], k, model, key,
                          reference=ref_accuracy[m][s]),
                    Score(self.name, "mean_calibrated_confidence", calibrated[m][s], k, model, key,
                          reference=ref_accuracy[m][s]),
                    Score(self.name, "cusum", cusum[m][s], k, model, key, alarm=alarm[m][s]),
                ]
        return scores
