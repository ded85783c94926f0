"""Known-confusion detectors: a model's documented failure, watched for in live traffic.

A pair `source->target` (e.g. `6->0`: sixes answered as zeros) fires on a prediction when the
model emits `target` and `source` is close behind (probability gap below `margin`): a
label-free sign that this answer may be that confusion. Over the window, per subgroup: the
firing rate against the subgroup's reference rate of the confusion, (true source, emitted
target) in its validation confusion matrix (the whole validation set's for a subgroup the
profile lacks). Two one-sided Bernoulli CUSUMs, one for a rise to `rate_ratio` x that rate
(odds), one for a rise to `rate_ratio` squared, both from a rate never below `rate_floor`; the
published statistic is the larger, and either past the threshold alarms.

Why two: a known confusion that comes back usually comes back at many times its validation
rate (often 0, held to the floor), and a test tuned to a 3x rise needs about twice the flagged
answers to see a 10x one. The second test halves that, at the price of a slightly higher
threshold for the same false-alarm rate (measured in docs/detection-quality.md: delay median
125 -> 75 events at equal run length between false alarms).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

from core.keys import pair_name
from monitors.base import WindowedMonitor
from monitors.events import EventBatch, Score, WindowConfig
from monitors.reference import ReferenceProfile, reference_for
from monitors.stats import bernoulli_cusum


@dataclass(frozen=True)
class ConfusionPair:
    source: str
    target: str
    margin: float  # no default here: the configuration (monitors.known_confusions) states it once
    subgroups: tuple[str, ...] | None = None  # None: every subgroup

    def __post_init__(self) -> None:
        if self.subgroups is not None:
            object.__setattr__(self, "subgroups", tuple(self.subgroups))  # lists arrive from JSON/YAML
        if self.source == self.target:
            raise ValueError(f"a confusion pair needs two different classes, got {self.source}->{self.target}")
        if not 0.0 < self.margin <= 1.0:
            raise ValueError(f"margin must be in (0, 1], got {self.margin}")

    @property
    def name(self) -> str:
        return pair_name(self.source, self.target)


def reference_rate(profile: ReferenceProfile, subgroup: str, source: int, target: int) -> float:
    """Validation rate of (true source, emitted target) among the subgroup's predictions."""
    ref = reference_for(profile, subgroup)
    return ref.confusion_matrix[source][target] / max(ref.count, 1)


