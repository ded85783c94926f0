"""benchmarks/regions.py's unannounced shifts in benchmarks/streaming.py's protocol: the service's
region monitor against river and Alibi Detect at one false-alarm run length.

    python -m benchmarks.streaming --streams regions      (part of make bench-streaming)

Streams are benchmarks/regions.py's (`make_streams` on its `Pool`): the baseline's real outputs
(probabilities and 64-wide embeddings) on the test split at the training mix, and from the
change on, 10% or 30% of all traffic shifted test scanner images (training/shifts.py: blurry
sensor, rotated 30-60 deg, thick pen, small off-centre; the capture still reads `scanner`),
replayed i.i.d. at `--rate` events/s. Eight shifted streams, all watched the same way, so each
detector is calibrated, and its run length checked, once for the eight.

What each detector watches (one detector per region and per test, novel included):

- classguard: the service's `RegionMonitor.from_codebook` on the codebook benchmarks/regions.py's
  headline `service` setup fits (`region_setup` at `HEADLINE`: K=32, novel_quantile 0.99,
  references at the training mix with their upper 95% bounds), fed 1 s buckets and checked
  as streaming.py's `Classguard` is (every decision rule after each drain of the service's
  pipeline), a fresh monitor after each alarm. An alarm is what benchmarks/regions.py counts:
  any region's share or low-confidence CUSUM, or the whole-mix Jensen-Shannon distance. Knob:
  `cusum_threshold` (the distance keeps its `js_threshold`). Novel events are placed in the
  new regions the service forms from them (runtime.new_regions: placed per drain, searched at
  every publish, `monitors.recompute_seconds`), as the service does; the anchors see the
  codebook's regions (novel whole).
- river `ADWIN`, `PageHinkley` (up): the two 0/1 streams the monitor's two tests count, per
  region: "this event is in region r" (K + 1 detectors, each fed every event: the share test)
  and, over region r's own events, "its confidence is below the codebook's `low_confidence`"
  (the low-confidence test). The same indicators rather than raw values, so that both sides
  see the same evidence, and a rise of either is an upward change (PageHinkley's direction).
- river `KSWIN`: each region's own confidence (a KS test on a 0/1 stream only compares two
  proportions of 30 events), and no share indicators: it runs a two-sample test at every
  update (about 250 us here), so K + 1 indicators fed every event would cost about 8 ms an
  event. It is blind to a shift that moves shares without moving any region's confidence.
- Alibi Detect `MMDDriftOnline` (torch backend, one thread), one detector on the 64-wide
  embedding, configured by Alibi to `ert` = the target run length
  (benchmarks/streaming_alibi.py). Its threshold configuration is a Python loop over
  bootstraps x window positions, so its settings are cost-bound: a window of 100 (as FET's and
  CVM's), `MMD_REFERENCE` = 500 reference events and the fewest bootstraps Alibi accepts plus
  10% (its quantile needs `ert` of them left after every window position): about 3 minutes at
  ert 10,000 here, then about 400 us an event. At 2,000 references and 20,000 bootstraps it
  had not finished after 12 minutes and held 12 GB; two torch threads made it 3x slower.
  `LSDDDriftOnline` stacks every bootstrap's kernel features at once (GBs at these sizes) and
  is not run; nor is `FETDriftOnline` on the region indicators (K + 1 detectors fed every
  event, 80-100 us each: about 3 ms an event).
- the floors: never fires; fires every ARL events.

The bursty replay is the stationary stream with its phone requests in runs of 50 (phone images
fall in regions of their own, so their shares come in bursts).

Cost cuts, on top of streaming.py's (KSWIN calibrated and checked on 1/8 of the stationary
events, `SLOW`; Alibi checked on 1/4, `ALIBI_SHARE`): KSWIN and Alibi run on the first quarter
of each stream's `--repeats` (`REPEATS_SHARE`: about 250 and 400 us an event), and each row
says how many streams its delays come from (`change_streams`).
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import TYPE_CHECKING, Callable

import numpy as np

from benchmarks.regions import (CHANGE_AT, HEADLINE, Pool, RegionSetup, Stream, event_type, make_streams, model_outputs,
                                new_region_tracker, region_setup)
from benchmarks.streaming import (ALIBI_SHARE, SLOW, alibi_row, call_alibi, floors, log, measure, phone_in_runs,
                                  river_factory)
from benchmarks.streaming_alibi import WINDOWS

if TYPE_CHECKING:
    from monitors.events import WindowConfig

REPEATS_SHARE = {"KSWIN": 4, "Alibi": 4}  # these run on the first 1/n of each stream's repeats
RIVER_INPUTS = {"KSWIN": ("confidence", False)}  # (per-region value, share indicators); else low confidence, both
MMD_REFERENCE = 500  # reference events; the threshold configuration's and each prediction's cost grow with it
ALIBI_STREAMS = "region streams"  # the one entry handed to Alibi: one detector for every stream


@dataclasses.dataclass
class RegionBench:
    """What every detector here needs: the events' pool, the headline codebook, the window."""

    pool: Pool
    setup: RegionSetup
    window: WindowConfig
    rate: float
    recompute_seconds: float = 5.0  # the service's publish, where new regions are searched for

    @property
    def regions(self) -> int:
        return self.setup.codebook.k + 1  # novel last

    def observe(self, stream: Stream, value: str) -> tuple[np.ndarray, np.ndarray]:
        """Per event its region (K: novel) and `value`: "low confidence" (0/1, the monitor's
        low-confidence test) or "confidence" (the top-class probability)."""
        confidence = self.pool.confidence[stream.rows]
        if value == "low confidence":
            confidence = (confidence < self.setup.codebook.low_confidence).astype(np.float64)
        return self.setup.pool_region[stream.rows], confidence


