"""How many of a rare group's inputs each capture policy keeps, at one byte budget.

    python -m benchmarks.capture_retention        (make bench-capture)

A stream of 20,000 answers over two hours, in 10 strata (model x subgroup x region) of uneven
traffic: one stratum at 60%, the `rare` group (its own subgroup and region) at 5%, the rest
between 10% and 1%. Every input is 2 KB; the store holds 1,000 inputs' worth and evicts the
oldest beyond that (as store.inputs.evict does), whatever the policy. Compared:

- stratified: the service's own store.capture.Capture, `per_stratum` = budget / (strata x
  hours) = 50 a stratum an hour, so the budget is just filled;
- uniform: each answer kept with probability budget / answers (expected bytes = budget), over
  20 seeds;
- all: every answer kept, the oldest evicted: the newest 1,000.

`span` is the minutes from the first kept input to the last: the stratified policy takes each
stratum's first `per_stratum` answers of its first period, then samples a stratum that outran
its budget at the rate that spreads the budget over the next period; `all` keeps only the last
minutes.

Results: a table on stdout (per policy, then per stratum) and artifacts/bench_capture_retention.json.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.config import CaptureConfig
from store.capture import Capture

OUT = Path("artifacts/bench_capture_retention.json")
ANSWERS, HOURS = 20_000, 2
START = 1_800_000_000.0  # on the hour, so the stream spans exactly two capture periods
IMAGE_BYTES = 2_048
BUDGET_BYTES = 1_000 * IMAGE_BYTES
SEEDS = 20
RARE = ("classguard-retrained", "capture=phone", "r10")
# traffic share per stratum; the rare group is the one the model was short of
STRATA = {("classguard-retrained", "capture=scanner", "r01"): 0.60,
          ("classguard-retrained", "capture=scanner", "r02"): 0.10,
          ("classguard-retrained", "capture=scanner", "r03"): 0.08,
          ("classguard-retrained", "capture=scanner", "r04"): 0.06,
          RARE: 0.05,
          ("classguard-retrained", "capture=scanner", "r05"): 0.04,
          ("classguard-retrained", "capture=scanner", "r06"): 0.03,
          ("classguard-retrained", "capture=scanner", "r07"): 0.02,
          ("classguard-retrained", "capture=scanner", "r08"): 0.01,
          ("classguard-retrained", "capture=scanner", "r09"): 0.01}


@dataclass(frozen=True)
class Stream:
    """Answers in time order: when each came and which stratum (an index into `strata`) it is in."""

    ts: np.ndarray
    stratum: np.ndarray
    strata: tuple[tuple[str, str, str], ...]


def make_stream(shares: dict[tuple[str, str, str], float], n: int, seconds: float, seed: int = 0) -> Stream:
    """`n` answers at uniformly random times over `seconds`, each in a stratum drawn by its share."""
    rng = np.random.default_rng(seed)
    strata = tuple(shares)
    weights = np.array([shares[s] for s in strata])
    ts = START + np.sort(rng.uniform(0.0, seconds, n))
    return Stream(ts, rng.choice(len(strata), n, p=weights / weights.sum()), strata)


def stratified(stream: Stream, per_stratum: int, stratum_seconds: float = 3_600.0) -> np.ndarray:
    """Indices the service's stratified policy keeps (no answer flagged)."""
    capture = Capture(CaptureConfig(policy="stratified", per_stratum=per_stratum, stratum_seconds=stratum_seconds))
    return np.array([i for i, (t, s) in enumerate(zip(stream.ts.tolist(), stream.stratum.tolist()))
                     if capture.reason(*stream.strata[s], flagged=False, now=t) is not None], dtype=np.int64)


def uniform(stream: Stream, p: float, seed: int) -> np.ndarray:
    """Indices kept when each answer is kept with probability `p`."""
    return np.flatnonzero(np.random.default_rng(seed).random(len(stream.ts)) < p)