class KnownConfusions(WindowedMonitor):
    name = "known_confusion"

    def __init__(self, pairs: Sequence[ConfusionPair], models: Sequence[str], profiles: Sequence[ReferenceProfile],
                 subgroups: Sequence[str], window: WindowConfig) -> None:
        if len(pairs) > 62:
            raise ValueError("at most 62 known-confusion pairs (they travel as a bit mask)")
        self.pairs, self.models, self.subgroups, self.window = list(pairs), list(models), list(subgroups), window
        n_m, n_s, n_p = len(self.models), len(self.subgroups), len(self.pairs)
        self._index = np.full((n_m, n_p, 2), -1, dtype=np.int64)  # (source, target) class index per model
        self._applies = np.zeros((n_s, n_p), dtype=bool)
        self._expected = np.zeros((n_m, n_s, n_p))
        for p, pair in enumerate(self.pairs):
            self._applies[:, p] = [pair.subgroups is None or key in pair.subgroups for key in self.subgroups]
            for m, profile in enumerate(profiles):
                if pair.source in profile.labels and pair.target in profile.labels:
                    src, tgt = profile.labels.index(pair.source), profile.labels.index(pair.target)
                    self._index[m, p] = (src, tgt)
                    self._expected[m, :, p] = [reference_rate(profile, key, src, tgt) for key in self.subgroups]
        # (model, subgroup, pair) triples that are published: the pair applies to the subgroup and
        # the model has both classes
        self._published = self._applies[None, :, :] & (self._index[:, None, :, 0] >= 0)
        self._margins = np.array([pair.margin for pair in self.pairs])
        self._p0, self._p1 = window.sequential_rates(self._expected)
        _, self._p1_large = window.sequential_rates(self._expected, ratio=window.rate_ratio ** 2)
        # last axis: one column per pair, then the event count
        self.counts_shape = (len(self.models), len(self.subgroups), len(self.pairs) + 1)
        self.reset()

    def fired(self, model: int, subgroup: int, probs: np.ndarray, predicted: int) -> int:
        """Bit mask of the pairs that fire on one prediction (O(pairs))."""
        mask = 0
        for p in range(len(self.pairs)):
            src, tgt = self._index[model, p]
            if tgt == predicted and src >= 0 and self._applies[subgroup, p] and probs[tgt] - probs[src] < self._margins[p]:
                mask |= 1 << p
        return mask

    def fired_many(self, model: int, subgroups: np.ndarray, probs: np.ndarray, predicted: np.ndarray) -> np.ndarray:
        """`fired` for N predictions (N x classes) of one model: their bit masks."""
        mask = np.zeros(len(predicted), dtype=np.int64)
        rows = np.arange(len(predicted))
        for p in range(len(self.pairs)):
            src, tgt = self._index[model, p]
            if src < 0:
                continue
            hit = (predicted == tgt) & self._applies[subgroups, p] & (probs[rows, tgt] - probs[rows, src] < self._margins[p])
            mask |= hit.astype(np.int64) << p
        return mask

    def update_many(self, events: EventBatch) -> None:
        n_p = len(self.pairs)
        self._counts.add(events.t, (events.model, events.subgroup, np.full(len(events), n_p)))
        for p in range(n_p):
            hit = (events.confusions >> p) & 1 == 1
            if hit.any():
                self._counts.add(events.t[hit], (events.model[hit], events.subgroup[hit], np.full(int(hit.sum()), p)))

    def _statistics(self, now: float) -> tuple:
        series = self._counts.window_series(now)
        if not len(series):
            series = np.zeros((1, len(self.models), len(self.subgroups), len(self.pairs) + 1))
        total = series.sum(axis=0)
        hits, trials = series[..., :-1], series[..., -1:]  # trials broadcast over the pairs
        cusum = np.maximum(bernoulli_cusum(hits, trials, self._p0, self._p1),
                           bernoulli_cusum(hits, trials, self._p0, self._p1_large))
        alarm = (total[..., -1:] >= self.window.min_samples) & (cusum > self.window.cusum_threshold)
        return total, cusum, alarm & self._published

    def decisions(self, now: float) -> np.ndarray:
        return self._statistics(now)[2][self._published]

    def results(self, now: float) -> list[Score]:
        total, cusum, alarm = self._statistics(now)
        n = total[..., -1]
        with np.errstate(invalid="ignore", divide="ignore"):
            rate = total[..., :-1] / n[..., None]
        # plain Python values before the loop: numpy scalar indexing is the slow part here
        n, rate, cusum, alarm, expected = n.tolist(), rate.tolist(), cusum.tolist(), alarm.tolist(), self._expected.tolist()
        scores = []
        for m, model in enumerate(self.models):
            for s, key in enumerate(self.subgroups):
                k = int(n[m][s])
                for p, pair in enumerate(self.pairs):
                    if not self._published[m, s, p]:
                        continue
                    scores += [
                        Score(self.name, "fire_rate", rate[m][s][p], k, model, key, pair.name,
                              reference=expected[m][s][p]),
                        Score(self.name, "cusum", cusum[m][s][p], k, model, key, pair.name, alarm=alarm[m][s][p]),
                    ]
        return scores

    def get_config(self) -> dict:
        return {**super().get_config(), "pairs": [asdict(p) for p in self.pairs]}

    @classmethod
    def from_config(cls, config: dict, profiles: Sequence[ReferenceProfile] = ()) -> "KnownConfusions":
        return super().from_config({**config, "pairs": [ConfusionPair(**p) for p in config["pairs"]]}, profiles)
