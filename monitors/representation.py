"""Subgroup representation drift: who is in the traffic, against who was in the training data.

"The dataset has this bias, so the model probably will as well": a subgroup that was 3% of
the training set and is now 30% of the traffic is being served by a model that barely saw
it. Per subgroup: live share, training share, and a one-sided Bernoulli CUSUM for a rise to
`rate_ratio` x the training share. Over the whole mix: Jensen-Shannon distance and PSI.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from monitors.base import WindowedMonitor
from monitors.events import EventBatch, Score, WindowConfig
from monitors.stats import bernoulli_cusum, js_distance, psi


class SubgroupRepresentation(WindowedMonitor):
    name = "representation"

    def __init__(self, subgroups: Sequence[str], training_shares: Mapping[str, float], window: WindowConfig) -> None:
        self.subgroups = list(subgroups)
        self.training_shares = dict(training_shares)
        self.window = window
        self._reference = np.array([self.training_shares.get(k, 0.0) for k in self.subgroups])
        self._p0, self._p1 = window.sequential_rates(self._reference)
        self._watched = self._reference < 0.5
        self.counts_shape = (len(self.subgroups),)
        self.reset()

    def update_many(self, events: EventBatch) -> None:
        """Counts requests, once each: a second model's answer to a request (a route judged after
        the primary) is not another member of the traffic."""
        t, subgroup = events.t, events.subgroup
        if events.request is not None:
            first = np.asarray(events.request) != 0
            t, subgroup = t[first], subgroup[first]
        self._counts.add(t, (subgroup,))

    def _statistics(self, now: float) -> tuple:
        series = self._counts.window_series(now)
        live = series.sum(axis=0) if len(series) else np.zeros(len(self.subgroups))
        n = int(live.sum())
        enough = n >= self.window.min_samples
        cusum = bernoulli_cusum(series, series.sum(axis=1, keepdims=True), self._p0, self._p1)
        js = float(js_distance(live, self._reference)) if n else float("nan")
        js_alarm = bool(enough and js > self.window.js_threshold)
        cusum_alarm = enough & self._watched & (cusum > self.window.cusum_threshold)
        return live, n, cusum, js, js_alarm, cusum_alarm

    def decisions(self, now: float) -> np.ndarray:
        *_, js_alarm, cusum_alarm = self._statistics(now)
        return np.append(cusum_alarm, js_alarm)

    def results(self, now: float) -> list[Score]:
        live, n, cusum, js, js_alarm, cusum_alarm = self._statistics(now)
        shares = live / n if n else np.zeros_like(live)
        scores = [
            Score(self.name, "js_distance", js, n, alarm=js_alarm),
            Score(self.name, "psi", psi(live, self._reference) if n else float("nan"), n),
        ]
        for i, key in enumerate(self.subgroups):
            scores.append(Score(self.name, "share", float(shares[i]), n, subgroup=key,
                                reference=float(self._reference[i])))
            scores.append(Score(self.name, "cusum", float(cusum[i]), n, subgroup=key, alarm=bool(cusum_alarm[i])))
        return scores
