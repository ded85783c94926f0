"""classguard's monitors against the online detectors a user would pick instead, at one false-alarm rate.

    python -m benchmarks.streaming            (make bench-streaming)

Streams are benchmarks/detection.py's (the baseline's real outputs on the test split, replayed
i.i.d. at 100 events/s of synthetic time): phone share 3% -> 30%, confidence collapse on
scanner, the known confusion 6->0 on 5% of scanner traffic. Each detector watches what
classguard's matching monitor watches, with the subgroup where classguard has it:

- phone share: the 0/1 stream "this request is `capture=phone`";
- confidence collapse: each subgroup's top-class probability, one detector per subgroup;
- known confusion: each subgroup's 0/1 stream "the 6->0 detector flagged this answer", one
  detector per subgroup.

Region streams (`--streams regions`; benchmarks/streaming_regions.py, whose docstring has the
details) are benchmarks/regions.py's: blurry, rotated, thick pen and small off-centre scanner
images at 10% and 30% of traffic. There classguard is the service's region monitor; river's
ADWIN and PageHinkley watch, per region (novel included), the 0/1 streams its two tests count
("in this region", every event; "confidence below the codebook's low_confidence", the
region's events), KSWIN each region's confidence only (a KS test per update: the share
indicators would make it 33 an event); Alibi's `MMDDriftOnline` watches the 64-wide
embedding. KSWIN and Alibi take their delays from the first quarter of the repeats there.
`--streams` picks families (default: both; a subset writes bench_streaming_<families>.json).

Detectors: classguard's monitor (representation CUSUM, confidence CUSUM, known-confusion
CUSUM; the service's code, `monitors.suite.MonitorSuite`, fed 1 s buckets, its decision rules
checked after every drain of the service's pipeline (0.1 s of events), and restarted after
each alarm as river's detectors restart themselves), river's `ADWIN`,
`PageHinkley` (upward; downward on confidence) and `KSWIN`, Alibi Detect's `FETDriftOnline` and `CVMDriftOnline` (with
`--alibi-python`: benchmarks/streaming_alibi.py, in an environment of its own), and two floors:
one that never fires and one that fires every ARL events.

Protocol. Every detector has one sensitivity knob (classguard: `cusum_threshold`; ADWIN:
`delta`; PageHinkley: `threshold`; KSWIN: `alpha`), calibrated by bisection to the same
expected run length between false alarms on stationary traffic (`--arl`, default 10,000
events). The achieved run length is then measured on fresh stationary streams and reported
with a 95% interval (alarms as a Poisson count). For each shift, `--repeats` streams: a warm-up
of stationary events, then the shift; delay is events from the shift to the first alarm after
it (an alarm before it is a false alarm, not counted as detection; not detected within
`--after` events counts as missed). Reported: median and p90
delay, the share detected within `--bound` events, microseconds per event. A stationary replay
with bursts (phone requests arriving in runs of 50, the same share overall) shows whose false
alarms grow when traffic is not i.i.d.

Results: a table on stdout and artifacts/bench_streaming.json (every stream under `shifts`);
progress on stderr, with each piece's seconds (also in each row's `seconds`).

Cost on this 2-core machine at the defaults, measured at reduced settings (under another
load) and scaled by events: about 25-35 minutes for the detection streams (classguard 55-90 us
an event with its check after every drain, KSWIN 250-500 us on its eighth, Alibi's two
CVMDriftOnline about 6 minutes to configure) and about 17 for the region streams (the region
monitor about 55 us an event, KSWIN about 220 us, Alibi's MMD about 3 minutes to configure,
then about 450 us an event): 45-50 minutes in all.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from benchmarks.detection import CHANGE_AT, PAIR, RATE, Stream, make_streams, model_outputs

OUT = Path("artifacts/bench_streaming.json")  # --rate other than 100 or some --streams: a suffix per choice
FAMILIES = ("detection", "regions")  # --streams
SHIFTS = {"phone share 3% -> 30%": "representation", "confidence collapse (scanner)": "confidence",
          f"known confusion {PAIR} (scanner, 5%)": "known_confusion"}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --- what each detector sees ----------------------------------------------------------------

@dataclass
class Observed:
    """One stream as the detectors see it: per event, its subgroup index and the value watched."""

    subgroup: np.ndarray  # int per event
    value: np.ndarray  # float per event (0/1 indicators or a confidence)
    per_subgroup: bool  # one detector per subgroup (else one for the whole stream)


def observe(stream: Stream, watched: str, flagged: Callable[[np.ndarray], np.ndarray]) -> Observed:
    phone = np.array([k == "capture=phone" for k in stream.keys])
    subgroup = phone.astype(np.int64)
    if watched == "representation":
        return Observed(subgroup, phone.astype(np.float64), per_subgroup=False)
    if watched == "confidence":
        return Observed(subgroup, stream.probs.max(axis=1), per_subgroup=True)
    return Observed(subgroup, flagged(stream.probs).astype(np.float64), per_subgroup=True)


# --- river's detectors ----------------------------------------------------------------------

def river_factory(name: str, knob: float, falls: bool = False):
    """A fresh river detector of `name` at sensitivity `knob` (each a module-level class);
    `falls`: the change watched for is a fall (a confidence collapse), which PageHinkley must be
    told (ADWIN and KSWIN see both directions)."""
    from river import drift

    if name == "ADWIN":
        return lambda: drift.ADWIN(delta=knob)
    if name == "PageHinkley":
        return lambda: drift.PageHinkley(threshold=knob, mode="down" if falls else "up")
    if name == "KSWIN":
        return lambda: drift.KSWIN(alpha=knob, seed=0)
    raise ValueError(name)


def run_river(observed: Observed, make) -> tuple[list[int], float]:
    """Alarm indices (event index + 1) and microseconds per event; river detectors reset on drift."""
    groups = 2 if observed.per_subgroup else 1
    detectors = [make() for _ in range(groups)]
    alarms = []
    values, subgroups = observed.value.tolist(), observed.subgroup.tolist()
    began = time.perf_counter()
    for i, (x, s) in enumerate(zip(values, subgroups)):
        d = detectors[s if observed.per_subgroup else 0]
        d.update(x)
        if d.drift_detected:
            alarms.append(i + 1)
    return alarms, 1e6 * (time.perf_counter() - began) / max(1, len(values))


# --- classguard's monitors ------------------------------------------------------------------

class Classguard:
    """The service's monitor suite at one `cusum_threshold`, fed 1 s buckets like the service and
    checked as its pipeline checks: the watched monitor's decision rules after every drain
    (`DRAIN_SECONDS` of events)."""

    def __init__(self, out: dict, settings, threshold: float, rate: float = RATE) -> None:
        self.rate = rate  # events per second of synthetic time: a bucket holds this many
        from monitors.suite import MonitorSuite
        from runtime.monitor_pipeline import confusion_pairs, window_config
        from runtime.subgroups import SubgroupResolver

        config = settings.monitors.model_copy(update={"cusum_threshold": threshold})
        keys = SubgroupResolver(settings.subgroups.attributes).keys()
        self.make = lambda: MonitorSuite(["classguard-baseline"], [out["profile"]], keys,  # noqa: E731
                                         confusion_pairs(config), window_config(config))

    def run(self, stream: Stream, watched: str) -> tuple[list[int], float]:
        from monitors.events import EventBatch
        from runtime.monitor_pipeline import DRAIN_SECONDS

        suite = self.make()
        index = {k: i for i, k in enumerate(suite.subgroups)}
        n = len(stream.keys)
        subgroup = np.array([index[k] for k in stream.keys])
        predicted, confidence = stream.probs.argmax(axis=1), stream.probs.max(axis=1)
        masks = np.array([suite.confusions.fired(0, s, p, c) for s, p, c in zip(subgroup, stream.probs, predicted)])
        t = np.arange(n) / self.rate
        alarms, step = [], max(1, round(self.rate * DRAIN_SECONDS))
        at = [m.name for m in suite.monitors].index(watched)
        began = time.perf_counter()
        for start in range(0, n, step):
            end = min(start + step, n)
            suite.update_many(EventBatch(t[start:end], np.zeros(end - start, np.int64), subgroup[start:end],
                                         predicted[start:end], confidence[start:end], masks[start:end]))
            # the check the service's pipeline runs after each drain (runtime/monitor_pipeline.py)
            if suite.decisions(float(t[end - 1]))[at].any():
                alarms.append(end)
                suite = self.make()  # restart after an alarm, as river's detectors do
        return alarms, 1e6 * (time.perf_counter() - began) / n


# --- protocol -------------------------------------------------------------------------------

def run_length(alarms: list[int], n: int) -> tuple[float, float, float]:
    """Events per false alarm on a stationary stream of n events, with a 95% interval
    (the alarm count as Poisson: Garwood's exact interval)."""
    from scipy.stats import chi2

    k = len(alarms)
    low = chi2.ppf(0.025, 2 * k) / 2 if k else 0.0
    high = chi2.ppf(0.975, 2 * k + 2) / 2
    return (n / k if k else math.inf), n / high, (n / low if low else math.inf)


def calibrate(count: Callable[[float], int], n: int, arl: float, low: float, high: float, log_scale: bool,
              more_alarms_when_higher: bool, steps: int = 10) -> float:
    """The knob whose false-alarm count on n stationary events is closest to n / arl, by bisection
    (on log10 of the knob when `log_scale`)."""
    want = n / arl
    lo, hi = (math.log10(low), math.log10(high)) if log_scale else (low, high)
    best, best_gap = None, math.inf
    for _ in range(steps):
        mid = (lo + hi) / 2
        knob = 10 ** mid if log_scale else mid
        got = count(knob)
        gap = abs(math.log((got + 0.5) / (want + 0.5)))
        # equally close: the more sensitive knob (a detector that never false-alarms in range gets
        # its most sensitive setting, its best delay)
        sensitive = best is None or (knob > best) == more_alarms_when_higher
        if gap < best_gap or (gap == best_gap and sensitive):
            best, best_gap = knob, gap
        too_many = got > want
        if too_many == more_alarms_when_higher:
            hi = mid
        else:
            lo = mid
    return best


# KSWIN runs a two-sample KS test at every event (about 300 us an event here): it is calibrated
# and checked on 1/8 of the stationary events, and its run length's interval says so
SLOW = {"KSWIN": 8}

KNOBS = {  # detector: (low, high, log scale, more alarms when the knob is higher)
    "classguard": (1.0, 30.0, False, False),
    "ADWIN": (1e-12, 0.99, True, True),
    "PageHinkley": (0.5, 500.0, True, False),
    "KSWIN": (1e-9, 0.05, True, True),
}


def stationary_stream(out: dict, n: int, seed: int, fires, bursty: bool = False) -> Stream:
    """n stationary events at the training mix; `bursty`: phone requests come in runs of 50."""
    streams = make_streams(out, n, CHANGE_AT + 1, seed, fires)
    stream = streams["stationary"]
    if not bursty:
        return stream
    phone = np.array([k == "capture=phone" for k in stream.keys])
    rng = np.random.default_rng(seed + 99)
    is_phone = phone_in_runs(phone, rng)
    phone_rows, scanner_rows = np.flatnonzero(phone), np.flatnonzero(~phone)
    rows = np.where(is_phone, rng.choice(phone_rows, n), rng.choice(scanner_rows, n))
    return Stream([stream.keys[r] for r in rows], stream.probs[rows], None)


def phone_in_runs(phone: np.ndarray, rng: np.random.Generator, run: int = 50) -> np.ndarray:
    """A phone mask as long as `phone` with as many phone events (to a multiple of `run`), in
    runs of `run` at random places."""
    n = len(phone)
    starts = np.sort(rng.choice(n // run, size=int(phone.sum()) // run, replace=False)) * run
    is_phone = np.zeros(n, bool)
    for s in starts:
        is_phone[s:s + run] = True
    return is_phone


ALIBI_KIND = {"representation": "fet", "confidence": "cvm", "known_confusion": "fet"}
ALIBI_SHARE = 4  # Alibi's detectors cost 100-500 us an event here: checked on this fraction
ALIBI_REFERENCE = 2_000  # reference events per detector (CVM's bootstrap configuration grows with it)


def run_alibi(python: str, shifts: dict, reference: Stream, flagged, args) -> dict:
    """Each shift's streams handed to benchmarks/streaming_alibi.py in Alibi's own environment;
    its alarms back, as rows like the others'. Alibi calibrates itself to `ert` = the target."""
    arrays: dict[str, np.ndarray] = {"ert": np.array(args.arl), "bootstraps": np.array(int(2 * args.arl)),
                                     "shifts": np.array(list(shifts))}
    for i, (shift, (watched, check, bursty, changed)) in enumerate(shifts.items()):
        key = f"s{i}"
        seen = observe(reference, watched, flagged)
        groups = 2 if seen.per_subgroup else 1
        references = [seen.value[seen.subgroup == g][:ALIBI_REFERENCE] for g in range(groups)] if groups > 1 \
            else [seen.value[:ALIBI_REFERENCE]]
        if any(np.ptp(r) == 0 for r in references):  # FET cannot be configured on a constant reference:
            groups, references = 1, [seen.value[:ALIBI_REFERENCE]]  # one detector on the whole stream
        arrays[f"{key}/per_subgroup"] = np.array(groups > 1)
        arrays[f"{key}/kind"], arrays[f"{key}/groups"] = np.array(ALIBI_KIND[watched]), np.array(groups)
        for g, values in enumerate(references):
            arrays[f"{key}/reference/{g}"] = values
        for part, stream in (("check", check), ("bursty", bursty)):
            o = observe(head(stream, len(stream.keys) // ALIBI_SHARE), watched, flagged)
            arrays[f"{key}/{part}/value"], arrays[f"{key}/{part}/subgroup"] = o.value, o.subgroup * (groups > 1)
        arrays[f"{key}/repeats"] = np.array(len(changed))
        for r, stream in enumerate(changed):
            o = observe(stream, watched, flagged)
            arrays[f"{key}/changed/{r}/value"], arrays[f"{key}/changed/{r}/subgroup"] = o.value, o.subgroup * (groups > 1)
    ran = call_alibi(python, arrays)
    return {shift: dict([alibi_row(ran[shift], len(check.keys) // ALIBI_SHARE, len(bursty.keys) // ALIBI_SHARE,
                                   [s.change for s in changed], args)])
            for shift, (watched, check, bursty, changed) in shifts.items()}


def call_alibi(python: str, arrays: dict[str, np.ndarray]) -> dict:
    """`arrays` handed to benchmarks/streaming_alibi.py in Alibi's own environment; its alarms back."""
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory(prefix="classguard-alibi-") as tmp:
        np.savez(Path(tmp) / "streams.npz", **arrays)
        done = subprocess.run([python, "-m", "benchmarks.streaming_alibi", str(Path(tmp) / "streams.npz"),
                               str(Path(tmp) / "out.json")], stderr=None, timeout=7_200)
        if done.returncode != 0:
            raise RuntimeError(f"benchmarks.streaming_alibi failed with status {done.returncode}")
        return json.loads((Path(tmp) / "out.json").read_text())


def alibi_row(got: dict, n_check: int, n_bursty: int, changes: list[int], args) -> tuple[str, dict]:
    """One Alibi detector's name and row from its alarms: on `n_check` stationary events, on
    `n_bursty` bursty ones, and on change streams with these change points."""
    arl, arl_low, arl_high = run_length(got["check"], n_check)
    delays = [delay(alarms, change) for alarms, change in zip(got["changed"], changes)]
    row = summary(f"ert {args.arl:,.0f}", arl, arl_low, arl_high, got["bursty"], n_bursty, delays, got["us"],
                  args.bound)
    name = f"Alibi {got['detector']}" + ("" if got["per_subgroup"] else " (whole stream)")
    return name, {**row, "stationary_events": n_check, "change_streams": len(delays),
                  "configure_s": got["configure_s"], "per_subgroup": got["per_subgroup"]}


def delay(alarms: list[int], change: int) -> int | None:
    """Events from the change to the first alarm after it (None: no alarm after it)."""
    return next((a - change for a in alarms if a > change), None)


def head(stream: Stream, n: int) -> Stream:
    return Stream(stream.keys[:n], stream.probs[:n], stream.change)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arl", type=float, default=10_000, help="expected events between false alarms")
    parser.add_argument("--calibration-events", type=int, default=200_000)
    parser.add_argument("--check-events", type=int, default=400_000,
                        help="fresh stationary events measuring the achieved run length")
    parser.add_argument("--repeats", type=int, default=20, help="streams per shift")
    parser.add_argument("--warmup", type=int, default=5_000, help="stationary events before each shift")
    parser.add_argument("--after", type=int, default=5_000, help="events after each shift")
    parser.add_argument("--bound", type=int, default=2_000, help="detected within this many events")
    parser.add_argument("--detectors", default="classguard,ADWIN,PageHinkley,KSWIN")
    parser.add_argument("--streams", default=",".join(FAMILIES),
                        help="stream families: detection (benchmarks/detection.py's shifts), regions "
                             "(benchmarks/regions.py's, benchmarks/streaming_regions.py)")
    parser.add_argument("--alibi-python", help="the Python of an environment with alibi-detect 0.13 "
                                               "(make bench-streaming builds .venv-alibi)")
    parser.add_argument("--rate", type=float, default=RATE, help="events per second of synthetic time: classguard "
                        "checks after every 0.1 s drain, so at 100/s a check is 10 events")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        import river  # noqa: F401
    except ImportError:
        log("river is not installed: `make bench-streaming` installs it (.venv/bin/pip install river==0.26.1)")
        return 2

    families = args.streams.split(",")
    if not families or set(families) - set(FAMILIES):
        parser.error(f"--streams: a comma-separated subset of {', '.join(FAMILIES)}, got {args.streams!r}")
    names = args.detectors.split(",")
    results: dict = {"arl_target": args.arl, "bound": args.bound, "repeats": args.repeats, "rate": args.rate,
                     "streams": families, "shifts": {}}
    if "detection" in families:
        results["shifts"].update(detection_rows(names, args))
    if "regions" in families:
        from benchmarks.streaming_regions import region_rows

        rows, results["regions"] = region_rows(names, args)
        results["shifts"].update(rows)
    suffix = ("" if args.rate == RATE else f"_rate{args.rate:g}") + (
        "" if set(families) == set(FAMILIES) else "_" + "_".join(families))
    out_path = OUT.with_name(f"bench_streaming{suffix}.json")
    out_path.parent.mkdir(exist_ok=True)
    out_path.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print_table(results)
    return 0


def detection_rows(names: list[str], args) -> dict[str, dict]:
    """Per shift of benchmarks/detection.py, a row per detector (Alibi's with `--alibi-python`,
    the floors last)."""
    from core.config import load_settings

    settings = load_settings()
    log("running the baseline on the test split ...")
    out = model_outputs()
    probe = Classguard(out, settings, settings.monitors.cusum_threshold).make()
    pair_bit = 1 << [p.name for p in probe.confusions.pairs].index(PAIR)

    def flagged(probs: np.ndarray) -> np.ndarray:
        return np.array([bool(probe.confusions.fired(0, 0, p, int(p.argmax())) & pair_bit) for p in probs])

    fires = lambda p: bool(probe.confusions.fired(0, 0, p, int(p.argmax())) & pair_bit)  # noqa: E731

    def runner(name: str, knob: float) -> Callable[[Stream, str], tuple[list[int], float]]:
        if name == "classguard":
            return Classguard(out, settings, knob, args.rate).run
        return lambda stream, watched: run_river(observed(stream, watched),
                                                 river_factory(name, knob, falls=watched == "confidence"))

    seen: dict[tuple[int, str], tuple[Stream, Observed]] = {}

    def observed(stream: Stream, watched: str) -> Observed:
        """`observe`, once per stream: the flag is a Python loop over every event, and a
        calibration replays the same stream ten times (the stream is kept with it, so its id
        is never reused by another)."""
        key = (id(stream), watched)
        if key not in seen:
            seen[key] = (stream, observe(stream, watched, flagged))
        return seen[key][1]

    calibration = stationary_stream(out, args.calibration_events, args.seed + 1, fires)
    check = stationary_stream(out, args.check_events, args.seed + 2, fires)
    bursty = stationary_stream(out, args.check_events, args.seed + 3, fires, bursty=True)
    shifts: dict[str, dict] = {}
    handed: dict = {}
    for shift, watched in SHIFTS.items():
        log(f"shift: {shift} (watched: {watched})")
        changed = []
        for r in range(args.repeats):  # the warm-up's last events, then the shift
            full = make_streams(out, 1, CHANGE_AT + args.after, args.seed + 100 + r, fires)[shift]
            cut = CHANGE_AT - args.warmup
            changed.append(Stream(full.keys[cut:], full.probs[cut:], args.warmup))
        shifts[shift] = {}
        for name in names:
            part = SLOW.get(name, 1)
            calibrating, checking, bursting = (head(s, len(s.keys) // part) for s in (calibration, check, bursty))
            shifts[shift][name] = measure(name, lambda knob: functools.partial(runner(name, knob), watched=watched),
                                          calibrating, checking, bursting, {shift: changed},
                                          lambda s: len(s.keys), args)[shift]
        handed[shift] = (watched, check, bursty, changed)
    if args.alibi_python:
        log("Alibi Detect, in its own environment ...")
        reference = stationary_stream(out, 200_000, args.seed + 4, fires)
        for shift, rows in run_alibi(args.alibi_python, handed, reference, flagged, args).items():
            shifts[shift].update(rows)
    return {shift: {**rows, **floors(args)} for shift, rows in shifts.items()}


def measure(name: str, run_at: Callable[[float], Callable], calibrating, checking, bursting,
            changed: dict[str, list], size: Callable[[object], int], args) -> dict[str, dict]:
    """One detector's rows, one per entry of `changed` (streams with their `change`): its knob
    bisected once on `calibrating`, its run length on `checking` and its false alarms on
    `bursting` shared by all, its delays per entry. `run_at(knob)(stream)` gives alarms and
    microseconds per event; `size(stream)` its events. Progress: a line per entry."""
    low, high, log_scale, more_when_higher = KNOBS[name]
    began = time.perf_counter()
    knob = calibrate(lambda k: len(run_at(k)(calibrating)[0]), size(calibrating), args.arl, low, high, log_scale,
                     more_when_higher)
    calibrated = time.perf_counter()
    run = run_at(knob)
    alarms, _ = run(checking)
    arl, arl_low, arl_high = run_length(alarms, size(checking))
    burst_alarms, _ = run(bursting)
    seconds = {"calibration": round(calibrated - began, 1), "stationary": round(time.perf_counter() - calibrated, 1)}
    log(f"  {name}: knob {knob:.3g}, run length {arl:,.0f} ({seconds['calibration']:.0f} s calibrating, "
        f"{seconds['stationary']:.0f} s on {size(checking) + size(bursting):,} stationary events)")
    rows = {}
    for shift, streams in changed.items():
        began = time.perf_counter()
        delays, costs = [], []
        for stream in streams:
            got, us = run(stream)
            costs.append(us)
            delays.append(delay(got, stream.change))
        rows[shift] = summary(knob, arl, arl_low, arl_high, burst_alarms, size(bursting), delays, costs, args.bound)
        rows[shift].update(stationary_events=size(checking), change_streams=len(streams),
                           seconds={**seconds, "changes": round(time.perf_counter() - began, 1)})
        log(f"  {name}: {shift}: delay median {rows[shift]['delay_median']}, p90 {rows[shift]['delay_p90']}, "
            f"{rows[shift]['detected_share']:.0%} within {args.bound} ({rows[shift]['seconds']['changes']:.0f} s)")
    return rows


def floors(args) -> dict[str, dict]:
    """The two floors: a detector that never fires, and one that fires every ARL events."""
    return {"never fires": {"knob": None, "arl": math.inf, "delay_median": None, "delay_p90": None,
                            "detected_share": 0.0, "us_per_event": 0.0, "bursty_false_alarms_per_100k": 0.0},
            f"fires every {args.arl:,.0f}": {
                "knob": args.arl, "arl": args.arl, "delay_median": round(args.arl / 2),
                "delay_p90": round(0.9 * args.arl), "detected_share": round(min(1.0, args.bound / args.arl), 3),
                "us_per_event": 0.0, "bursty_false_alarms_per_100k": round(100_000 / args.arl, 1)}}


def summary(knob, arl, arl_low, arl_high, burst_alarms, n, delays, costs, bound) -> dict:
    found = [d for d in delays if d is not None]
    return {
        "knob": knob, "arl": arl, "arl_95": [arl_low, arl_high],
        "delay_median": int(np.median(found)) if found else None,
        "delay_p90": int(np.percentile(found, 90)) if found else None,
        "detected_share": round(sum(1 for d in delays if d is not None and d <= bound) / len(delays), 3),
        "us_per_event": round(float(np.median(costs)), 2),
        "bursty_false_alarms_per_100k": round(len(burst_alarms) * 100_000 / n, 1),
    }


def print_table(results: dict) -> None:
    bound = results["bound"]
    print(f"every detector calibrated to one false alarm per {results['arl_target']:,.0f} stationary events; "
          f"{results['repeats']} streams per shift; {results['rate']:g} events/s (classguard checks after every 0.1 s drain)")
    print(f"{'shift':<34} {'detector':<22} {'knob':>10} {'run length (95%)':>26} {'delay med':>9} {'p90':>7} "
          f"{f'<= {bound}':>8} {'us/event':>9} {'bursty FA/100k':>15}")
    for shift, rows in results["shifts"].items():
        for name, r in rows.items():
            arl = r["arl"]
            span = r.get("arl_95")
            shown = "never" if arl == math.inf else f"{arl:,.0f}" + (
                f" ({span[0]:,.0f}-{span[1]:,.0f})" if span and span[1] != math.inf else "")
            knob = "-" if r["knob"] is None else r["knob"] if isinstance(r["knob"], str) else f"{r['knob']:.3g}"
            print(f"{shift[:34]:<34} {name:<22} {knob:>10} {shown:>26} {str(r['delay_median']):>9} "
                  f"{str(r['delay_p90']):>7} {r['detected_share']:>8.0%} {r['us_per_event']:>9} "
                  f"{r['bursty_false_alarms_per_100k']:>15}")


if __name__ == "__main__":
    raise SystemExit(main())
