"""Detection quality of the monitors vs Evidently's windowed drift tests, on the same streams.

    python -m benchmarks.detection            (make bench-detection)

Events are the baseline model's real outputs on the test split (never used for training or
calibration), replayed at 100 events/s of synthetic time:

- stationary: the subgroup mix of the model's training data (phone 2.97%), 100,000 events;
- phone share: from the training share to 30% at event 20,000;
- confidence collapse: from event 20,000, scanner images arrive with sensor noise
  (Gaussian, sigma 0.3), re-classified by the model;
- known confusion: from event 20,000, 5% of scanner traffic are images on which the
  `6->0` detector fires.

Monitors are checked after every 1 s bucket; Evidently runs one report per tumbling window
of W events, windows aligned so that one starts exactly at the change (its best case).
Delay: events from the change to the first alarm. False alarms: alarm onsets per 100,000
stationary events. Results: a table on stdout and artifacts/bench_detection.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

RATE = 100.0  # events per second of synthetic time
CHANGE_AT = 20_000
OUT = Path("artifacts/bench_detection.json")
PAIR = "6->0"
EVIDENTLY_THRESHOLD = 0.1


def model_outputs() -> dict:
    """Probabilities of the baseline on test images: both captures, and noisy scanner images."""
    import torch

    from monitors.reference import ReferenceProfile, softmax
    from runtime.models import find_stored
    from store.model_store import PROFILE_KEY, WEIGHTS_FILE
    from training.digits import build_incident

    stored = find_stored("classguard-baseline:latest")
    module = torch.jit.load(stored.path_of(WEIGHTS_FILE)).eval()
    test = build_incident().test
    x = test.images.astype(np.float32) / 255.0
    noisy = np.clip(x + np.random.default_rng(0).normal(0, 0.3, x.shape), 0, 1).astype(np.float32)
    with torch.inference_mode():
        logits = lambda a: module(torch.from_numpy(a)[:, None]).double().numpy()  # noqa: E731
        probs, noisy_probs = softmax(logits(x)), softmax(logits(noisy))
    scanner = test.captures == "scanner"
    return {"profile": ReferenceProfile.from_dict(stored.info.metadata[PROFILE_KEY]),
            "reference": stored.info.metadata, "store_path": stored.path,
            "probs": probs, "captures": test.captures, "noisy_scanner": noisy_probs[scanner]}


class Stream:
    """Events as (subgroup key, probability vector), with the index of the change (or None)."""

    def __init__(self, keys: list[str], probs: np.ndarray, change: int | None) -> None:
        self.keys, self.probs, self.change = keys, probs, change


def make_streams(out: dict, n_stationary: int, n_change: int, seed: int, fires) -> dict[str, Stream]:
    rng = np.random.default_rng(seed)
    probs, captures = out["probs"], out["captures"]
    phone_rows, scanner_rows = np.flatnonzero(captures == "phone"), np.flatnonzero(captures == "scanner")
    phone_share = out["profile"].training_subgroup_shares["capture=phone"]

    def draw(n, share):
        is_phone = rng.random(n) < share
        rows = np.where(is_phone, rng.choice(phone_rows, n), rng.choice(scanner_rows, n))
        return [f"capture={'phone' if p else 'scanner'}" for p in is_phone], probs[rows]

    def joined(after_keys, after_probs):
        keys, p = draw(CHANGE_AT, phone_share)
        return Stream(keys + after_keys, np.concatenate([p, after_probs]), CHANGE_AT)

    n_after = n_change - CHANGE_AT
    streams = {"stationary": Stream(*draw(n_stationary, phone_share), None)}
    streams["phone share 3% -> 30%"] = joined(*draw(n_after, 0.30))
    keys, p = draw(n_after, phone_share)
    noisy = out["noisy_scanner"]
    p = np.array([noisy[rng.integers(len(noisy))] if k == "capture=scanner" else row for k, row in zip(keys, p)])
    streams["confidence collapse (scanner)"] = joined(keys, p)
    keys, p = draw(n_after, phone_share)
    firing = probs[[i for i in range(len(probs)) if fires(probs[i])]]
    swap = np.array([k == "capture=scanner" for k in keys]) & (rng.random(n_after) < 0.05)
    p[swap] = firing[rng.integers(len(firing), size=int(swap.sum()))]
    streams[f"known confusion {PAIR} (scanner, 5%)"] = joined(keys, p)
    return streams


MONITOR_OF = {"representation": "representation", "class_drift": "class drift", "confidence": "confidence",
              "known_confusion": "known confusion"}


def run_monitors(stream: Stream, make_suite) -> dict[str, dict]:
    """Feed 1 s buckets; record each monitor's alarm onsets (event index)."""
    from monitors.events import EventBatch

    suite = make_suite()
    index = {k: i for i, k in enumerate(suite.subgroups)}
    n = len(stream.keys)
    subgroup = np.array([index[k] for k in stream.keys])
    predicted = stream.probs.argmax(axis=1)
    confidence = stream.probs.max(axis=1)
    masks = np.array([suite.confusions.fired(0, s, p, c) for s, p, c in zip(subgroup, stream.probs, predicted)])
    t = np.arange(n) / RATE
    onsets: dict[str, list[int]] = {name: [] for name in MONITOR_OF}
    first_on_after_change: dict[str, int | None] = {name: None for name in MONITOR_OF}
    active: set[tuple] = set()  # alarms on now, each (monitor, statistic, subgroup, pair)
    step = int(RATE)
    compute = []
    for start in range(0, n, step):
        end = min(start + step, n)
        suite.update_many(EventBatch(t[start:end], np.zeros(end - start, np.int64), subgroup[start:end],
                                     predicted[start:end], confidence[start:end], masks[start:end]))
        began = time.perf_counter()
        scores = suite.results(float(t[end - 1])).scores
        compute.append(time.perf_counter() - began)
        now_on = {(s.monitor, s.statistic, s.subgroup, s.pair) for s in scores if s.alarm}
        for key in now_on - active:
            onsets[key[0]].append(end)
        if stream.change is not None and end > stream.change:
            for monitor in {key[0] for key in now_on}:
                if first_on_after_change[monitor] is None:
                    first_on_after_change[monitor] = end
        active = now_on
    return {"onsets": onsets, "first_on": first_on_after_change,
            "median_recompute_ms": 1000 * float(np.median(compute))}


