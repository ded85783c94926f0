"""Regions of the model's embedding space: groups nobody labelled, watched like subgroups.

Prototypes are fitted once, with k-means on the validation split's embeddings (the model's
penultimate layer); each live prediction is assigned to its nearest prototype, or to
`novel` when it is farther from all of them than `novel_quantile` of the validation
predictions were. Per region the codebook keeps its validation share, accuracy and
confidence, so a live region growing, or turning unsure, has a reference to be compared
with: `RegionMonitor` runs, per region (novel included), the share and low-confidence tests
`SubgroupRepresentation` and `ConfidenceDrift` run per subgroup. A region reads as the
subgroup key `region=<name>`, which is how it joins the service's subgroup attributes.

After novel come NEW_SLOTS regions `n00`, `n01`, ... that no validation image defined: groups
found in novel traffic while the service runs (monitors/new_regions.py). They are watched
from the start, empty until one forms, so the layout (metric labels, the fleet's windows)
never changes while serving.
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from core.keys import subgroup_key
from monitors.base import WindowedMonitor
from monitors.events import EventBatch, Score, WindowConfig
from monitors.new_regions import NEW_SLOTS, new_region_names
from monitors.stats import bernoulli_cusum, js_distance

NOVEL = "novel"
MAX_REGIONS = 64
KEY_ATTRIBUTE = "region"
KMEANS_ITERATIONS = 25  # kmeans2 runs exactly this many Lloyd steps: no tolerance, so a seed fixes the result
CONFIDENCE_QUANTILES = {"q05": 0.05, "q25": 0.25, "q50": 0.50, "q75": 0.75, "q95": 0.95}
DISTANCE_QUANTILES = {"q50": 0.50, "q90": 0.90, "q95": 0.95, "q99": 0.99, "q999": 0.999}
JS_SAMPLES_PER_REGION = 20  # the whole-mix distance alarms only on this many events per region


def region_names(k: int) -> list[str]:
    """The names of a codebook's K regions, then novel, then the slots of new regions:
    `r00`, `r01`, ..., `novel`, `n00`, ..."""
    return [f"r{i:02d}" for i in range(k)] + [NOVEL] + new_region_names()


def region_key(name: str) -> str:
    """The subgroup key a region is published under: `region=r03`, `region=novel`."""
    return subgroup_key({KEY_ATTRIBUTE: name})


@dataclass(frozen=True)
class RegionReference:
    """One region's validation statistics. A region no validation sample was assigned to
    (novel can be one) has count 0 and NaN where a statistic needs samples."""

    count: int
    share: float
    subgroup_shares: Mapping[str, float]  # only the subgroups present; a missing key is 0
    accuracy: float
    mean_confidence: float
    confidence_quantiles: Mapping[str, float]
    low_confidence_rate: float
    # the upper ends of 95% intervals (Jeffreys, at the weighted sample's effective size) of
    # share and low_confidence_rate: the highest values the validation split cannot rule out.
    # The monitors test against these, so a region estimated from a handful of validation
    # images is not taken to have drifted when live traffic shows its true share.
    share_upper: float = float("nan")
    low_confidence_upper: float = float("nan")


# A new region's reference: validation never saw it (share 0: any share is a rise; no
# low-confidence rate of its own: the validation-wide one applies)
NEW_REFERENCE = RegionReference(count=0, share=0.0, subgroup_shares={}, accuracy=float("nan"),
                                mean_confidence=float("nan"), confidence_quantiles={},
                                low_confidence_rate=float("nan"))


@dataclass(frozen=True, eq=False)  # an array field: compare to_dict() instead
class Codebook:
    """K prototypes (float32, K <= MAX_REGIONS) and K + 1 region references, novel last."""

    prototypes: np.ndarray
    novel_distance: float
    novel_quantile: float
    distance_quantiles: Mapping[str, float]
    low_confidence: float
    regions: tuple[RegionReference, ...]
    seed: int

    def __post_init__(self) -> None:
        prototypes = np.ascontiguousarray(self.prototypes, dtype=np.float32)
        if prototypes.ndim != 2 or not 1 <= len(prototypes) <= MAX_REGIONS:
            raise ValueError(f"prototypes must be a (K, d) array with 1 <= K <= {MAX_REGIONS}, "
                             f"got shape {prototypes.shape}")
        if len(self.regions) != len(prototypes) + 1:
            raise ValueError(f"need {len(prototypes) + 1} region references (K prototypes, then {NOVEL}), "
                             f"got {len(self.regions)}")
        if not self.novel_distance >= 0:
            raise ValueError(f"novel_distance must be >= 0, got {self.novel_distance}")
        object.__setattr__(self, "prototypes", prototypes)
        object.__setattr__(self, "_width", prototypes.shape[1])
        # what assign() needs, computed once: -2 P^T, ||p||^2 and novel_distance^2, all float32
        minus_2pt, squared_norms = _geometry(prototypes)
        object.__setattr__(self, "_minus_2pt", minus_2pt)
        object.__setattr__(self, "_minus_2p", minus_2pt.T)  # (K, d) in Fortran order, as BLAS takes it
        object.__setattr__(self, "_squared_norms", squared_norms)
        object.__setattr__(self, "_novel_squared", _novel_squared(self.novel_distance))

    @property
    def k(self) -> int:
        return len(self.prototypes)

    def names(self) -> list[str]:
        """Every region's name by index: the K prototypes', novel (index K), the new slots."""
        return region_names(self.k)

    def references(self) -> tuple[RegionReference, ...]:
        """Every region's reference by index, as `names()`: the new slots get NEW_REFERENCE."""
        return self.regions + (NEW_REFERENCE,) * NEW_SLOTS

    @property
    def new_radius(self) -> float:
        """How wide a new region is: the validation's q90 distance from an image to its
        prototype (most of a fitted region lies within it)."""
        return float(self.distance_quantiles["q90"])

    def assign(self, embeddings: np.ndarray) -> np.ndarray:
        """(N, d) embeddings -> (N,) int64 region indices in [0, K]; K is novel.

        One prediction at a time is the request path's case, and there numpy's per-call
        overhead is the whole cost, so a single row takes a path of four calls straight into
        BLAS (benchmarks/region_cost.py times it against the batched path and plain numpy)."""
        x = np.asarray(embeddings, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self._width:
            raise ValueError(f"embeddings must be (N, {self._width}), got shape {x.shape}")
        if x.shape[0] == 1:
            return self._assign_one(x[0])
        return self._assign_batch(x)

    def _assign_batch(self, x: np.ndarray) -> np.ndarray:
        nearest, squared = _nearest(x, self._minus_2pt, self._squared_norms)
        nearest[squared > self._novel_squared] = self.k  # a slightly negative square is never novel: no clip needed
        return nearest

    def _assign_one(self, x: np.ndarray) -> np.ndarray:
        # Four calls, each mostly call overhead: gemv adds ||p||^2 as it multiplies (numpy's
        # dot then += is two calls), sdot costs less than ndarray.dot, and argmin(keepdims) is
        # the answer array. Measured head to head (K=32, 64 wide, loaded 2-core machine):
        # 6.1 us against 7.7 us for the same steps in plain numpy; the batched path on one
        # row takes 20-28 us.
        blas = _blas()
        scores = blas.sgemv(1.0, self._minus_2p, x, beta=1.0, y=self._squared_norms)  # y is copied, not written
        nearest = scores.argmin(keepdims=True)
        if scores[nearest[0]] + blas.sdot(x, x) > self._novel_squared:
            nearest[0] = self.k
        return nearest

    def to_dict(self) -> dict[str, Any]:
        """Plain, strict JSON data (NaN is written as None)."""
        return {
            "prototypes": self.prototypes.tolist(),
            "novel_distance": float(self.novel_distance),
            "novel_quantile": float(self.novel_quantile),
            "distance_quantiles": {k: _plain(v) for k, v in self.distance_quantiles.items()},
            "low_confidence": float(self.low_confidence),
            "regions": [
                {
                    "count": int(r.count),
                    "share": _plain(r.share),
                    "subgroup_shares": {str(k): _plain(v) for k, v in r.subgroup_shares.items()},
                    "accuracy": _plain(r.accuracy),
                    "mean_confidence": _plain(r.mean_confidence),
                    "confidence_quantiles": {k: _plain(v) for k, v in r.confidence_quantiles.items()},
                    "low_confidence_rate": _plain(r.low_confidence_rate),
                    "share_upper": _plain(r.share_upper),
                    "low_confidence_upper": _plain(r.low_confidence_upper),
                }
                for r in self.regions
            ],
            "seed": int(self.seed),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Codebook":
        return cls(
            prototypes=np.asarray(data["prototypes"], dtype=np.float32),
            novel_distance=float(data["novel_distance"]),
            novel_quantile=float(data["novel_quantile"]),
            distance_quantiles={k: _float(v) for k, v in data["distance_quantiles"].items()},
            low_confidence=float(data["low_confidence"]),
            regions=tuple(
                RegionReference(
                    count=int(r["count"]),
                    share=_float(r["share"]),
                    subgroup_shares={k: _float(v) for k, v in r["subgroup_shares"].items()},
                    accuracy=_float(r["accuracy"]),
                    mean_confidence=_float(r["mean_confidence"]),
                    confidence_quantiles={k: _float(v) for k, v in r["confidence_quantiles"].items()},
                    low_confidence_rate=_float(r["low_confidence_rate"]),
                    share_upper=_float(r.get("share_upper")),
                    low_confidence_upper=_float(r.get("low_confidence_upper")),
                )
                for r in data["regions"]
            ),
            seed=int(data["seed"]),
        )


def fit_codebook(embeddings: np.ndarray, *, labels: Sequence[Any], predicted: Sequence[Any],
                 confidence: Sequence[float], subgroups: Sequence[str], k: int = 32, seed: int = 0,
                 novel_quantile: float = 0.99, low_quantile: float = 0.1,
                 subgroup_mix: Mapping[str, float] | None = None) -> Codebook:
    """Fit up to k prototypes on validation embeddings and summarise each region.

    `labels`, `predicted`, `confidence` (top-class probability) and `subgroups` (subgroup
    keys) hold one entry per embedding. `low_confidence` is the validation's `low_quantile`
    confidence quantile, one threshold for all regions.

    `subgroup_mix` (subgroup key -> share, e.g. the training set's) reweights the validation
    samples so the regions' reference shares and rates are those of traffic in that mix: a
    validation split balanced across subgroups would otherwise make every region of a rare
    subgroup look over-represented in live traffic at the usual mix. Subgroups it does not
    name keep their validation weight. Prototypes and distance thresholds are fitted unweighted."""
    from scipy.cluster.vq import kmeans2

    x = np.asarray(embeddings, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"embeddings must be a (N, d) array, got shape {x.shape}")
    n = len(x)
    columns = {"labels": labels, "predicted": predicted, "confidence": confidence, "subgroups": subgroups}
    wrong = {name: len(values) for name, values in columns.items() if len(values) != n}
    if wrong:
        raise ValueError(f"labels, predicted, confidence and subgroups need one entry per embedding ({n}), got {wrong}")
    if not 1 <= k <= MAX_REGIONS:
        raise ValueError(f"k must be within 1..{MAX_REGIONS}, got {k}")
    if n < k:
        raise ValueError(f"fitting k={k} regions needs at least {k} embeddings, got {n}")
    if not (0.0 < novel_quantile < 1.0 and 0.0 < low_quantile < 1.0):
        raise ValueError(f"novel_quantile and low_quantile must be within (0, 1), got {novel_quantile}, {low_quantile}")

    with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
        # an empty cluster is handled below; with fewer distinct points than k, k-means++
        # divides 0 by 0 while seeding and then repeats a point
        warnings.filterwarnings("ignore", message="One of the clusters is empty")
        # `rng=`: scipy >= 1.15's name; the legacy `seed=` (a RandomState) is being phased out
        centroids, _ = kmeans2(x, k, iter=KMEANS_ITERATIONS, minit="++", rng=seed)
    prototypes = centroids.astype(np.float32)
    x32 = x.astype(np.float32)
    # A cluster no validation embedding is nearest to (kmeans2 leaves an emptied cluster
    # where it was) has nothing to compare live traffic with: drop it, so K may come out
    # smaller than k. Dropping a prototype nobody is nearest to changes nobody's nearest.
    nearest, _ = _nearest(x32, *_geometry(prototypes))
    prototypes = prototypes[np.unique(nearest)]
    nearest, squared = _nearest(x32, *_geometry(prototypes))
    distance = np.sqrt(np.maximum(squared.astype(np.float64), 0.0))
    novel_distance = float(np.quantile(distance, novel_quantile))
    region = np.where(squared > _novel_squared(novel_distance), len(prototypes), nearest)

    confidence = np.asarray(confidence, dtype=np.float64)
    low_confidence = float(np.quantile(confidence, low_quantile))
    correct = np.asarray(labels) == np.asarray(predicted)
    subgroups = np.asarray(subgroups, dtype=str)
    weights = _mix_weights(subgroups, subgroup_mix)
    references = tuple(_summarise(region == r, weights, correct, confidence, subgroups, low_confidence)
                       for r in range(len(prototypes) + 1))
    return Codebook(
        prototypes=prototypes,
        novel_distance=novel_distance,
        novel_quantile=float(novel_quantile),
        distance_quantiles={key: float(np.quantile(distance, q)) for key, q in DISTANCE_QUANTILES.items()},
        low_confidence=low_confidence,
        regions=references,
        seed=int(seed),
    )


class RegionMonitor(WindowedMonitor):
    """Per region: live share and low-confidence rate against the validation's, each with a
    one-sided Bernoulli CUSUM for a rise; over the whole mix, the Jensen-Shannon distance."""

    name = "regions"

    def __init__(self, regions: Sequence[str], reference_shares: Sequence[float],
                 low_confidence_rates: Sequence[float], low_confidence: float, window: WindowConfig,
                 share_bounds: Sequence[float] | None = None,
                 low_confidence_bounds: Sequence[float] | None = None) -> None:
        self.regions = [str(r) for r in regions]
        self.reference_shares = [float(s) for s in reference_shares]
        self.low_confidence_rates = [float(r) for r in low_confidence_rates]
        self.low_confidence = float(low_confidence)
        self.window = window
        # the rates the rise tests start from, where given (the codebook's upper bounds);
        # published references stay the point estimates
        self.share_bounds = None if share_bounds is None else [float(b) for b in share_bounds]
        self.low_confidence_bounds = (None if low_confidence_bounds is None
                                      else [float(b) for b in low_confidence_bounds])
        if not self.regions or not len(self.regions) == len(self.reference_shares) == len(self.low_confidence_rates):
            raise ValueError(f"need one reference share and one low-confidence rate per region, got "
                             f"{len(self.regions)} regions, {len(self.reference_shares)} shares, "
                             f"{len(self.low_confidence_rates)} rates")
        self._keys = [region_key(r) for r in self.regions]
        self._reference = np.array(self.reference_shares)
        start = self._reference if self.share_bounds is None else np.where(
            np.isnan(self.share_bounds), self._reference, self.share_bounds)
        self._share_p0, self._share_p1 = window.sequential_rates(start)
        self._watched = self._reference < 0.5  # as SubgroupRepresentation: a rise of a majority is not news
        # A region validation never reached has no low-confidence rate (NaN): it is held to the
        # validation-wide rate, the regions' rates weighted by their shares.
        rates = np.array(self.low_confidence_rates)
        known = ~np.isnan(rates)
        weights = self._reference[known]
        overall = np.sum(weights * rates[known]) / weights.sum() if weights.sum() > 0 else np.nan
        self._low_reference = np.where(known, rates, overall)
        low_start = self._low_reference if self.low_confidence_bounds is None else np.where(
            np.isnan(self.low_confidence_bounds), self._low_reference, self.low_confidence_bounds)
        self._low_p0, self._low_p1 = window.sequential_rates(low_start)
        # the whole-mix distance of a small sample over many regions is large by chance alone
        # (100 events over 33 regions: about 0.26 on average, above the 0.2 threshold)
        # (regions validation reached: an empty slot for a new region adds no chance distance)
        self._js_samples = max(window.min_samples, JS_SAMPLES_PER_REGION * int(np.sum(self._reference > 0)))
        self.counts_shape = (len(self.regions), 2)  # [region, low confidence? 0/1]
        self.reset()

    @classmethod
    def from_codebook(cls, codebook: Codebook, window: WindowConfig) -> "RegionMonitor":
        """A monitor on a codebook's regions (novel and the new slots after its K), with their
        references."""
        refs = codebook.references()
        return cls(codebook.names(), [r.share for r in refs], [r.low_confidence_rate for r in refs],
                   codebook.low_confidence, window, [r.share_upper for r in refs],
                   [r.low_confidence_upper for r in refs])

    def update_many(self, events: EventBatch) -> None:
        """Counts events by `events.region` (-1: not assigned, ignored) and by confidence
        below `low_confidence`."""
        if events.region is None:
            return
        region = np.asarray(events.region, dtype=np.int64)
        t, confidence = events.t, np.asarray(events.confidence)
        assigned = region >= 0
        if not assigned.all():
            region, t, confidence = region[assigned], t[assigned], confidence[assigned]
        low = (confidence < self.low_confidence).astype(np.int64)
        self._counts.add(t, (region, low))

    def _statistics(self, now: float) -> tuple:
        series = self._counts.window_series(now)  # (buckets, regions, 2)
        events = series.sum(axis=2)
        live, low = events.sum(axis=0), series[..., 1].sum(axis=0)
        n = int(live.sum())
        share_cusum = bernoulli_cusum(events, events.sum(axis=1, keepdims=True), self._share_p0, self._share_p1)
        low_cusum = bernoulli_cusum(series[..., 1], events, self._low_p0, self._low_p1)
        js = float(js_distance(live, self._reference)) if n else float("nan")
        share_alarm = (n >= self.window.min_samples) & self._watched & (share_cusum > self.window.cusum_threshold)
        low_alarm = (live >= self.window.min_samples) & (low_cusum > self.window.cusum_threshold)
        js_alarm = bool(n >= self._js_samples and js > self.window.js_threshold)
        return live, low, n, share_cusum, low_cusum, js, share_alarm, low_alarm, js_alarm

    def decisions(self, now: float) -> np.ndarray:
        *_, share_alarm, low_alarm, js_alarm = self._statistics(now)
        return np.concatenate([share_alarm, low_alarm, [js_alarm]])

    def results(self, now: float) -> list[Score]:
        live, low, n, share_cusum, low_cusum, js, share_alarm, low_alarm, js_alarm = self._statistics(now)
        shares = live / n if n else np.zeros_like(live)
        with np.errstate(invalid="ignore", divide="ignore"):
            low_rate = low / live
        # plain Python values before the loop: numpy scalar indexing is the slow part here
        counts, shares = live.astype(int).tolist(), shares.tolist()
        share_cusum, share_alarm = share_cusum.tolist(), share_alarm.tolist()
        low_rate, low_cusum, low_alarm = low_rate.tolist(), low_cusum.tolist(), low_alarm.tolist()
        low_reference = self._low_reference.tolist()
        scores = [Score(self.name, "js_distance", js, n, alarm=js_alarm)]
        for i, key in enumerate(self._keys):
            k = counts[i]
            scores += [
                Score(self.name, "share", shares[i], n, subgroup=key, reference=self.reference_shares[i]),
                Score(self.name, "share_cusum", share_cusum[i], n, subgroup=key, alarm=share_alarm[i]),
                Score(self.name, "low_confidence_rate", low_rate[i], k, subgroup=key, reference=low_reference[i]),
                Score(self.name, "low_confidence_cusum", low_cusum[i], k, subgroup=key, alarm=low_alarm[i]),
                Score(self.name, "samples", float(k), k, subgroup=key),
            ]
        return scores


@functools.cache
def _blas():
    """scipy's BLAS wrappers, imported on first use: scipy.linalg takes most of a second to import."""
    from scipy.linalg import blas

    return blas


def _geometry(prototypes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """-2 P^T (d, K) and ||p||^2 (K,), float32: ||x - p||^2 = ||x||^2 + (x (-2 P^T) + ||p||^2)."""
    return np.ascontiguousarray(-2.0 * prototypes.T, dtype=np.float32), np.einsum("ij,ij->i", prototypes, prototypes)


def _nearest(x: np.ndarray, minus_2pt: np.ndarray, squared_norms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nearest prototype of each row and its squared distance, which the expansion can put a
    little below 0 for a row on a prototype (float32 cancellation)."""
    scores = x @ minus_2pt
    scores += squared_norms
    nearest = scores.argmin(axis=1)
    squared = scores[np.arange(len(x)), nearest]
    squared += np.einsum("ij,ij->i", x, x)
    return nearest, squared


def _novel_squared(novel_distance: float) -> np.float32:
    return np.float32(float(novel_distance) ** 2)


def _mix_weights(subgroups: np.ndarray, mix: Mapping[str, float] | None) -> np.ndarray:
    """Per-sample weights, summing to 1, that give each subgroup named in `mix` that share of
    the total (the others keep their validation share); uniform without a mix."""
    n = len(subgroups)
    if not mix:
        return np.full(n, 1.0 / n)
    keys, counts = np.unique(subgroups, return_counts=True)
    observed = dict(zip(keys.tolist(), (counts / n).tolist()))
    named = {k: float(v) for k, v in mix.items() if k in observed and v > 0}
    if not named:
        return np.full(n, 1.0 / n)
    rest = 1.0 - sum(observed[k] for k in observed if k not in named)  # what the named subgroups share
    total = sum(named.values())
    per_key = {}
    for k in observed:
        if k in named:
            per_key[k] = named[k] / total * rest / observed[k]
        else:  # not in the mix: its validation share; in it at 0: left out
            per_key[k] = 0.0 if k in mix else 1.0
    weights = np.array([per_key[k] for k in subgroups.tolist()]) / n
    return weights / weights.sum()


def _summarise(members: np.ndarray, weights: np.ndarray, correct: np.ndarray, confidence: np.ndarray,
               subgroups: np.ndarray, low_confidence: float) -> RegionReference:
    """A region's statistics; `share` and the rates weighted by the samples' mix weights."""
    count = int(members.sum())
    if count == 0:
        nan = float("nan")
        return RegionReference(0, 0.0, {}, nan, nan, {key: nan for key in CONFIDENCE_QUANTILES}, nan)
    conf, w = confidence[members], weights[members]
    share = float(w.sum())
    share_upper = _upper(share, 1.0 / float(np.sum(weights ** 2)))
    if share == 0.0:  # only subgroups the mix leaves out: its statistics unweighted, its share 0
        w = np.ones(count)
    low_rate = float(np.average(conf < low_confidence, weights=w))
    keys, key_counts = np.unique(subgroups[members], return_counts=True)
    return RegionReference(
        count=count,
        share=share,
        subgroup_shares={str(key): int(c) / count for key, c in zip(keys, key_counts)},
        accuracy=float(np.average(correct[members], weights=w)),
        mean_confidence=float(np.average(conf, weights=w)),
        confidence_quantiles={key: float(np.quantile(conf, q)) for key, q in CONFIDENCE_QUANTILES.items()},
        low_confidence_rate=low_rate,
        share_upper=share_upper,
        low_confidence_upper=_upper(low_rate, float(w.sum() ** 2 / np.sum(w ** 2))),
    )


def _upper(rate: float, n: float, level: float = 0.95) -> float:
    """The `level` quantile of the Jeffreys posterior Beta(x + 1/2, n - x + 1/2) of a rate
    observed as `rate` on an effective sample of `n`."""
    from scipy.stats import beta

    return float(beta.ppf(level, rate * n + 0.5, (1.0 - rate) * n + 0.5))


def _plain(value: float) -> float | str:
    """A statistic as strict JSON and BentoML metadata take it (neither has NaN or, for
    metadata, None): a region with no samples has the string "nan"."""
    value = float(value)
    return "nan" if np.isnan(value) else value


def _float(value: float | None) -> float:
    return float("nan") if value is None else float(value)
