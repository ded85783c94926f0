"""Cost of the monitor pipeline alone, on one core.

    python -m benchmarks.monitor_cost

- update: events/s through MonitorSuite.update_many (batches of 1,000, as the pipeline drains);
- per prediction on the request path: flags + queue append (MonitorPipeline.observe);
- recompute: every score of a full 5-minute window, for 20 subgroups x 10 classes x 2 models
  with 3 known-confusion pairs (and for the demo's 3 subgroups);
- decisions: the same window's decision rules alone (what the pipeline runs after every
  drain, 10 times a second).
Each figure twice, side by side in one run: region monitors off and on (K=32 regions of a
64-wide embedding, `monitors.regions`), with their ratio.
Results: stdout and artifacts/bench_monitor_cost.json.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

OUT = Path("artifacts/bench_monitor_cost.json")


def setup(n_subgroups: int, n_classes: int = 10, n_models: int = 2, regions: bool = False):
    from monitors.confusion import ConfusionPair
    from monitors.events import EventBatch, WindowConfig
    from monitors.reference import InputSpec, build_profile
    from monitors.suite import MonitorSuite

    rng = np.random.default_rng(0)
    keys = [f"group=g{i}" for i in range(n_subgroups)]
    labels = rng.integers(0, n_classes, 5000)
    logits = rng.normal(0, 1, (5000, n_classes))
    logits[np.arange(5000), labels] += 3
    groups = np.array(keys)[rng.integers(0, n_subgroups, 5000)]
    embeddings = rng.normal(0, 1, (5000, 64)).astype(np.float32) if regions else None
    profile = build_profile(logits=logits, labels=labels, subgroups=groups, class_names=[str(i) for i in range(n_classes)],
                            input_spec=InputSpec(), training_subgroup_shares={k: 1 / n_subgroups for k in keys},
                            embeddings=embeddings, regions=32)
    pairs = [ConfusionPair("6", "0", 0.3), ConfusionPair("2", "7", 0.3), ConfusionPair("6", "4", 0.3)]
    window = WindowConfig(bucket_s=1.0, n_buckets=300)
    suite = MonitorSuite([f"m{i}" for i in range(n_models)], [profile] * n_models, keys, pairs, window, regions=regions)

    def events(n: int, t0: float) -> EventBatch:
        # the primary's answers carry a region (33: 32 prototypes and novel), the other model's -1
        model = rng.integers(0, n_models, n)
        return EventBatch(t=t0 + np.arange(n) * (300.0 / n), model=model,
                          subgroup=rng.integers(0, n_subgroups, n), predicted=rng.integers(0, n_classes, n),
                          confidence=rng.uniform(0.1, 1, n), confusions=rng.integers(0, 8, n),
                          region=np.where(model == 0, rng.integers(0, 33, n), -1) if regions else None)

    return suite, events, profile, keys


def timeit(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        for _ in range(repeat):
            fn()
        best = min(best, (time.perf_counter() - started) / repeat)
    return best


def measure(regions: bool) -> dict[str, float]:
    results = {}
    suite, events, profile, keys = setup(20, regions=regions)
    batch = events(1000, 1_000_000.0)
    per_batch = timeit(lambda: suite.update_many(batch), 50)
    results["update_events_per_s"] = round(1000 / per_batch)
    suite.reset()
    suite.update_many(events(300_000, 1_000_000.0))  # every bucket of the window filled
    now = 1_000_000.0 + 299.0
    results["recompute_ms_20_subgroups_10_classes_2_models"] = round(1000 * timeit(lambda: suite.results(now), 50), 3)
    results["decisions_ms_20_subgroups_10_classes_2_models"] = round(1000 * timeit(lambda: suite.decisions(now), 50), 3)
    small, small_events, _, _ = setup(3, regions=regions)
    small.update_many(small_events(30_000, 1_000_000.0))
    results["recompute_ms_3_subgroups"] = round(1000 * timeit(lambda: small.results(now), 100), 3)

    from core.config import MonitorsConfig
    from runtime.monitor_pipeline import MonitorPipeline

    with tempfile.TemporaryDirectory() as tmp:
        config = MonitorsConfig(state_dir=Path(tmp), queue_size=10**7, regions=regions,
                                known_confusions=[{"source": "6", "target": "0"}, {"source": "2", "target": "7"},
                                                  {"source": "6", "target": "4"}])
        pipeline = MonitorPipeline(config, ["m0", "m1"], [profile, profile], keys)
        probs = np.random.default_rng(1).dirichlet(np.ones(10), 1000)
        predicted = probs.argmax(axis=1)
        placed = np.random.default_rng(2).integers(0, 33, 1000) if regions else np.full(1000, -1)

        def observe_all():
            for p, c, r in zip(probs, predicted, placed):
                pipeline.observe("m0", "group=g3", p, int(c), int(r))

        results["observe_us_per_prediction"] = round(1e6 * timeit(observe_all, 5) / 1000, 2)
        pipeline._queue.clear()
        pipeline.observe("m0", "group=g3", probs[0], int(predicted[0]), int(placed[0]))
        pipeline.publish(now)  # the first publish creates the state file
        results["publish_ms_with_state_file"] = round(1000 * timeit(lambda: pipeline.publish(now), 20), 3)
    return results


def main() -> int:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    rounds = {False: [], True: []}
    for r in range(3):  # alternate, so drift in the machine's speed hits both alike
        for regions in ((False, True) if r % 2 == 0 else (True, False)):
            rounds[regions].append(measure(regions))
            print(f"round {r + 1}, regions {'on' if regions else 'off'}: {rounds[regions][-1]}", flush=True)
    off, on = ({k: float(np.median([m[k] for m in rounds[flag]])) for k in rounds[flag][0]} for flag in (False, True))
    results = {**off, **{f"regions_on_{k}": v for k, v in on.items()},
               **{f"ratio_on_over_off_{k}": round(on[k] / off[k], 3) for k in off}}
    print(f"\n{'medians of 3 alternating rounds':<48} {'regions off':>12} {'on':>12} {'on/off':>7}")
    for k in off:
        print(f"{k:<48} {off[k]:>12,.2f} {on[k]:>12,.2f} {on[k] / off[k]:>7.3f}")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
