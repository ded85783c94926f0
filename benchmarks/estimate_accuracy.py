"""Label-free accuracy estimators side by side, against realized accuracy, on stationary and
shifted traffic, per model and subgroup.

    python -m benchmarks.estimate_accuracy      (make bench-estimate)

Estimators (monitors/estimates.py): `published`, what `estimated_accuracy` publishes (ATC with
the thresholds stored in the model's profile, `PublishedEstimate`); and, each fitted here on the
validation split of its subgroup (the whole split for the whole mix): the mean calibrated
confidence (the estimate published before ATC), difference of confidences (DoC), average
thresholded confidence (ATC), and validation
accuracy per region of the embedding weighted by the live region shares (regions: the
model's stored codebook, novel included), and the share of answers the other incident model,
run as a shadow would run it, agrees with (agreement).

Streams of 1,000 test-split images each, 10 seeds: stationary (30% phone, the demo's mix);
phone at 10%, 30% and 60% of traffic; and the four unannounced shifts of training/shifts.py
(blurry sensor, rotated, thick pen, small off-centre) on 10%, 30% and 60% of the scanner
images (30% phone; the service still derives `capture=scanner` for them). Per subgroup and
for the whole window: the error (estimate - realized) as its mean over seeds and the largest
over seeds. The models never saw the test split; temperatures and thresholds come from
validation only. Results: tables on stdout and artifacts/bench_estimate.json (or --out).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

MODELS = ("classguard-baseline", "classguard-retrained")
ESTIMATORS = ("published", "confidence", "doc", "atc", "regions", "agreement")
MIXES = (0.1, 0.3, 0.6)
WINDOW = 1000
SEEDS = 10
SUBGROUPS = ("capture=scanner", "capture=phone", "all")


class Pool:
    """Images of one kind with what every estimator reads: calibrated confidence, region, and
    whether the model's answer is right."""

    def __init__(self, confidence: np.ndarray, region: np.ndarray, correct: np.ndarray, agree: np.ndarray) -> None:
        self.confidence, self.region, self.correct, self.agree = confidence, region, correct, agree


def model_pools(name: str, incident, seed: int):
    """(validation pools by capture, test pools by kind, test shifted pools by (shift, seed))."""
    import torch

    from monitors.reference import ReferenceProfile, softmax
    from runtime.models import find_stored
    from store.model_store import PROFILE_KEY, WEIGHTS_FILE
    from training.shifts import SHIFTS

    stored = find_stored(f"{name}:latest")
    profile = ReferenceProfile.from_dict(stored.info.metadata[PROFILE_KEY])
    module = torch.jit.load(stored.path_of(WEIGHTS_FILE)).eval()
    codebook = profile.codebook()
    # the other incident model, as a shadow would run it beside this one
    other = torch.jit.load(find_stored(f"{next(m for m in MODELS if m != name)}:latest").path_of(WEIGHTS_FILE)).eval()

    def pool(images: np.ndarray, labels: np.ndarray) -> Pool:
        x = torch.from_numpy(images.astype(np.float32) / 255.0)[:, None]
        with torch.inference_mode():
            probs = softmax(module(x).double().numpy())
            region = (codebook.assign(module.embed(x).numpy()) if codebook is not None and hasattr(module, "embed")
                      else np.zeros(len(images), dtype=np.int64))
            theirs = other(x).numpy().argmax(axis=1)
        q = np.power(probs, 1.0 / profile.temperature)
        return Pool(q.max(axis=1) / q.sum(axis=1), region, probs.argmax(axis=1) == labels, probs.argmax(axis=1) == theirs)

    val, test = incident.validation, incident.test
    validation = {c: pool(val.images[val.captures == c], val.labels[val.captures == c]) for c in ("scanner", "phone")}
    validation["all"] = pool(val.images, val.labels)
    scanner = test.captures == "scanner"
    tests = {"scanner": pool(test.images[scanner], test.labels[scanner]),
             "phone": pool(test.images[~scanner], test.labels[~scanner])}
    shifted = {}
    for shift, fn in SHIFTS.items():
        images = fn(test.images[scanner], np.random.default_rng(seed))
        shifted[shift] = pool(images, test.labels[scanner])
    regions = codebook.k + 1 if codebook is not None else 1
    return validation, tests, shifted, regions, profile


def fitted(validation: dict, regions: int) -> dict:
    from monitors.estimates import DifferenceOfConfidences, RegionWeighted, ThresholdedConfidence

    out = {}
    for key, v in validation.items():
        out[key] = {"doc": DifferenceOfConfidences.fit(v.confidence, v.correct),
                    "atc": ThresholdedConfidence.fit(v.confidence, v.correct),
                    "regions": RegionWeighted.fit(v.region, v.correct, regions)}
    return out


def estimate(fits: dict, confidence: np.ndarray, region: np.ndarray, agree: np.ndarray) -> dict[str, float]:
    from monitors.estimates import average_confidence, credit

    return {"published": float(credit(confidence, fits["threshold"]).mean()), "confidence": average_confidence(confidence), "doc": fits["doc"].estimate(confidence),
            "atc": fits["atc"].estimate(confidence), "regions": fits["regions"].estimate(region, confidence),
            "agreement": float(np.mean(agree))}


