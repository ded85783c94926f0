"""Unlabelled groups in the embedding: region monitors against the confidence monitor, a novelty
rate and Evidently's embedding drift, on input shifts no subgroup attribute announces.

    python -m benchmarks.regions            (make bench-regions)

Events are the baseline model's real outputs (probabilities and 64-wide penultimate
embeddings from the stored TorchScript module) on the test split, replayed at 100 events/s
of synthetic time, as in benchmarks/detection.py:

- stationary: the subgroup mix of the model's training data, 100,000 events;
- for each shift in training/shifts.py and each mix (10%, 30%): from event 20,000 on, that
  share of all traffic is shifted test scanner images. The capture deriver still says
  `scanner` for every one of them (asserted), so the subgroup keys do not move; the phone
  share stays at the training mix.

The region codebook is fitted on the validation split's embeddings (K=32, seed 0, the
defaults otherwise). Two things about that split decide what a region's reference must be:

- it holds both captures half and half while traffic runs at the training mix (3% phone),
  so each region's reference share and low-confidence rate are the validation's,
  re-weighted per subgroup to the training mix (`point`: the same numbers as
  `fit_codebook(..., subgroup_mix=training shares)`). A codebook fitted without a mix
  (`validation mix`) is replayed as a variant: on stationary traffic it keeps the monitor
  in alarm all the time;
- it is small (359 images per capture, about 11 per region at K=32), and the test images the
  traffic is made of are other images: point estimates of a region's share are off by up to
  2x, enough for the rise test to fire on stationary traffic. The codebook therefore also
  stores the upper end of the 95% interval of each estimate (a Jeffreys bound at the
  re-weighted sample's effective size), and the service's monitor tests against those
  (`service`: `fit_codebook(..., subgroup_mix=training shares)` and
  `RegionMonitor.from_codebook`, exactly what the service builds; the headline). `point`
  (the point estimates) and `upper95` (the bounds computed here) run as variants.

Variants replay K in {16, 32, 64}, novel_quantile in {0.98, 0.99, 0.995} and the kinds of
reference; the headline was chosen by stationary false alarms first, then delay.

Detectors, each checked after every 1 s bucket:

- regions: `RegionMonitor`; an alarm is any region's share or low-confidence CUSUM, or the
  whole-mix Jensen-Shannon distance;
- confidence: `ConfidenceDrift` per subgroup, as benchmarks/detection.py builds it;
- novelty rate: the share of predictions farther than the codebook's `novel_distance` from
  every prototype, over the same 300 s window, against a fixed threshold: the stationary
  stream's maximum (no false alarm there by construction, the detector's best case);
- Evidently: the legacy `EmbeddingsDriftMetric` drift methods (`model`: a classifier's ROC
  AUC, Evidently's default; `distance`: euclidean distance of the means) on tumbling windows
  of W events aligned to the change, threshold calibrated to no false alarm on the
  stationary stream as detection.py's calibrated variant. The method objects are called
  directly on the window's embeddings: the same number the metric reports, without the
  metric's t-SNE plot, which took 65-78 s per window on this machine (1,000+ windows here).
  Windows of the change streams are evaluated from the change on; the stationary stream
  stands for their pre-change part.

Attribution at the regions' first alarm after the change: the alarmed regions are ranked
(`cusum`: the larger of the share and low-confidence CUSUM, the evidence each test holds;
`harm`: live-minus-reference share x (1 - reference accuracy)), and over the requests of the
top region, precision is the share that are shifted and recall the share of shifted requests
that fall in it (top 3: in any of the three). Three spans: the top region's own CUSUM
segment (the buckets since its statistic last stood at zero: the monitor's own estimate of
when the change began, no knowledge of the true change point); all traffic after the change
(what the region holds once the shift has settled); and the monitor's whole 300 s window at
the alarm, which at the first alarm is mostly pre-change traffic.

Results: a table on stdout and artifacts/bench_regions.json; progress on stderr.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from monitors.new_regions import NEW_SLOTS, new_region_names

if TYPE_CHECKING:
    from monitors.regions import Codebook

RATE = 100.0  # events per second of synthetic time
CHANGE_AT = 20_000
OUT = Path("artifacts/bench_regions.json")
MODEL = "classguard-baseline"
MIXES = (0.10, 0.30)
EVIDENTLY_REFERENCE_ROWS = 2_000  # the classifier method's cost grows with reference + window rows
EMBEDDING_COLUMNS = [f"e{i:02d}" for i in range(64)]
# ranking of the alarmed regions: by evidence (the larger CUSUM), by harm (excess share x
# validation error), or `narrowest`: by evidence, novel after every other alarmed region (it
# holds every ordinary outlier besides the group: the runbook's narrower lever comes first)
RULES = ("cusum", "harm", "narrowest")
TARGET_PRECISION_10 = 0.7
TARGET_DELAY_FRACTION, TARGET_PRECISION = 0.5, 0.8
WARM_UP_EVENTS = 1_000  # the first 10 s of a window: what every restart goes through
REFERENCES = ("service", "point", "upper95", "validation mix")  # see region_setup
HEADLINE = (32, 0.99, "service")
VARIANTS = [(16, 0.99, "service"), (64, 0.99, "service"), (32, 0.98, "service"), (32, 0.995, "service"),
            (32, 0.99, "point"), (32, 0.99, "upper95"), (32, 0.99, "validation mix")]


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def event_type():
    """EventBatch, or (before it carried a region column) a subclass that adds one."""
    from monitors.events import EventBatch

    if "region" in EventBatch.__dataclass_fields__:
        return EventBatch
    return dataclasses.make_dataclass("RegionEventBatch", [("region", np.ndarray, dataclasses.field(default=None))],
                                      bases=(EventBatch,), frozen=True)


# --- the model's outputs -----------------------------------------------------------------

def model_outputs(seed: int) -> dict:
    """Probabilities and embeddings of the baseline: validation, test, and shifted test scanner images."""
    import torch

    from monitors.reference import ReferenceProfile, softmax
    from runtime.derived import captures_from_border
    from runtime.models import find_stored
    from store.model_store import PROFILE_KEY, WEIGHTS_FILE
    from training.digits import build_incident
    from training.shifts import SHIFTS

    stored = find_stored(f"{MODEL}:latest")
    module = torch.jit.load(stored.path_of(WEIGHTS_FILE)).eval()

    def run(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = torch.from_numpy(images.astype(np.float32) / 255.0)[:, None]
        with torch.inference_mode():
            return softmax(module(x).double().numpy()), module.embed(x).numpy()

    incident = build_incident()
    val, test = incident.validation, incident.test
    out = {"profile": ReferenceProfile.from_dict(stored.info.metadata[PROFILE_KEY]), "shifted": {}}
    out["val_probs"], out["val_emb"] = run(val.images)
    out["val_labels"], out["val_keys"] = val.labels, np.array([f"capture={c}" for c in val.captures])
    out["test_probs"], out["test_emb"] = run(test.images)
    out["test_labels"], out["test_captures"] = test.labels, test.captures
    scanner = test.where("scanner")
    for i, (name, shift) in enumerate(SHIFTS.items()):
        images = shift(scanner.images, np.random.default_rng([seed, i]))
        derived = np.array(captures_from_border(images[:, None].astype(np.float64) / 255.0))
        probs, emb = run(images)
        out["shifted"][name] = {"probs": probs, "emb": emb, "labels": scanner.labels,
                                "derived_scanner": float(np.mean(derived == "scanner"))}
    return out


class Pool:
    """Every image an event can carry: the test split, then each shift's images."""

    def __init__(self, out: dict) -> None:
        parts = [(out["test_probs"], out["test_emb"], out["test_labels"], False)]
        parts += [(s["probs"], s["emb"], s["labels"], True) for s in out["shifted"].values()]
        self.probs = np.concatenate([p[0] for p in parts])
        self.emb = np.concatenate([p[1] for p in parts]).astype(np.float32)
        self.labels = np.concatenate([p[2] for p in parts])
        self.shifted = np.concatenate([np.full(len(p[0]), p[3]) for p in parts])
        self.predicted, self.confidence = self.probs.argmax(axis=1), self.probs.max(axis=1)
        captures = out["test_captures"]
        self.phone_rows, self.scanner_rows = np.flatnonzero(captures == "phone"), np.flatnonzero(captures == "scanner")
        self.shift_rows, start = {}, len(captures)
        for name, s in out["shifted"].items():
            self.shift_rows[name] = np.arange(start, start + len(s["probs"]))
            start += len(s["probs"])