def evicted_to(kept: np.ndarray, budget_bytes: int, image_bytes: int = IMAGE_BYTES) -> np.ndarray:
    """What the store holds of `kept` (time order) once the oldest are evicted beyond the budget."""
    return kept[max(0, len(kept) - budget_bytes // image_bytes):]


def summary(stream: Stream, held: np.ndarray, rare: int) -> dict[str, object]:
    counts = np.bincount(stream.stratum[held], minlength=len(stream.strata))
    span = float(stream.ts[held[-1]] - stream.ts[held[0]]) if len(held) else 0.0
    return {"kept": int(len(held)), "rare": int(counts[rare]),
            "rare_share": round(float(counts[rare]) / max(len(held), 1), 4),
            "span_minutes": round(span / 60.0, 1), "per_stratum": counts.tolist()}


def spread(runs: list[dict[str, object]], key: str) -> dict[str, float]:
    values = [r[key] for r in runs]
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def print_tables(stream: Stream, results: dict[str, dict]) -> None:
    line = "{:<24} {:>6g} {:>6g} {:>11.1%} {:>10.1f}"
    columns = ("kept", "rare", "rare_share", "span_minutes")
    print(f"\n{'policy':<24} {'kept':>6} {'rare':>6} {'rare share':>11} {'span, min':>10}")
    print(line.format("stratified", *(results["stratified"][k] for k in columns)))
    for which in ("min", "median", "max"):
        print(line.format(f"uniform, {which}", *(results["uniform"][k][which] for k in columns)))
    print(line.format("all, oldest evicted", *(results["all"][k] for k in columns)))
    print("(uniform: each column's own min / median / max over the seeds)")

    traffic = np.bincount(stream.stratum, minlength=len(stream.strata)) / len(stream.ts)
    print(f"\n{'stratum':<22} {'traffic':>8} {'stratified':>11} {'uniform med':>12} {'all':>5}")
    for i, (_, subgroup, region) in enumerate(stream.strata):
        kept = (results["stratified"]["per_stratum"][i], results["uniform"]["per_stratum_median"][i],
                results["all"]["per_stratum"][i])
        print(f"{subgroup + ' ' + region:<22} {traffic[i]:>8.1%} {kept[0]:>11} {kept[1]:>12g} {kept[2]:>5}")


def main() -> int:
    started = time.perf_counter()
    stream = make_stream(STRATA, ANSWERS, HOURS * 3_600.0)
    rare = stream.strata.index(RARE)
    budget_images = BUDGET_BYTES // IMAGE_BYTES
    per_stratum = budget_images // (len(STRATA) * HOURS)
    p = budget_images / ANSWERS
    print(f"{ANSWERS:,} answers over {HOURS} h in {len(STRATA)} strata; rare group {RARE[1]} {RARE[2]} at "
          f"{STRATA[RARE]:.0%} ({int(np.sum(stream.stratum == rare)):,} answers); budget {BUDGET_BYTES:,} bytes = "
          f"{budget_images:,} inputs of {IMAGE_BYTES:,} bytes", file=sys.stderr, flush=True)

    results = {"stratified": summary(stream, evicted_to(stratified(stream, per_stratum), BUDGET_BYTES), rare)}
    print(f"stratified: per_stratum={per_stratum} an hour, done", file=sys.stderr, flush=True)
    runs = [summary(stream, evicted_to(uniform(stream, p, seed), BUDGET_BYTES), rare) for seed in range(SEEDS)]
    results["uniform"] = {"seeds": SEEDS, "p": p, **{k: spread(runs, k) for k in ("kept", "rare", "rare_share",
                                                                                   "span_minutes")},
                          "per_stratum_median": [statistics.median(r["per_stratum"][i] for r in runs)
                                                 for i in range(len(STRATA))], "runs": runs}
    print(f"uniform: p={p:.4f}, {SEEDS} seeds, done", file=sys.stderr, flush=True)
    results["all"] = summary(stream, evicted_to(np.arange(ANSWERS), BUDGET_BYTES), rare)
    print_tables(stream, results)

    traffic = np.bincount(stream.stratum, minlength=len(STRATA))
    strata = [{"model": m, "subgroup": g, "region": r, "share": STRATA[(m, g, r)], "answers": int(traffic[i])}
              for i, (m, g, r) in enumerate(stream.strata)]
    report = {"answers": ANSWERS, "hours": HOURS, "image_bytes": IMAGE_BYTES, "budget_bytes": BUDGET_BYTES,
              "per_stratum": per_stratum, "strata": strata, "rare": {"subgroup": RARE[1], "region": RARE[2]},
              "policies": results, "seconds": round(time.perf_counter() - started, 2)}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\n{OUT} ({report['seconds']} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