def run_evidently(stream: Stream, reference_rows: dict, window: int) -> tuple[list[int], dict[str, np.ndarray]]:
    """Tumbling windows of `window` events: each window's end and each test's drift value."""
    import pandas as pd
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import ValueDrift

    definition = DataDefinition(categorical_columns=["subgroup", "scanner_class"], numerical_columns=["scanner_confidence"])

    def frame(keys, predicted, confidence):
        scanner = np.array([k == "capture=scanner" for k in keys])
        return pd.DataFrame({"subgroup": keys,
                             "scanner_class": np.where(scanner, predicted.astype(str), None),
                             "scanner_confidence": np.where(scanner, confidence, np.nan)})

    ref = Dataset.from_pandas(frame(reference_rows["keys"], reference_rows["predicted"], reference_rows["confidence"]),
                              data_definition=definition)
    # Evidently's default threshold for these distance methods, written out
    tests = {"representation": ValueDrift(column="subgroup", method="jensenshannon", threshold=EVIDENTLY_THRESHOLD),
             "class drift": ValueDrift(column="scanner_class", method="jensenshannon", threshold=EVIDENTLY_THRESHOLD),
             "confidence": ValueDrift(column="scanner_confidence", method="wasserstein", threshold=EVIDENTLY_THRESHOLD)}
    report = Report(list(tests.values()))
    predicted, confidence = stream.probs.argmax(axis=1), stream.probs.max(axis=1)
    ends, values = [], {name: [] for name in tests}
    for start in range(0, len(stream.keys) - window + 1, window):
        cur = Dataset.from_pandas(frame(stream.keys[start:start + window], predicted[start:start + window],
                                        confidence[start:start + window]), data_definition=definition)
        for name, m in zip(tests, report.run(current_data=cur, reference_data=ref).dict()["metrics"]):
            values[name].append(np.nan if m["value"] is None else float(m["value"]))
        ends.append(start + window)
    return ends, {k: np.array(v) for k, v in values.items()}


def alarms(ends: list[int], values: np.ndarray, threshold: float, change: int | None, n: int) -> dict:
    """Evidently's windows judged like the monitors: onsets are pages, delay is the first
    window after the change whose test is on."""
    on = values >= threshold
    onsets = [e for e, now, before in zip(ends, on, np.r_[False, on[:-1]]) if now and not before]
    if change is None:
        return {"false_alarms_per_100k": round(len(onsets) * 100_000 / n, 1)}
    after = [e for e, now in zip(ends, on) if now and e > change]
    return {"delay_events": after[0] - change if after else None,
            "false_alarms_before_change": sum(1 for e in onsets if e <= change)}