def window(tests: dict, shifted_pool: Pool | None, phone_share: float, shifted_share: float,
           rng: np.random.Generator) -> dict[str, tuple]:
    """One window of WINDOW answers: per subgroup (confidence, region, correct, agree)."""
    is_phone = rng.random(WINDOW) < phone_share
    parts = {"capture=phone": [], "capture=scanner": []}
    for phone in is_phone:
        if phone:
            src = tests["phone"]
            key = "capture=phone"
        else:
            src = shifted_pool if shifted_pool is not None and rng.random() < shifted_share else tests["scanner"]
            key = "capture=scanner"
        parts[key].append((src, int(rng.integers(len(src.correct)))))
    out = {}
    for key, picks in parts.items():
        out[key] = tuple(np.array([getattr(src, f)[i] for src, i in picks])
                         for f in ("confidence", "region", "correct", "agree"))
    out["all"] = tuple(np.concatenate([out[k][j] for k in ("capture=scanner", "capture=phone")]) for j in range(4))
    return out


def streams() -> list[tuple[str, float]]:
    return ([("stationary", 0.3)] + [("phone", m) for m in MIXES]
            + [(shift, m) for shift in ("blurry sensor", "rotated 30-60 deg", "thick pen", "small, off-centre")
               for m in MIXES])


def run(seeds: int = SEEDS) -> list[dict]:
    from monitors.estimates import PublishedEstimate
    from training.digits import build_incident

    incident = build_incident()
    rows = []
    for name in MODELS:
        validation, tests, shifted, regions, profile = model_pools(name, incident, seed=0)
        fits = fitted(validation, regions)
        fits = {"capture=scanner": fits["scanner"], "capture=phone": fits["phone"], "all": fits["all"]}
        published = PublishedEstimate.of(profile)
        for key, fit in fits.items():
            fit["threshold"] = published.threshold(key)
        for kind, mix in streams():
            errors: dict[tuple[str, str], list[float]] = {}
            realized_seen: dict[str, list[float]] = {}
            for seed in range(seeds):
                rng = np.random.default_rng(1000 + seed)
                phone_share = mix if kind == "phone" else 0.3
                pool = shifted.get(kind)
                w = window(tests, pool, phone_share, mix if pool is not None else 0.0, rng)
                for key in SUBGROUPS:
                    confidence, region, correct, agree = w[key]
                    if len(correct) == 0:
                        continue
                    realized = float(np.mean(correct))
                    realized_seen.setdefault(key, []).append(realized)
                    for est, value in estimate(fits[key], confidence, region, agree).items():
                        errors.setdefault((key, est), []).append(value - realized)
            for key in SUBGROUPS:
                row = {"model": name, "stream": kind, "mix": mix, "subgroup": key,
                       "realized": round(float(np.mean(realized_seen[key])), 4)}
                for est in ESTIMATORS:
                    e = np.array(errors[(key, est)])
                    row[est] = {"mean_error": round(float(e.mean()), 4), "worst_error": round(float(e[np.argmax(np.abs(e))]), 4),
                                "sd": round(float(e.std()), 4)}
                rows.append(row)
    return rows


def summary(rows: list[dict]) -> dict:
    """Per model and estimator: the largest |mean error| on stationary traffic, and over every
    shifted stream and mix (per subgroup and the whole mix)."""
    out = {}
    for name in MODELS:
        mine = [r for r in rows if r["model"] == name]
        out[name] = {est: {"stationary": max(abs(r[est]["mean_error"]) for r in mine if r["stream"] == "stationary"),
                           "worst_shifted": max(abs(r[est]["mean_error"]) for r in mine if r["stream"] != "stationary")}
                     for est in ESTIMATORS}
        # how far the published estimate moved from the one it replaced, on stationary traffic
        out[name]["published_minus_before"] = {
            r["subgroup"]: round(r["published"]["mean_error"] - r["confidence"]["mean_error"], 4)
            for r in mine if r["stream"] == "stationary"}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("artifacts/bench_estimate.json"))
    parser.add_argument("--seeds", type=int, default=SEEDS)
    args = parser.parse_args(argv)
    rows = run(args.seeds)
    result = {"rows": rows, "summary": summary(rows)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"error = estimate - realized, mean over {args.seeds} windows of {WINDOW} (largest |error| of one window "
          "in brackets)")
    head = "".join(f"{e:>17}" for e in ESTIMATORS)
    for name in MODELS:
        print(f"\n{name}\n{'stream':<20} {'mix':>4} {'subgroup':<16} {'realized':>8}{head}")
        for r in (r for r in rows if r["model"] == name):
            cells = "".join(f"{r[e]['mean_error']:>+8.3f} [{r[e]['worst_error']:>+6.3f}]" for e in ESTIMATORS)
            print(f"{r['stream']:<20} {r['mix']:>4.0%} {r['subgroup']:<16} {r['realized']:>8.3f}{cells}")
    print("\nlargest |mean error|: stationary / any shifted stream, mix and subgroup")
    for name, per in result["summary"].items():
        print(f"{name:<22} " + "  ".join(f"{e} {per[e]['stationary']:.3f} / {per[e]['worst_shifted']:.3f}"
                                         for e in ESTIMATORS))
    print("\npublished minus the mean calibrated confidence it replaced, stationary stream")
    for name, per in result["summary"].items():
        print(f"{name:<22} " + "  ".join(f"{k} {v:+.3f}" for k, v in per["published_minus_before"].items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
