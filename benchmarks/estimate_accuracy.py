"""Label-free accuracy estimates against realized accuracy, per model and subgroup.

    python -m benchmarks.estimate_accuracy      (make bench-estimate)

The estimate is what the service publishes as `estimated_accuracy`: the mean calibrated
confidence (temperature from the model's validation profile), computed here by the same
monitor class on the models' real outputs for the test split (never used for calibration):
the whole split per capture, and the demo's stream (1,000 images, 30% phone, seed 7).
Results: a table on stdout and artifacts/bench_estimate.json (or --out).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

MODELS = ("classguard-baseline", "classguard-retrained")


def main(argv: list[str] | None = None) -> int:
    import torch

    from harness.traffic import stream
    from monitors.confidence import ConfidenceDrift
    from monitors.events import WindowConfig
    from monitors.reference import ReferenceProfile, softmax
    from runtime.models import find_stored
    from training.digits import build_incident
    from store.model_store import PROFILE_KEY, WEIGHTS_FILE

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("artifacts/bench_estimate.json"))
    args = parser.parse_args(argv)

    test = build_incident().test
    keys = ["capture=scanner", "capture=phone"]
    # the demo's stream: the same seeded draw as `make demo`, as indices into the test split
    samples = _holdout(test)
    position = {id(s): i for i, s in enumerate(samples)}
    demo = np.array([position[id(s)] for s in stream(samples, 1000, 0.3, seed=7)])
    rows = []
    for name in MODELS:
        stored = find_stored(f"{name}:latest")
        profile = ReferenceProfile.from_dict(stored.info.metadata[PROFILE_KEY])
        module = torch.jit.load(stored.path_of(WEIGHTS_FILE)).eval()
        with torch.inference_mode():
            probs = softmax(module(torch.from_numpy(test.images.astype(np.float32) / 255.0)[:, None]).double().numpy())
        monitor = ConfidenceDrift([name], [profile], keys, WindowConfig(n_buckets=10**6))
        calibrated = monitor.calibrated_many(0, probs)
        correct = probs.argmax(axis=1) == test.labels
        for label, chosen in (("test split", np.arange(len(probs))), ("demo stream", demo)):
            for key in keys:
                pick = chosen[np.array([f"capture={test.captures[i]}" == key for i in chosen])]
                rows.append({"model": name, "data": label, "subgroup": key, "n": int(len(pick)),
                             "estimated": round(float(calibrated[pick].mean()), 4),
                             "uncalibrated": round(float(probs[pick].max(axis=1).mean()), 4),
                             "realized": round(float(correct[pick].mean()), 4)})
    for r in rows:
        r["error"] = round(r["estimated"] - r["realized"], 4)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=2) + "\n")
    print(f"{'model':<22} {'data':<12} {'subgroup':<16} {'n':>5} {'estimated':>10} {'realized':>9} {'error':>7} "
          f"{'uncalibrated':>13}")
    for r in rows:
        print(f"{r['model']:<22} {r['data']:<12} {r['subgroup']:<16} {r['n']:>5} {r['estimated']:>10.3f} "
              f"{r['realized']:>9.3f} {r['error']:>+7.3f} {r['uncalibrated']:>13.3f}")
    return 0


def _holdout(test):
    """The same Sample objects as harness.traffic.holdout_samples, from an already built split."""
    from harness.traffic import Sample
    from runtime.preprocess import encode_png

    return [Sample(encode_png(img), int(y), str(c)) for img, y, c in zip(test.images, test.labels, test.captures)]


if __name__ == "__main__":
    raise SystemExit(main())