def summarise(onsets: list[int], first_on: int | None, change: int | None, n: int) -> dict:
    if change is None:
        return {"false_alarms_per_100k": round(len(onsets) * 100_000 / n, 1)}
    return {"delay_events": first_on - change if first_on is not None else None,
            "false_alarms_before_change": sum(1 for o in onsets if o <= change)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stationary-events", type=int, default=100_000)
    parser.add_argument("--change-events", type=int, default=40_000)
    parser.add_argument("--windows", type=lambda s: [int(w) for w in s.split(",")], default=[500, 1000, 2000])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    from core.config import load_settings
    from monitors.suite import MonitorSuite
    from runtime.monitor_pipeline import confusion_pairs, window_config
    from runtime.subgroups import SubgroupResolver

    settings = load_settings()
    window, pairs = window_config(settings.monitors), confusion_pairs(settings.monitors)
    print("running the baseline on the test split ...", file=sys.stderr)
    out = model_outputs()
    keys = SubgroupResolver(settings.subgroups.attributes).keys()
    make_suite = lambda: MonitorSuite(["classguard-baseline"], [out["profile"]], keys, pairs, window)  # noqa: E731
    probe = make_suite()
    pair_bit = 1 << [p.name for p in pairs].index(PAIR)
    fires = lambda p: bool(probe.confusions.fired(0, 0, p, int(p.argmax())) & pair_bit)  # noqa: E731
    streams = make_streams(out, args.stationary_events, args.change_events, args.seed, fires)

    # Evidently's reference: validation predictions, resampled to the training mix
    with np.load(Path(out["store_path"]) / "reference.npz") as ref:
        rng = np.random.default_rng(args.seed + 1)
        share = out["profile"].training_subgroup_shares["capture=phone"]
        phone, scanner = np.flatnonzero(ref["subgroup"] == "capture=phone"), np.flatnonzero(ref["subgroup"] == "capture=scanner")
        rows = np.where(rng.random(5000) < share, rng.choice(phone, 5000), rng.choice(scanner, 5000))
        reference_rows = {"keys": ref["subgroup"][rows].tolist(), "predicted": ref["predicted"][rows],
                          "confidence": ref["confidence"][rows]}

    results: dict = {"rate_events_per_s": RATE, "change_at": CHANGE_AT, "evidently_default_threshold":
                     EVIDENTLY_THRESHOLD, "monitors": {}, "evidently": {}, "evidently_calibrated": {}}
    evidently_values: dict = {}
    for name, stream in streams.items():
        print(f"stream: {name} ({len(stream.keys)} events)", file=sys.stderr)
        ours = run_monitors(stream, make_suite)
        results["monitors"][name] = {MONITOR_OF[k]: summarise(v, ours["first_on"][k], stream.change, len(stream.keys))
                                     for k, v in ours["onsets"].items()}
        results["monitors"][name]["median_recompute_ms"] = round(ours["median_recompute_ms"], 3)
        for w in args.windows:
            evidently_values[(name, w)] = run_evidently(stream, reference_rows, w)
    # Evidently twice: at its default threshold, and at the lowest threshold that gives no
    # false alarm on the stationary stream (its best case at classguard's false-alarm rate)
    for w in args.windows:
        ends, stationary = evidently_values[("stationary", w)]
        calibrated = {k: float(np.nanmax(v)) * 1.0001 for k, v in stationary.items()}
        for name, stream in streams.items():
            ends, values = evidently_values[(name, w)]
            n = len(stream.keys)
            results["evidently"].setdefault(str(w), {})[name] = {
                k: alarms(ends, v, EVIDENTLY_THRESHOLD, stream.change, n) for k, v in values.items()}
            results["evidently_calibrated"].setdefault(str(w), {})[name] = {
                k: {**alarms(ends, v, calibrated[k], stream.change, n), "threshold": round(calibrated[k], 4)}
                for k, v in values.items()}
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps(results, indent=2) + "\n")
    print_table(results)
    return 0


RELEVANT = {"phone share 3% -> 30%": ("representation", "representation"),
            "confidence collapse (scanner)": ("confidence", "confidence"),
            f"known confusion {PAIR} (scanner, 5%)": ("known confusion", "class drift")}


def print_table(results: dict) -> None:
    stationary = results["monitors"]["stationary"]
    print(f"{'change':<36} {'detector':<44} {'delay (events)':>15} {'false alarms/100k':>18}")
    for stream, (ours, theirs) in RELEVANT.items():
        delay = results["monitors"][stream][ours]["delay_events"]
        print(f"{stream:<36} {'classguard ' + ours:<44} {str(delay):>15} {stationary[ours]['false_alarms_per_100k']:>18}")
        for label, key in (("", "evidently"), (" calibrated", "evidently_calibrated")):
            for w, by_stream in results[key].items():
                d = by_stream[stream][theirs]["delay_events"]
                fa = by_stream["stationary"][theirs]["false_alarms_per_100k"]
                print(f"{'':<36} {f'Evidently {theirs}, W={w}{label}':<44} {str(d):>15} {fa:>18}")
    other = {k: v["false_alarms_per_100k"] for k, v in stationary.items() if isinstance(v, dict)}
    print(f"\nclassguard false alarms per 100k stationary events, every monitor: {other}")


if __name__ == "__main__":
    raise SystemExit(main())