class RegionClassguard:
    """The service's region monitor at one `cusum_threshold`, checked as streaming.py's
    `Classguard` checks its suite: 1 s buckets, the decision rules after every drain, a fresh
    monitor after an alarm; novel events placed in the new regions the service forms from them
    (runtime.new_regions, searched at every publish)."""

    def __init__(self, bench: RegionBench, threshold: float) -> None:
        window = dataclasses.replace(bench.window, cusum_threshold=threshold)
        self.bench, self.make = bench, lambda: bench.setup.monitor(window)  # noqa: E731

    def run(self, stream: Stream) -> tuple[list[int], float]:
        from runtime.monitor_pipeline import DRAIN_SECONDS

        events, rate = event_type(), self.bench.rate
        region = self.bench.setup.pool_region[stream.rows].copy()
        confidence = self.bench.pool.confidence[stream.rows]
        n = len(stream)
        t, unused = np.arange(n) / rate, np.zeros(n, np.int64)  # the monitor reads region and confidence only
        drain = max(1, round(rate * DRAIN_SECONDS))
        publish = max(drain, round(rate * self.bench.recompute_seconds))
        # the service's new regions (with the service's own references): novel events placed as
        # they arrive, searched at each publish
        tracker = new_region_tracker(self.bench.setup) if self.bench.setup.service else None
        embeddings = self.bench.pool.emb[stream.rows] if tracker is not None else None
        monitor, alarms = self.make(), []
        began = time.perf_counter()
        for start in range(0, n, drain):
            s = slice(start, min(start + drain, n))
            if tracker is not None:
                region[s] = tracker.place(embeddings[s], region[s], now=float(t[s.stop - 1]))
            monitor.update_many(events(t[s], unused[s], unused[s], unused[s], confidence[s], unused[s],
                                       region=region[s]))
            if tracker is not None and s.stop % publish < drain:
                tracker.refresh(float(t[s.stop - 1]), self.bench.window.n_buckets * self.bench.window.bucket_s)
            if monitor.decisions(float(t[s.stop - 1])).any():
                alarms.append(s.stop)
                monitor = self.make()
        return alarms, 1e6 * (time.perf_counter() - began) / n