@dataclasses.dataclass(frozen=True)
class Stream:
    """Events as rows of the pool and their phone/scanner capture, with the change (or None)."""

    rows: np.ndarray
    phone: np.ndarray
    change: int | None

    def __len__(self) -> int:
        return len(self.rows)


def make_streams(pool: Pool, phone_share: float, n_stationary: int, n_change: int, seed: int) -> dict[str, Stream]:
    def draw(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        phone = rng.random(n) < phone_share
        return np.where(phone, rng.choice(pool.phone_rows, n), rng.choice(pool.scanner_rows, n)), phone

    streams = {"stationary": Stream(*draw(np.random.default_rng([seed, 0]), n_stationary), None)}
    for i, name in enumerate(pool.shift_rows, start=1):
        for mix in MIXES:
            rng = np.random.default_rng([seed, i, round(mix * 100)])
            rows, phone = draw(rng, n_change)
            # only scanner events are replaced, so the phone share stays at the training mix
            swap = (np.arange(n_change) >= CHANGE_AT) & ~phone & (rng.random(n_change) < mix / (1.0 - phone_share))
            rows[swap] = rng.choice(pool.shift_rows[name], int(swap.sum()))
            streams[stream_name(name, mix)] = Stream(rows, phone, CHANGE_AT)
    return streams


def stream_name(shift: str, mix: float) -> str:
    return f"{shift} {round(mix * 100)}%"


# --- region references at the traffic's mix ----------------------------------------------

def references_at_mix(codebook: Codebook, val_regions: np.ndarray, val_keys: np.ndarray, val_confidence: np.ndarray,
                      mix: dict[str, float], upper: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Each region's share and low-confidence rate on the validation split re-weighted so its
    subgroups stand in the proportions of `mix` (the validation split is half phone).

    With `upper`, each is the upper `upper` quantile of its Jeffreys posterior instead, at the
    weighted sample's effective size: a region estimated from a handful of validation images
    is held to a rate the validation split cannot rule out, not to its point estimate."""
    from scipy.stats import beta

    keys, counts = np.unique(val_keys, return_counts=True)
    val_share = dict(zip(keys.tolist(), counts / counts.sum()))
    weight = np.array([mix.get(k, 0.0) / val_share[k] for k in val_keys])
    n_regions = codebook.k + 1
    low_weight = weight * (val_confidence < codebook.low_confidence)
    mass = np.bincount(val_regions, weight, minlength=n_regions)
    low = np.bincount(val_regions, low_weight, minlength=n_regions)
    overall = low.sum() / mass.sum()
    with np.errstate(invalid="ignore", divide="ignore"):
        shares, rates = mass / mass.sum(), np.where(mass > 0, low / mass, overall)
        if upper is None:
            return shares, rates
        # effective sample sizes of weighted counts: (sum w)^2 / sum w^2
        n_all = weight.sum() ** 2 / np.sum(weight ** 2)
        n_region = mass ** 2 / np.bincount(val_regions, weight ** 2, minlength=n_regions)
        shares = beta.ppf(upper, shares * n_all + 0.5, (1.0 - shares) * n_all + 0.5)
        rates = np.where(mass > 0, beta.ppf(upper, rates * n_region + 0.5, (1.0 - rates) * n_region + 0.5), overall)
    return shares, rates


@dataclasses.dataclass
class RegionSetup:
    """One codebook and what the replay needs from it."""

    codebook: Codebook
    pool_region: np.ndarray
    shares: np.ndarray
    low_rates: np.ndarray
    accuracy: np.ndarray

    service: bool = False

    def monitor(self, window):
        from monitors.regions import RegionMonitor

        if self.service:  # exactly what the service runs: the codebook's own references and bounds
            return RegionMonitor.from_codebook(self.codebook, window)
        return RegionMonitor(self.codebook.names(), self.shares.tolist(), self.low_rates.tolist(),
                             self.codebook.low_confidence, window)


def region_setup(out: dict, pool: Pool, k: int, novel_quantile: float, seed: int, reference: str = "point"):
    """A codebook fitted on the validation embeddings, with reference shares and low-confidence
    rates per `reference`: the validation's at the training mix (`point`), their upper 95%
    bounds (`upper95`), or the codebook's own, at the validation's half-phone mix."""
    from monitors.regions import fit_codebook

    val_probs = out["val_probs"]
    mix = out["profile"].training_subgroup_shares if reference == "service" else None
    codebook = fit_codebook(out["val_emb"], labels=out["val_labels"], predicted=val_probs.argmax(axis=1),
                            confidence=val_probs.max(axis=1), subgroups=out["val_keys"], k=k, seed=seed,
                            novel_quantile=novel_quantile, subgroup_mix=mix)
    accuracy = np.array([r.accuracy for r in codebook.regions])
    if reference == "service":  # what build_profile stores and the service's suite builds
        shares = np.array([r.share for r in codebook.regions])
        rates = np.array([r.low_confidence_rate for r in codebook.regions])
        return RegionSetup(codebook, codebook.assign(pool.emb), *with_new_slots(shares, rates, accuracy),
                           service=True)
    if reference == "validation mix":
        shares = np.array([r.share for r in codebook.regions])
        rates = np.array([r.low_confidence_rate for r in codebook.regions])
        counts = np.array([r.count for r in codebook.regions])
        rates = np.where(counts > 0, rates, np.nansum(rates * counts) / counts.sum())
    else:
        shares, rates = references_at_mix(codebook, codebook.assign(out["val_emb"]), out["val_keys"],
                                          val_probs.max(axis=1), out["profile"].training_subgroup_shares,
                                          upper=0.95 if reference == "upper95" else None)
    return RegionSetup(codebook, codebook.assign(pool.emb), *with_new_slots(shares, rates, accuracy))


def with_new_slots(shares: np.ndarray, rates: np.ndarray, accuracy: np.ndarray) -> tuple[np.ndarray, ...]:
    """Per-region references for the codebook's regions, extended to the new regions' slots as
    RegionMonitor extends them: share 0, the share-weighted low-confidence rate, no accuracy."""
    known = ~np.isnan(rates)
    overall = float(np.sum(shares[known] * rates[known]) / shares[known].sum())
    return (np.r_[shares, np.zeros(NEW_SLOTS)], np.r_[rates, np.full(NEW_SLOTS, overall)],
            np.r_[accuracy, np.full(NEW_SLOTS, np.nan)])


# --- replay --------------------------------------------------------------------------------

def replay(stream: Stream, pool: Pool, monitors: dict, subgroup_index: dict[bool, int], pool_region: np.ndarray,
           snapshot: str | None = None, tracker=None, publish_every: int = 5) -> dict:
    """Feed 1 s buckets to every monitor; alarm onsets (event index) per monitor, the first
    alarm after the change, and the `snapshot` monitor's scores at that alarm. With `tracker`
    (runtime.new_regions.NewRegionTracker), novel events are placed in new regions as the
    service places them, and new regions are searched for every `publish_every` buckets (the
    service's publish); the events' regions as placed come back under `region`."""
    events = event_type()
    step = int(RATE)
    n = len(stream)
    t = np.arange(n) / RATE
    subgroup = np.where(stream.phone, subgroup_index[True], subgroup_index[False])
    region = pool_region[stream.rows].copy()
    embeddings = pool.emb[stream.rows] if tracker is not None else None
    window_s = next(iter(monitors.values())).window.n_buckets * 1.0
    predicted, confidence = pool.predicted[stream.rows], pool.confidence[stream.rows]
    zeros = np.zeros(n, np.int64)
    onsets: dict[str, list[int]] = {name: [] for name in monitors}
    onset_keys: dict[str, list[tuple]] = {name: [] for name in monitors}
    first: dict[str, int | None] = {name: None for name in monitors}
    active: dict[str, set] = {name: set() for name in monitors}
    buckets_on = dict.fromkeys(monitors, 0)
    scores_at_first = None
    first_new, scores_at_new = None, None  # the first alarm naming a new region, and its scores
    for start in range(0, n, step):
        end = min(start + step, n)
        s = slice(start, end)
        if tracker is not None:
            region[s] = tracker.place(embeddings[s], region[s], now=float(t[end - 1]))
        batch = events(t[s], zeros[s], subgroup[s], predicted[s], confidence[s], zeros[s], region=region[s])
        for name, monitor in monitors.items():
            monitor.update_many(batch)
            scores = monitor.results(float(t[end - 1]))
            now_on = {(sc.statistic, sc.subgroup, sc.pair) for sc in scores if sc.alarm}
            onsets[name] += [end] * len(now_on - active[name])
            onset_keys[name] += [(end, *key) for key in sorted(now_on - active[name])]
            if stream.change is not None and end > stream.change and now_on and first[name] is None:
                first[name] = end
                if name == snapshot:
                    scores_at_first = scores
            if (name == snapshot and first_new is None and stream.change is not None and end > stream.change
                    and any(key[1] in NEW_REGION_KEYS for key in now_on)):
                first_new, scores_at_new = end, scores
            active[name] = now_on
            buckets_on[name] += bool(now_on)
        if tracker is not None and (start // step + 1) % publish_every == 0:
            tracker.refresh(float(t[end - 1]), window_s)
    n_buckets = -(-n // step)
    return {"onsets": onsets, "onset_keys": onset_keys, "first": first, "scores": scores_at_first,
            "time_in_alarm": {name: on / n_buckets for name, on in buckets_on.items()}, "region": region,
            "first_new": first_new, "scores_at_new": scores_at_new,
            "new_regions": None if tracker is None else [
                {"name": new_region_names()[r.slot], "formed_at_event": int(round(r.born * RATE)) + 1,
                 "members": r.members} for r in tracker.known.regions]}


def summarise(onsets: list[int], first: int | None, stream: Stream, keys: list[tuple] | None = None,
              time_in_alarm: float | None = None) -> dict:
    if stream.change is None:
        summary = {"false_alarms_per_100k": round(len(onsets) * 100_000 / len(stream), 1)}
        if time_in_alarm is not None:  # one onset can stay on for the whole stream
            summary["time_in_alarm"] = round(time_in_alarm, 4)
        if keys:  # which statistic raised each false alarm, and when
            summary["false_alarms"] = [{"event": k[0], "statistic": k[1], "subgroup": k[2]} for k in keys]
        return summary
    return {"delay_events": None if first is None else first - stream.change,
            "false_alarms_before_change": sum(1 for o in onsets if o <= stream.change)}


def windowed_rates(flags: np.ndarray, window_events: int, min_samples: int) -> tuple[np.ndarray, np.ndarray]:
    """Bucket ends and the flag's rate over the window ending there (NaN below min_samples)."""
    ends = np.arange(int(RATE), len(flags) + int(RATE) - 1, int(RATE)).clip(max=len(flags))
    c = np.r_[0, np.cumsum(flags)]
    starts = np.maximum(ends - window_events, 0)
    n = ends - starts
    with np.errstate(invalid="ignore", divide="ignore"):
        return ends, np.where(n >= min_samples, (c[ends] - c[starts]) / n, np.nan)


def threshold_alarms(ends: np.ndarray, values: np.ndarray, threshold: float, stream: Stream, strict: bool) -> dict:
    on = values > threshold if strict else values >= threshold
    on &= ~np.isnan(values)
    onsets = ends[on & ~np.r_[False, on[:-1]]].tolist()
    first = next((int(e) for e, o in zip(ends, on) if o and stream.change is not None and e > stream.change), None)
    return summarise(onsets, first, stream)


# --- attribution ------------------------------------------------------------------------------

def attribution(scores, stream: Stream, pool: Pool, setup: RegionSetup, window, end: int,
                placed: np.ndarray | None = None) -> dict:
    """Which region the alarm points at, and how well it matches the shifted requests
    (`placed`: each event's region as the replay placed it, new regions included)."""
    names = setup.codebook.names()
    index = {f"region={name}": i for i, name in enumerate(names)}
    share = np.zeros(len(names))
    share_cusum, low_cusum = np.zeros(len(names)), np.zeros(len(names))
    alarmed = np.zeros(len(names), bool)
    for sc in scores:
        i = index.get(sc.subgroup)
        if i is None:
            continue
        if sc.statistic == "share":
            share[i] = sc.value
        elif sc.statistic == "share_cusum":
            share_cusum[i], alarmed[i] = sc.value, alarmed[i] | sc.alarm
        elif sc.statistic == "low_confidence_cusum":
            low_cusum[i], alarmed[i] = sc.value, alarmed[i] | sc.alarm
    candidates = np.flatnonzero(alarmed) if alarmed.any() else np.arange(len(names))
    evidence = np.maximum(share_cusum, low_cusum)
    novel = setup.codebook.k
    narrowest = evidence.copy()
    if alarmed.sum() > alarmed[novel]:  # something besides novel alarms
        narrowest[novel] = -np.inf
    keys = {"cusum": evidence, "harm": (share - setup.shares) * (1.0 - np.nan_to_num(setup.accuracy, nan=0.0)),
            "narrowest": narrowest}
    window_events = int(window.n_buckets * window.bucket_s * RATE)
    start = max(0, end - window_events)
    rows = stream.rows[start:end]
    placed = setup.pool_region[stream.rows] if placed is None else placed
    region, shifted = placed[start:end], pool.shifted[rows]
    low = pool.confidence[rows] < setup.codebook.low_confidence
    result = {"alarmed_regions": [names[i] for i in np.flatnonzero(alarmed)]}
    for rule, key in keys.items():
        ranked = candidates[np.argsort(-key[candidates], kind="stable")]
        top = int(ranked[0])
        by_share = share_cusum[top] >= low_cusum[top]
        onset = segment_start(region, low, top, by_share, setup, window)
        entry = {"top_region": names[top], "top_3": [names[i] for i in ranked[:3]],
                 "reference_share": round(float(setup.shares[top]), 4), "live_share": round(float(share[top]), 4),
                 "test": "share" if by_share else "low_confidence", "segment_events": len(rows) - onset}
        for span, s in (("window", slice(None)), ("segment", slice(onset, None))):
            entry[span] = match(region[s], shifted[s], ranked[:3])
        after = stream.rows[stream.change:]
        entry["after_change"] = match(placed[stream.change:], pool.shifted[after], ranked[:3])
        result[rule] = entry
    return result


def segment_start(region: np.ndarray, low: np.ndarray, top: int, by_share: bool, setup: RegionSetup, window) -> int:
    """Offset (in events) of the bucket after the top region's CUSUM last stood at zero: its
    own change-point estimate, from the same counts and rates as RegionMonitor's test."""
    from monitors.stats import bernoulli_llr

    step = int(RATE)
    n_buckets = -(-len(region) // step)
    pad = n_buckets * step - len(region)
    in_top = np.r_[region == top, np.zeros(pad, bool)].reshape(n_buckets, step)
    if by_share:
        hits, trials, p = in_top.sum(axis=1), np.full(n_buckets, step), setup.shares[top]
        trials[-1] -= pad
    else:
        hits = (in_top & np.r_[low, np.zeros(pad, bool)].reshape(n_buckets, step)).sum(axis=1)
        trials, p = in_top.sum(axis=1), setup.low_rates[top]
    p0, p1 = window.sequential_rates(np.array([p]))
    hit, miss = bernoulli_llr(p0, p1)
    c = np.r_[0.0, np.cumsum(hits * hit[0] + (trials - hits) * miss[0])]
    last_min = len(c) - 1 - int(np.argmin(c[::-1]))
    return last_min * step


def match(region: np.ndarray, shifted: np.ndarray, top_3: np.ndarray) -> dict:
    in_top = region == top_3[0]
    in_3 = np.isin(region, top_3)
    n_shifted = int(shifted.sum())
    ratio = lambda a, b: round(float(a) / b, 3) if b else None  # noqa: E731
    return {"precision": ratio((in_top & shifted).sum(), int(in_top.sum())),
            "recall": ratio((in_top & shifted).sum(), n_shifted),
            "recall_top_3": ratio((in_3 & shifted).sum(), n_shifted),
            "requests_in_region": int(in_top.sum()), "shifted_requests": n_shifted}


def new_region_tracker(setup: RegionSetup):
    """The service's new-region tracker on this codebook, with a store of its own (one stream's
    regions are not another's); its line per region formed is the service's, not this table's."""
    import logging
    import tempfile

    from runtime.new_regions import NewRegionTracker
    from store.new_regions import LocalNewRegionStore

    logging.getLogger("classguard.monitors").setLevel(logging.ERROR)
    return NewRegionTracker(setup.codebook, LocalNewRegionStore(Path(tempfile.mkdtemp(prefix="classguard-bench-")),
                                                                "bench"))


NEW_REGION_KEYS = {f"region={name}" for name in new_region_names()}  # as monitors.regions.region_key writes them


def run_regions(streams: dict[str, Stream], pool: Pool, setup: RegionSetup, window, subgroup_index, label: str) -> dict:
    began = time.perf_counter()
    results = {}
    for name, stream in streams.items():
        ran = replay(stream, pool, {"regions": setup.monitor(window)}, subgroup_index, setup.pool_region,
                     snapshot="regions", tracker=new_region_tracker(setup))
        results[name] = regions_summary(ran, stream, pool, setup, window)
    log(f"  regions {label}: {time.perf_counter() - began:.1f} s, "
        f"{results['stationary']['false_alarms_per_100k']} false alarms per 100k stationary events")
    return results


def regions_summary(ran: dict, stream: Stream, pool: Pool, setup: RegionSetup, window) -> dict:
    entry = summarise(ran["onsets"]["regions"], ran["first"]["regions"], stream, ran["onset_keys"]["regions"],
                      ran["time_in_alarm"]["regions"])
    if stream.change is None:
        # the window's first 10 s: a monitor restarts with an empty window after every deploy
        entry["false_alarms_warm_up"] = sum(1 for k in ran["onset_keys"]["regions"] if k[0] <= WARM_UP_EVENTS)
    if ran["scores"] is not None:
        entry["attribution"] = attribution(ran["scores"], stream, pool, setup, window, ran["first"]["regions"],
                                           ran["region"])
    if ran.get("scores_at_new") is not None:  # when on-call is first told of a new region
        entry["delay_new_region_events"] = ran["first_new"] - stream.change
        entry["attribution_new_region"] = attribution(ran["scores_at_new"], stream, pool, setup, window,
                                                      ran["first_new"], ran["region"])
    if ran.get("new_regions") is not None:
        formed = []
        for info in ran["new_regions"]:
            inside = ran["region"] == setup.codebook.names().index(info["name"])
            formed.append({**info, "formed_after_change": (info["formed_at_event"] - stream.change
                                                           if stream.change is not None else None),
                           "events": int(inside.sum()),
                           "precision": round(float(pool.shifted[stream.rows[inside]].mean()), 3) if inside.any()
                           else None})
        entry["new_regions"] = formed
    return entry


# --- Evidently ------------------------------------------------------------------------------

def evidently_methods() -> dict:
    """Evidently's embedding drift methods (the legacy EmbeddingsDriftMetric's), at their defaults."""
    from evidently.legacy.metrics.data_drift.embedding_drift_methods import distance, model

    return {"model": model(), "distance": distance()}


def run_evidently(streams: dict[str, Stream], pool: Pool, reference, windows: list[int]) -> dict:
    import pandas as pd

    methods = evidently_methods()

    def values(stream: Stream, w: int, starts, stop_at: dict[str, float] | None):
        """Window ends and, per method, (score, Evidently's own drift verdict) per window."""
        ends, out = [], {m: [] for m in methods}
        pending = set(methods)
        for s in starts:
            current = pd.DataFrame(pool.emb[stream.rows[s:s + w]].astype(np.float64), columns=EMBEDDING_COLUMNS)
            for m in methods:
                if m in pending:
                    # the classifier method adds a target column to both frames it is given
                    score, drifted, _ = methods[m](current.copy(), reference.copy())
                    out[m].append((float(score), bool(drifted)))
                else:
                    out[m].append(out[m][-1])
            ends.append(s + w)
            if stop_at is not None:  # change streams: stop once both thresholds have fired
                pending -= {m for m in pending if any(d for _, d in out[m]) and any(v >= stop_at[m] for v, _ in out[m])}
                if not pending:
                    break
        return np.array(ends), {m: (np.array([v[0] for v in out[m]]), np.array([v[1] for v in out[m]]))
                                for m in methods}

    results: dict = {"methods": {m: {"class": type(methods[m]).__name__, "default_threshold": methods[m].threshold}
                                 for m in methods}, "windows": {}}
    for w in windows:
        began = time.perf_counter()
        stationary = streams["stationary"]
        ends, vals = values(stationary, w, range(0, len(stationary) - w + 1, w), None)
        calibrated = {m: float(score.max()) * 1.0001 for m, (score, _) in vals.items()}
        per_w: dict = {"stationary": {}}
        for m, (_, drifted) in vals.items():
            onsets = int(np.sum(drifted & ~np.r_[False, drifted[:-1]]))
            per_w["stationary"][m] = {"false_alarms_per_100k_default": round(onsets * 100_000 / len(stationary), 1),
                                      "false_alarms_per_100k_calibrated": 0.0,
                                      "calibrated_threshold": round(calibrated[m], 4)}
        for name, stream in streams.items():
            if stream.change is None:
                continue
            ends, vals = values(stream, w, range(stream.change, len(stream) - w + 1, w), calibrated)
            per_w[name] = {}
            for m, (score, drifted) in vals.items():
                on = np.flatnonzero(score >= calibrated[m])
                default_on = np.flatnonzero(drifted)
                per_w[name][m] = {
                    "delay_events_calibrated": int(ends[on[0]] - stream.change) if len(on) else None,
                    "delay_events_default": int(ends[default_on[0]] - stream.change) if len(default_on) else None,
                    "windows_evaluated": len(ends)}
        results["windows"][str(w)] = per_w
        log(f"  Evidently W={w}: {time.perf_counter() - began:.1f} s")
    return results


def evidently_reference(out: dict, seed: int):
    """Validation embeddings resampled to the training mix (the validation split is half phone)."""
    import pandas as pd

    rng = np.random.default_rng([seed, 99])
    share = out["profile"].training_subgroup_shares["capture=phone"]
    keys = out["val_keys"]
    phone, scanner = np.flatnonzero(keys == "capture=phone"), np.flatnonzero(keys == "capture=scanner")
    n = EVIDENTLY_REFERENCE_ROWS
    rows = np.where(rng.random(n) < share, rng.choice(phone, n), rng.choice(scanner, n))
    return pd.DataFrame(out["val_emb"][rows].astype(np.float64), columns=EMBEDDING_COLUMNS)


# --- main ------------------------------------------------------------------------------------

def region_config(text: str) -> tuple[int, float, str]:
    """`K:novel_quantile:reference`, e.g. `32:0.99:upper95`."""
    k, q, reference = text.split(":")
    if reference not in REFERENCES:
        raise argparse.ArgumentTypeError(f"reference must be one of {REFERENCES}, got {reference!r}")
    return int(k), float(q), reference


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stationary-events", type=int, default=100_000)
    parser.add_argument("--change-events", type=int, default=40_000)
    parser.add_argument("--windows", type=lambda s: [int(v) for v in s.split(",")], default=[500, 1000, 2000, 5000])
    parser.add_argument("--regions", type=region_config, default=HEADLINE,
                        help="the headline codebook and references, K:novel_quantile:reference")
    parser.add_argument("--rule", choices=RULES, default="cusum", help="ranking of alarmed regions in the headline")
    parser.add_argument("--variants", type=lambda s: [region_config(v) for v in s.split(",") if v],
                        default=VARIANTS, help="more codebooks to replay, comma-separated K:novel_quantile:reference")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    began = time.perf_counter()

    from core.config import load_settings
    from monitors.confidence import ConfidenceDrift
    from runtime.monitor_pipeline import window_config
    from runtime.subgroups import SubgroupResolver

    settings = load_settings()
    window = window_config(settings.monitors)
    keys = SubgroupResolver(settings.subgroups.attributes).keys()
    subgroup_index = {True: keys.index("capture=phone"), False: keys.index("capture=scanner")}
    log("running the baseline on the validation, test and shifted test images ...")
    out = model_outputs(args.seed)
    derived = {name: s["derived_scanner"] for name, s in out["shifted"].items()}
    if min(derived.values()) < 1.0:
        raise SystemExit(f"a shift is visible to the capture deriver (share still `scanner`): {derived}")
    pool = Pool(out)
    phone_share = out["profile"].training_subgroup_shares["capture=phone"]
    streams = make_streams(pool, phone_share, args.stationary_events, args.change_events, args.seed)
    k, q, reference = args.regions
    results: dict = {
        "rate_events_per_s": RATE, "change_at": CHANGE_AT, "mixes": list(MIXES), "training_phone_share": phone_share,
        "window": dataclasses.asdict(window), "shift_derived_scanner_share": derived,
        "shift_model_accuracy": {name: round(float(np.mean(s["probs"].argmax(axis=1) == s["labels"])), 3)
                                 for name, s in out["shifted"].items()},
        "test_scanner_accuracy": round(float(np.mean(pool.predicted[pool.scanner_rows] ==
                                                      pool.labels[pool.scanner_rows])), 3),
        "headline": {"k": k, "novel_quantile": q, "reference": reference, "rule": args.rule, "seed": args.seed},
    }

    log(f"fitting the codebook (K={k}, novel_quantile={q}, {reference} references) on the validation embeddings ...")
    setup = region_setup(out, pool, k, q, args.seed, reference)
    results["codebook"] = codebook_summary(setup, pool, k)

    log("replaying the streams: regions and confidence monitors ...")
    detectors: dict = {"regions": {}, "confidence": {}, "novelty_rate": {}}
    t0 = time.perf_counter()
    for name, stream in streams.items():
        monitors = {"regions": setup.monitor(window),
                    "confidence": ConfidenceDrift([MODEL], [out["profile"]], keys, window)}
        ran = replay(stream, pool, monitors, subgroup_index, setup.pool_region, snapshot="regions",
                     tracker=new_region_tracker(setup))
        detectors["regions"][name] = regions_summary(ran, stream, pool, setup, window)
        detectors["confidence"][name] = summarise(ran["onsets"]["confidence"], ran["first"]["confidence"], stream,
                                                  ran["onset_keys"]["confidence"], ran["time_in_alarm"]["confidence"])
        log(f"  {name}: regions delay {detectors['regions'][name].get('delay_events', '-')}, "
            f"confidence delay {detectors['confidence'][name].get('delay_events', '-')} "
            f"({time.perf_counter() - t0:.0f} s)")

    novel = setup.codebook.k
    window_events = int(window.n_buckets * window.bucket_s * RATE)
    rates = {name: windowed_rates(setup.pool_region[s.rows] == novel, window_events, window.min_samples)
             for name, s in streams.items()}
    novelty_threshold = float(np.nanmax(rates["stationary"][1])) * 1.0001
    for name, stream in streams.items():
        detectors["novelty_rate"][name] = threshold_alarms(*rates[name], novelty_threshold, stream, strict=True)
    results["novelty_threshold"] = round(novelty_threshold, 4)
    results["detectors"] = detectors

    log(f"Evidently embedding drift on tumbling windows {args.windows} ...")
    results["evidently"] = run_evidently(streams, pool, evidently_reference(out, args.seed), args.windows)

    log(f"variants: {len(args.variants)} more codebooks ...")
    results["variants"] = [{**codebook_summary(setup, pool, k), "reference": reference,
                            "streams": detectors["regions"]}]
    for vk, vq, vref in args.variants:
        if (vk, vq, vref) == (k, q, reference):
            continue
        v_setup = region_setup(out, pool, vk, vq, args.seed, vref)
        results["variants"].append({**codebook_summary(v_setup, pool, vk), "reference": vref, "streams": run_regions(
            streams, pool, v_setup, window, subgroup_index, f"K={vk} q={vq} {vref}")})
    results["run_seconds"] = round(time.perf_counter() - began, 1)
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps(results, indent=2) + "\n")
    print_table(results, args.rule)
    print(f"\nrun time {results['run_seconds']} s; JSON: {OUT}")
    return 0


def codebook_summary(setup: RegionSetup, pool: Pool, k_requested: int) -> dict:
    cb, novel = setup.codebook, setup.codebook.k
    return {"k_requested": k_requested, "k": cb.k, "novel_quantile": cb.novel_quantile,
            "novel_distance": round(cb.novel_distance, 4), "low_confidence": round(cb.low_confidence, 4),
            "reference_novel_share": round(float(setup.shares[novel]), 4),
            "test_assigned_novel": round(float(np.mean(setup.pool_region[~pool.shifted] == novel)), 4),
            "shifted_assigned_novel": {name: round(float(np.mean(setup.pool_region[rows] == novel)), 3)
                                       for name, rows in pool.shift_rows.items()}}


# --- the table --------------------------------------------------------------------------------

def best_evidently(results: dict, stream: str, method: str) -> tuple[int | None, str | None]:
    best = None
    for w, per in results["evidently"]["windows"].items():
        d = per[stream][method]["delay_events_calibrated"]
        if d is not None and (best is None or d < best[0]):
            best = (d, w)
    return best or (None, None)


def fmt(v) -> str:
    return "-" if v is None else (f"{v:.2f}" if isinstance(v, float) else str(v))


def print_table(results: dict, rule: str) -> None:
    det, cb, head = results["detectors"], results["codebook"], results["headline"]
    print(f"\nheadline regions: K={cb['k']} (asked {cb['k_requested']}), novel_quantile {cb['novel_quantile']} -> "
          f"novel_distance {cb['novel_distance']}, low_confidence {cb['low_confidence']}, references "
          f"{head['reference']} (novel {cb['reference_novel_share']}), ranking by {rule}; "
          f"novelty-rate threshold {results['novelty_threshold']}")
    print("shifted scanner images that still derive `scanner`: " + ", ".join(
        f"{k} {v:.0%}" for k, v in results["shift_derived_scanner_share"].items()))
    print("baseline accuracy on them: " + ", ".join(f"{k} {v:.0%}" for k, v in results["shift_model_accuracy"].items())
          + f" (unshifted scanner {results['test_scanner_accuracy']:.0%}); assigned novel: "
          + ", ".join(f"{k} {v:.0%}" for k, v in cb["shifted_assigned_novel"].items())
          + f" (unshifted test {cb['test_assigned_novel']:.1%})")
    st = det["regions"]["stationary"]
    print(f"false alarms per 100k stationary events: regions {st['false_alarms_per_100k']} "
          f"({st['false_alarms_warm_up']} in the first {WARM_UP_EVENTS} events; in alarm {st['time_in_alarm']:.1%} "
          "of the time), confidence "
          f"{det['confidence']['stationary']['false_alarms_per_100k']}, novelty rate "
          f"{det['novelty_rate']['stationary']['false_alarms_per_100k']}; Evidently calibrated 0 by construction; "
          "at Evidently's default thresholds: " + ", ".join(
              f"{m} W={w} {per['stationary'][m]['false_alarms_per_100k_default']}"
              for w, per in results["evidently"]["windows"].items() for m in per["stationary"]))

    print(f"\n{'stream':<24}{'regions':>8}{'conf.':>7}{'novelty':>8}{'Ev.model':>12}{'Ev.dist':>12}  "
          f"{'top region':<16}{'P seg':>6}{'R seg':>6}{'R3 seg':>7}{'P after':>8}{'R after':>8}{'P win':>6}  targets")
    for name, stream_det in det["regions"].items():
        if name == "stationary":
            continue
        d = stream_det["delay_events"]
        em, emw = best_evidently(results, name, "model")
        ed, edw = best_evidently(results, name, "distance")
        best = min((x for x in (em, ed) if x is not None), default=None)
        a = stream_det.get("attribution", {}).get(rule)
        seg, after, win = (a["segment"], a["after_change"], a["window"]) if a else ({}, {}, {})
        top = f"{a['top_region']} ({'share' if a['test'] == 'share' else 'low conf'})" if a else "-"
        targets = ["delay ok" if d is not None and (best is None or d <= TARGET_DELAY_FRACTION * best)
                   else "DELAY MISS"]
        if name.endswith("30%"):
            targets.append("precision ok" if (seg.get("precision") or 0) >= TARGET_PRECISION else "PRECISION MISS")
        print(f"{name:<24}{fmt(d):>8}{fmt(det['confidence'][name]['delay_events']):>7}"
              f"{fmt(det['novelty_rate'][name]['delay_events']):>8}"
              f"{fmt(em) + (f' W{emw}' if emw else ''):>12}{fmt(ed) + (f' W{edw}' if edw else ''):>12}  {top:<16}"
              f"{fmt(seg.get('precision')):>6}{fmt(seg.get('recall')):>6}{fmt(seg.get('recall_top_3')):>7}"
              f"{fmt(after.get('precision')):>8}{fmt(after.get('recall')):>8}{fmt(win.get('precision')):>6}  "
              + ", ".join(targets))
    print("delay: events from the change to the first alarm (monitors checked every 100 events; Evidently: its best "
          "calibrated W). Top region at the regions' first alarm: P/R = precision/recall over its CUSUM segment (seg), "
          "over all traffic after the change (after), and over the whole 300 s window (win). Targets: delay <= "
          f"{TARGET_DELAY_FRACTION} x Evidently's best; P seg >= {TARGET_PRECISION} at 30%.")

    print(f"\nnew regions (formed from novel events while serving; {len(new_region_names())} slots): when each "
          "formed, and the narrowest alarmed region when a new region first alarms")
    print(f"{'stream':<24}{'formed (events after change, members, events, precision)':<62}{'alarm':>7}  "
          f"{'narrowest':<10}{'P seg':>6}{'P after':>8}{'R after':>8}  target")
    for name, stream_det in det["regions"].items():
        formed = stream_det.get("new_regions") or []
        shown = "; ".join(f"{r['name']} +{r['formed_after_change']} ({r['members']}, {r['events']}, "
                          f"{fmt(r['precision'])})" for r in formed) or "none"
        a = (stream_det.get("attribution_new_region") or {}).get("narrowest")
        target = TARGET_PRECISION if name.endswith("30%") else TARGET_PRECISION_10
        verdict = "" if name == "stationary" else ("no new region" if a is None else (
            f"P >= {target} ok" if (a["segment"]["precision"] or 0) >= target else f"P < {target} MISS"))
        print(f"{name:<24}{shown:<62}{fmt(stream_det.get('delay_new_region_events')):>7}  "
              f"{a['top_region'] if a else '-':<10}{fmt(a['segment']['precision']) if a else '-':>6}"
              f"{fmt(a['after_change']['precision']) if a else '-':>8}{fmt(a['after_change']['recall']) if a else '-':>8}"
              f"  {verdict}")

    print(f"\n{'Evidently calibrated delay':<26}" + "".join(
        f"{f'{m} W={w}':>17}" for w in results["evidently"]["windows"] for m in ("model", "distance")))
    windows = results["evidently"]["windows"].values()
    for name in det["regions"]:
        if name != "stationary":
            print(f"{name:<26}" + "".join(f"{fmt(per[name][m]['delay_events_calibrated']):>17}"
                                          for per in windows for m in ("model", "distance")))
    methods = results["evidently"]["methods"]
    thresholds = [f"{per['stationary'][m]['calibrated_threshold']} ({methods[m]['default_threshold']})"
                  for per in results["evidently"]["windows"].values() for m in ("model", "distance")]
    print(f"{'threshold (default)':<26}" + "".join(f"{c:>17}" for c in thresholds))

    names = [n for n in det["regions"] if n != "stationary"]
    print("\nregion variants: delay / precision of the top region over its CUSUM segment, per ranking rule")
    print(f"{'K':>3}{'q':>7} {'reference':<15}{'FA':>5}{'warm':>5}{'on':>6}{'novel':>6}  rule  "
          + "".join(f"{short(n):>13}" for n in names))
    for v in results["variants"]:
        st = v["streams"]["stationary"]
        for rule_name in RULES:
            cells = []
            for n in names:
                s = v["streams"][n]
                a = s.get("attribution", {}).get(rule_name)
                cells.append(f"{fmt(s['delay_events'])}/{fmt(a['segment']['precision']) if a else '-'}")
            print(f"{v['k']:>3}{v['novel_quantile']:>7} {v['reference']:<15}{st['false_alarms_per_100k']:>5}"
                  f"{st['false_alarms_warm_up']:>5}{st['time_in_alarm']:>6.0%}{v['reference_novel_share']:>6.3f}  "
                  f"{rule_name:<6}"
                  + "".join(f"{c:>13}" for c in cells))
    print("FA: false alarms (onsets) per 100k stationary events, warm: of them in the first "
          f"{WARM_UP_EVENTS} events, on: share of the stationary stream spent in alarm; novel: the novel region's "
          "reference share")


def short(name: str) -> str:
    words, mix = name.rsplit(" ", 1)
    return f"{words.split()[0][:7]} {mix}"


if __name__ == "__main__":
    raise SystemExit(main())
