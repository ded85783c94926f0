"""What input capture costs, in-process: the request path's share and the writer thread's.

    python -m benchmarks.capture_cost        (make bench-capture runs it after capture_retention)

End to end (`make bench`, (e)/(c)) the cost hides in this machine's noise: rounds of one run
differ by 30%. Here the same work is timed alone, interleaved, median of many rounds:

- request path: `PredictionLog.record_many` for a batch of 64 answered uploads (real
  test-split PNGs), capture `off`, `stratified` with its budget spent (the steady state: the
  policy's counter says no), `stratified` keeping every answer, and `all`;
- writer thread: `PredictionLog.flush` of those 64 answers with and without their inputs
  (thumbnail, format check and the insert in the log's transaction), per input kept.

Results: a table on stdout and artifacts/bench_capture_cost.json.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from core.config import CaptureConfig, LogConfig
from store.prediction_log import PredictionLog

OUT = Path("artifacts/bench_capture_cost.json")
BATCH, ROUNDS = 64, 200


def answers(batch: int, start: int) -> list[dict]:
    return [{"request_id": f"r{start + i:09d}", "correlation_id": None, "label": "3", "abstained": False,
             "confidence": 0.9, "flags": [], "guardrails": [], "top_k": []} for i in range(batch)]


def main() -> int:
    from harness.traffic import holdout_samples

    pngs = [s.png for s in holdout_samples()[:BATCH]]
    probs = [np.full(10, 0.1, np.float32)] * BATCH
    models, subgroups, regions = ["base:v1"] * BATCH, ["capture=scanner"] * BATCH, ["r01"] * BATCH
    policies = {"off": CaptureConfig(), "stratified, budget spent": CaptureConfig(policy="stratified", per_stratum=1),
                "stratified, keeping": CaptureConfig(policy="stratified", per_stratum=1_000_000),
                "all": CaptureConfig(policy="all")}
    with tempfile.TemporaryDirectory() as tmp:
        logs = {name: PredictionLog(LogConfig(path=Path(tmp) / f"{i}.sqlite"), capture=config)
                for i, (name, config) in enumerate(policies.items())}
        record: dict[str, list[float]] = {name: [] for name in logs}
        flush: dict[str, list[float]] = {name: [] for name in logs}
        n = 0
        for r in range(ROUNDS):
            for name, log in logs.items():
                batch = answers(BATCH, n)
                n += BATCH
                started = time.perf_counter()
                log.record_many(batch, probs, "h", models, subgroups, pngs, regions)
                record[name].append((time.perf_counter() - started) / BATCH * 1e6)
                started = time.perf_counter()
                log.flush(retention=False)
                flush[name].append((time.perf_counter() - started) / BATCH * 1e6)
            if r % 50 == 0:
                print(f"round {r + 1}/{ROUNDS}", file=sys.stderr, flush=True)
        kept = {name: log.read(lambda conn: conn.execute("SELECT COUNT(*) FROM inputs").fetchone()[0])
                for name, log in logs.items()}
    results = {name: {"record_us_per_answer": round(statistics.median(record[name]), 2),
                      "flush_us_per_answer": round(statistics.median(flush[name]), 2), "inputs_kept": kept[name]}
               for name in logs}
    base = results["off"]
    print(f"median of {ROUNDS} interleaved rounds of {BATCH} answers (real PNG uploads)")
    print(f"{'capture':<26} {'request path us/answer':>23} {'added':>7} {'writer us/answer':>17} {'added':>7} "
          f"{'inputs kept':>12}")
    for name, r in results.items():
        r["record_added_us"] = round(r["record_us_per_answer"] - base["record_us_per_answer"], 2)
        r["flush_added_us"] = round(r["flush_us_per_answer"] - base["flush_us_per_answer"], 2)
        print(f"{name:<26} {r['record_us_per_answer']:>23.2f} {r['record_added_us']:>+7.2f} "
              f"{r['flush_us_per_answer']:>17.2f} {r['flush_added_us']:>+7.2f} {r['inputs_kept']:>12,}")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"batch": BATCH, "rounds": ROUNDS, "results": results}, indent=2) + "\n")
    print(f"\n{OUT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
