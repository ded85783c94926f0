"""Per-subgroup predicted-class drift: does the model answer this subgroup with the classes it
answered it with on validation? Jensen-Shannon distance, fixed class order, classes past
`max_classes` pooled into one `other` bucket."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from monitors.base import WindowedMonitor
from monitors.events import EventBatch, Score, WindowConfig
from monitors.reference import ReferenceProfile, reference_for
from monitors.stats import js_distance


class PredictedClassDrift(WindowedMonitor):
    name = "class_drift"

    def __init__(self, models: Sequence[str], profiles: Sequence[ReferenceProfile], subgroups: Sequence[str],
                 window: WindowConfig, max_classes: int = 50) -> None:
        self.models, self.subgroups, self.window = list(models), list(subgroups), window
        self.max_classes = max_classes
        self.n_bins = min(max(len(p.labels) for p in profiles), max_classes + 1)
        self._reference = np.zeros((len(self.models), len(self.subgroups), self.n_bins))
        for m, profile in enumerate(profiles):
            for s, key in enumerate(self.subgroups):
                dist = np.asarray(reference_for(profile, key).predicted_class_distribution)
                self._reference[m, s, : min(len(dist), max_classes)] = dist[:max_classes]
                self._reference[m, s, -1] += dist[max_classes:].sum() if len(dist) > max_classes else 0.0
        self.counts_shape = (len(self.models), len(self.subgroups), self.n_bins)
        self.reset()

    def update_many(self, events: EventBatch) -> None:
        bins = np.minimum(events.predicted, self.n_bins - 1)
        self._counts.add(events.t, (events.model, events.subgroup, bins))

    def _statistics(self, now: float) -> tuple:
        live = self._counts.window_total(now)
        n = live.sum(axis=-1)
        distance = js_distance(live, self._reference)
        return n, distance, (n >= self.window.min_samples) & (distance > self.window.js_threshold)

    def decisions(self, now: float) -> np.ndarray:
        return self._statistics(now)[2].ravel()

    def results(self, now: float) -> list[Score]:
        n, distance, alarm = self._statistics(now)
        return [
            Score(self.name, "js_distance", float(distance[m, s]), int(n[m, s]), model=model, subgroup=key,
                  alarm=bool(alarm[m, s]))
            for m, model in enumerate(self.models) for s, key in enumerate(self.subgroups)
        ]
