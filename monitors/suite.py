"""All monitors of one serving process, behind one small interface.

    suite.flags(model, subgroup, probs)   per prediction, on the request path, O(pairs)
    suite.update_many(events)             off the request path, vectorised
    suite.results(now)                    on a timer; a monitor that raises is reported, not fatal
    suite.decisions(now)                  the decision rules alone, cheap enough for every drain
    suite.state() / load_state() / merge  how several workers publish one answer
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

from core.keys import LOW_CONFIDENCE_FLAG, confusion_flag
from monitors.class_drift import PredictedClassDrift
from monitors.confidence import ConfidenceDrift
from monitors.confusion import ConfusionPair, KnownConfusions
from monitors.events import EventBatch, Score, WindowConfig
from monitors.reference import ReferenceProfile
from monitors.regions import RegionMonitor
from monitors.representation import SubgroupRepresentation

@dataclass
class Results:
    scores: list[Score]
    errors: dict[str, str] = field(default_factory=dict)  # monitor name -> error text


class MonitorSuite:
    def __init__(self, models: Sequence[str], profiles: Sequence[ReferenceProfile], subgroups: Sequence[str],
                 pairs: Sequence[ConfusionPair], window: WindowConfig, regions: bool = False) -> None:
        self.models, self.subgroups, self.window = list(models), list(subgroups), window
        self.model_index = {m: i for i, m in enumerate(self.models)}
        self.subgroup_index = {s: i for i, s in enumerate(self.subgroups)}
        self.confidence = ConfidenceDrift(models, profiles, subgroups, window)
        self.confusions = KnownConfusions(pairs, models, profiles, subgroups, window)
        self.monitors = [
            # the primary model's profile holds the training shares traffic is compared with
            SubgroupRepresentation(subgroups, profiles[0].training_subgroup_shares, window),
            PredictedClassDrift(models, profiles, subgroups, window),
            self.confidence,
            self.confusions,
        ]
        # regions of the primary model's embedding, when asked for and its profile has a codebook
        # (the service asks as `monitors.regions` says, on by default; a suite built elsewhere
        # asks explicitly, so the benchmarks' layouts and figures stay as they were)
        self.codebook = profiles[0].codebook() if regions and profiles else None
        if self.codebook is not None:
            self.monitors.append(RegionMonitor.from_codebook(self.codebook, window))
        self._pair_flags = [confusion_flag(p.name) for p in self.confusions.pairs]

    def flags(self, model: int, subgroup: int, probs: np.ndarray, predicted: int) -> tuple[list[str], int]:
        """Per-prediction flags and the known-confusion bit mask that goes into the event
        (the event also takes its calibrated confidence, `self.confidence.calibrated_many`)."""
        flags = [LOW_CONFIDENCE_FLAG] if self.confidence.flag(model, subgroup, float(probs[predicted])) else []
        mask = self.confusions.fired(model, subgroup, probs, predicted)
        if mask:
            flags += [f for p, f in enumerate(self._pair_flags) if mask >> p & 1]
        return flags, mask

    def flags_many(self, model: int, subgroups: np.ndarray, probs: np.ndarray,
                   predicted: np.ndarray) -> tuple[list[list[str]], np.ndarray, np.ndarray]:
        """`flags` for N predictions of one model (N x classes), in numpy: each one's flags, the
        masks, and which are low-confidence."""
        confidence = probs[np.arange(len(predicted)), predicted]
        low = self.confidence.flag_many(model, subgroups, confidence)
        masks = self.confusions.fired_many(model, subgroups, probs, predicted)
        flags = [([LOW_CONFIDENCE_FLAG] if is_low else []) + ([f for p, f in enumerate(self._pair_flags) if mask >> p & 1]
                                                                if mask else [])
                 for is_low, mask in zip(low.tolist(), masks.tolist())]
        return flags, masks, low

    def update_many(self, events: EventBatch) -> dict[str, str]:
        errors = {}
        for monitor in self.monitors:
            try:
                monitor.update_many(events)
            except Exception as exc:  # one broken monitor must not starve the others
                errors[monitor.name] = f"{type(exc).__name__}: {exc}"
        return errors

    def results(self, now: float) -> Results:
        out = Results([])
        for monitor in self.monitors:
            try:
                out.scores += monitor.results(now)
            except Exception as exc:
                out.errors[monitor.name] = f"{type(exc).__name__}: {exc}"
        return out

    def decisions(self, now: float) -> list[np.ndarray | None]:
        """Per monitor, its decision rules' verdicts (the alarms `results` would carry) as one
        boolean vector, without building a score; None for a monitor that raised (`results`
        reports it)."""
        out: list[np.ndarray | None] = []
        for monitor in self.monitors:
            try:
                out.append(np.asarray(monitor.decisions(now), dtype=bool))
            except Exception:
                out.append(None)
        return out

    def reset(self) -> None:
        for monitor in self.monitors:
            monitor.reset()

    def merge(self, other: "MonitorSuite") -> "MonitorSuite":
        for mine, theirs in zip(self.monitors, other.monitors):
            mine.merge(theirs)
        return self

    def state(self) -> dict[str, np.ndarray]:
        """Every monitor's window state as named arrays (`<monitor>.<array>`)."""
        return {f"{m.name}.{k}": v for m in self.monitors for k, v in m.state().items()}

    def load_state(self, arrays: Mapping[str, np.ndarray]) -> None:
        for monitor in self.monitors:
            prefix = f"{monitor.name}."
            monitor.load_state({k[len(prefix):]: arrays[k] for k in arrays if k.startswith(prefix)})

    # -- the same state as one flat vector per time bucket (how a fleet shares its windows) ----
    def bucket_vectors(self) -> dict[int, np.ndarray]:
        """Bucket id -> every monitor's counts in that bucket, flattened and concatenated in
        the order of `self.monitors` (`vector_size()` numbers)."""
        sizes = self._segment_sizes()
        out: dict[int, np.ndarray] = {}
        offset = 0
        for monitor, size in zip(self.monitors, sizes):
            state = monitor.state()
            for slot in np.flatnonzero(state["ids"] >= 0):
                vector = out.setdefault(int(state["ids"][slot]), np.zeros(sum(sizes)))
                vector[offset:offset + size] = state["counts"][slot].ravel()
            offset += size
        return out

    def load_bucket_vectors(self, vectors: Mapping[int, np.ndarray]) -> None:
        """Replace every window with `vectors` (as `bucket_vectors()` gives them); the newest
        `n_buckets` buckets are kept."""
        sizes, n = self._segment_sizes(), self.window.n_buckets
        kept = sorted(vectors)[-n:]
        if any(len(vectors[b]) != sum(sizes) for b in kept):
            raise ValueError(f"bucket vectors must hold {sum(sizes)} counts")
        offset = 0
        for monitor, size in zip(self.monitors, sizes):
            ids = np.full(n, -1, dtype=np.int64)
            counts = np.zeros((n, *monitor.counts_shape))
            for b in kept:
                ids[b % n] = b
                counts[b % n] = vectors[b][offset:offset + size].reshape(monitor.counts_shape)
            monitor.load_state({"ids": ids, "counts": counts})
            offset += size
        return None

    def vector_size(self) -> int:
        return sum(self._segment_sizes())

    def _segment_sizes(self) -> list[int]:
        return [int(np.prod(m.counts_shape)) for m in self.monitors]

    def get_config(self) -> dict:
        return {m.name: m.get_config() for m in self.monitors}