def run_river_regions(region: np.ndarray, value: np.ndarray, regions: int, make, shares: bool
                      ) -> tuple[list[int], float]:
    """Alarm indices (event index + 1) and microseconds per event. Per region, a detector on
    `value` over the region's own events and (with `shares`) one on the 0/1 stream "this event
    is in the region", fed every event. An event where any of them fires is an alarm; each
    detector restarts itself, as river's do."""
    began = time.perf_counter()
    everywhere = np.arange(len(region))
    fired: set[int] = set()
    for r in range(regions):
        inside = region == r
        where = np.flatnonzero(inside)
        fed = [(where, value[where])] + ([(everywhere, inside.astype(np.float64))] if shares else [])
        for at, values in fed:
            detector = make()
            for i, x in zip(at.tolist(), values.tolist()):
                detector.update(x)
                if detector.drift_detected:
                    fired.add(i + 1)
    return sorted(fired), 1e6 * (time.perf_counter() - began) / max(1, len(region))


# --- streams ----------------------------------------------------------------------------------

def stationary(pool: Pool, phone_share: float, n: int, seed: int) -> Stream:
    return make_streams(pool, phone_share, n, 0, seed)["stationary"]


def in_bursts(stream: Stream, pool: Pool, seed: int) -> Stream:
    """`stream`'s phone requests (as many, to a multiple of 50) arriving in runs of 50."""
    rng = np.random.default_rng(seed + 99)
    phone = phone_in_runs(stream.phone, rng)
    n = len(stream)
    return Stream(np.where(phone, rng.choice(pool.phone_rows, n), rng.choice(pool.scanner_rows, n)), phone, None)


def changed_streams(pool: Pool, phone_share: float, repeats: int, warmup: int, after: int, seed: int
                    ) -> dict[str, list[Stream]]:
    """Per shifted stream of benchmarks/regions.py, `repeats` streams: its last `warmup`
    stationary events, then `after` events of the shift (the change at index `warmup`)."""
    if not 0 < warmup <= CHANGE_AT:
        raise ValueError(f"warmup must be within 1..{CHANGE_AT}, got {warmup}")
    cut = CHANGE_AT - warmup
    out: dict[str, list[Stream]] = {}
    for r in range(repeats):
        for name, s in make_streams(pool, phone_share, 0, CHANGE_AT + after, seed + 100 + r).items():
            if s.change is not None:
                out.setdefault(name, []).append(Stream(s.rows[cut:], s.phone[cut:], s.change - cut))
    return out


def head(stream: Stream, n: int) -> Stream:
    return Stream(stream.rows[:n], stream.phone[:n], stream.change)


def first_of(changed: dict[str, list[Stream]], share: int) -> dict[str, list[Stream]]:
    """The first 1/`share` of each stream's repeats (at least one)."""
    return {name: streams[:max(1, math.ceil(len(streams) / share))] for name, streams in changed.items()}


# --- the rows ---------------------------------------------------------------------------------

def region_rows(names: list[str], args) -> tuple[dict, dict]:
    """Per region stream, a row per detector (floors last); and what the JSON records of the
    setup. `names` as streaming.py's `--detectors`."""
    from core.config import load_settings
    from runtime.monitor_pipeline import window_config

    settings = load_settings()
    log("regions: running the baseline on the validation, test and shifted test images ...")
    out = model_outputs(args.seed)
    pool = Pool(out)
    k, q, reference = HEADLINE
    bench = RegionBench(pool, region_setup(out, pool, k, q, args.seed, reference), window_config(settings.monitors),
                        args.rate, settings.monitors.recompute_seconds)
    phone_share = out["profile"].training_subgroup_shares["capture=phone"]
    calibration = stationary(pool, phone_share, args.calibration_events, args.seed + 1)
    check = stationary(pool, phone_share, args.check_events, args.seed + 2)
    bursty = in_bursts(stationary(pool, phone_share, args.check_events, args.seed + 3), pool, args.seed + 3)
    changed = changed_streams(pool, phone_share, args.repeats, args.warmup, args.after, args.seed)
    rows: dict[str, dict] = {name: {} for name in changed}
    for name in names:
        part = SLOW.get(name, 1)
        cut = [head(s, len(s) // part) for s in (calibration, check, bursty)]
        measured = measure(name, lambda knob: runner(name, knob, bench), *cut,
                           first_of(changed, REPEATS_SHARE.get(name, 1)), len, args)
        for stream, row in measured.items():
            rows[stream][name] = row
    if args.alibi_python:
        for stream, (name, row) in run_alibi_regions(args.alibi_python, bench, changed, check, bursty,
                                                     stationary(pool, phone_share, MMD_REFERENCE, args.seed + 4),
                                                     args).items():
            rows[stream][name] = row
    codebook = bench.setup.codebook
    info = {"headline": {"k": codebook.k, "novel_quantile": q, "reference": reference,
                         "novel_distance": round(codebook.novel_distance, 4),
                         "low_confidence": round(codebook.low_confidence, 4)},
            "river_inputs": {name: RIVER_INPUTS.get(name, ("low confidence", True)) for name in names
                             if name != "classguard"},
            "repeats_share": REPEATS_SHARE, "mmd_reference": MMD_REFERENCE, "mmd_window": WINDOWS["mmd"][0],
            "mmd_bootstraps": mmd_bootstraps(args.arl, WINDOWS["mmd"][0])}
    return {stream: {**r, **floors(args)} for stream, r in rows.items()}, info


def runner(name: str, knob: float, bench: RegionBench) -> Callable[[Stream], tuple[list[int], float]]:
    if name == "classguard":
        return RegionClassguard(bench, knob).run
    make = river_factory(name, knob)
    value, shares = RIVER_INPUTS.get(name, ("low confidence", True))
    return lambda stream: run_river_regions(*bench.observe(stream, value), bench.regions, make, shares)


def mmd_bootstraps(ert: float, window: int) -> int:
    """The fewest bootstraps Alibi's online threshold configuration accepts, plus 10%: each of
    the `window` positions drops the 1/ert above its threshold, and the last still needs ert."""
    return math.ceil(1.1 * ert / (1.0 - 1.0 / ert) ** window)


def run_alibi_regions(python: str, bench: RegionBench, changed: dict[str, list[Stream]], check: Stream,
                      bursty: Stream, reference: Stream, args) -> dict[str, tuple[str, dict]]:
    """One MMDDriftOnline on the embedding for every region stream, in Alibi's environment:
    configured once, checked once on the stationary streams, then each stream's first repeats."""
    emb = bench.pool.emb
    kept = first_of(changed, REPEATS_SHARE["Alibi"])
    streams = [s for name in kept for s in kept[name]]
    arrays = {"ert": np.array(args.arl), "bootstraps": np.array(mmd_bootstraps(args.arl, WINDOWS["mmd"][0])),
              "shifts": np.array([ALIBI_STREAMS]), "s0/kind": np.array("mmd"), "s0/groups": np.array(1),
              "s0/per_subgroup": np.array(False), "s0/reference/0": emb[reference.rows],
              "s0/repeats": np.array(len(streams))}
    for part, stream in (("check", check), ("bursty", bursty)):
        rows = stream.rows[:len(stream) // ALIBI_SHARE]
        arrays[f"s0/{part}/value"], arrays[f"s0/{part}/subgroup"] = emb[rows], np.zeros(len(rows), np.int64)
    for r, stream in enumerate(streams):
        arrays[f"s0/changed/{r}/value"] = emb[stream.rows]
        arrays[f"s0/changed/{r}/subgroup"] = np.zeros(len(stream), np.int64)
    log(f"regions: Alibi Detect MMD, in its own environment ({len(streams)} change streams) ...")
    got = call_alibi(python, arrays)[ALIBI_STREAMS]
    out, start = {}, 0
    for name, ours in kept.items():
        mine = {**got, "changed": got["changed"][start:start + len(ours)], "us": got["us"][start:start + len(ours)]}
        start += len(ours)
        out[name] = alibi_row(mine, len(check) // ALIBI_SHARE, len(bursty) // ALIBI_SHARE,
                              [s.change for s in ours], args)
    return out
