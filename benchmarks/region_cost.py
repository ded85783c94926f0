"""Cost of embedding regions per prediction, on one core.

    python -m benchmarks.region_cost

- Codebook.assign at K=32 prototypes, 64 wide, for micro-batches of 1, 8, 64 and 256
  predictions: microseconds per prediction, against a budget of 5 us. For one row, numpy's
  per-call overhead, not arithmetic, is the cost, so the cores are also timed alone, without
  assign()'s input checks: the single-row path assign() takes (scipy's BLAS sgemv + sdot,
  argmin(keepdims)), the same in plain numpy (dot, +=, argmin, dot), and the batched path on
  one row. `numpy_call_floor` is one 64-wide ndarray.dot, to scale the figures to another
  machine (this is where a loaded machine shows).
- RegionMonitor.update_many per event, in batches of 1,000 (as the pipeline drains), and
  one recompute of every score over a full 5-minute window.
Each figure is the median of repeats (timeit). Results: stdout and artifacts/bench_region_cost.json.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # before numpy loads OpenBLAS: one core, as a worker has
os.environ.setdefault("OMP_NUM_THREADS", "1")

import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import timeit  # noqa: E402
from pathlib import Path  # noqa: E402
from types import SimpleNamespace  # noqa: E402
from typing import Any, Callable  # noqa: E402

import numpy as np  # noqa: E402

from monitors.events import WindowConfig  # noqa: E402
from monitors.regions import RegionMonitor, fit_codebook  # noqa: E402

OUT = Path("artifacts/bench_region_cost.json")
K, WIDTH, BUDGET_US = 32, 64, 5.0
BATCHES = (1, 8, 64, 256)
REPEATS = 15


def per_call_us(cases: dict[Any, Callable[[], object]], target_s: float = 0.05) -> dict[Any, float]:
    """Median over REPEATS rounds of each case's mean time per call, in microseconds. The cases
    take turns within a round, so a change in the machine's load hits them all alike."""
    timers = {name: timeit.Timer(fn) for name, fn in cases.items()}
    numbers = {name: max(1, int(t.autorange()[0] * target_s / 0.2)) for name, t in timers.items()}
    times: dict[Any, list[float]] = {name: [] for name in cases}
    for _ in range(REPEATS):
        for name, timer in timers.items():
            times[name].append(timer.timeit(numbers[name]) / numbers[name])
    return {name: 1e6 * statistics.median(t) for name, t in times.items()}


def codebook(rng: np.random.Generator):
    centers = rng.normal(0.0, 3.0, (K, WIDTH))
    n = 20 * K * 10
    x = np.maximum(centers[rng.integers(0, K, n)] + rng.normal(size=(n, WIDTH)), 0.0)  # ReLU-like activations
    labels = rng.integers(0, 10, n)
    return fit_codebook(x, labels=labels, predicted=labels, confidence=rng.uniform(0.2, 1.0, n),
                        subgroups=["capture=scanner"] * n, k=K, seed=0), x


def numpy_one_row(book, x: np.ndarray) -> np.ndarray:
    """The single-row assignment in plain numpy, fewest temporaries: the alternative measured."""
    scores = book._minus_2pt.T.dot(x)
    scores += book._squared_norms
    i = scores.argmin(keepdims=True)
    if scores[i[0]] + x.dot(x) > book._novel_squared:
        i[0] = book.k
    return i


def main() -> int:
    rng = np.random.default_rng(0)
    book, validation = codebook(rng)
    assert book.k == K, f"fitted {book.k} regions, wanted {K}"
    one = validation[:1].astype(np.float32)
    rows32 = validation[:500].astype(np.float32)
    assert all(np.array_equal(numpy_one_row(book, row), book.assign(row[None])) for row in rows32)
    cases = {}  # (what, path, batch) -> one call
    for batch in BATCHES:
        x = validation[rng.integers(0, len(validation), batch)].astype(np.float32)
        cases[("Codebook.assign", "single-row" if batch == 1 else "batched", batch)] = lambda x=x: book.assign(x)
    cases[("core alone", "BLAS 1-D", 1)] = lambda: book._assign_one(one[0])
    cases[("core alone", "numpy 1-D", 1)] = lambda: numpy_one_row(book, one[0])
    cases[("core alone", "batched", 1)] = lambda: book._assign_batch(one)
    cases[("numpy_call_floor", "", 1)] = lambda: one[0].dot(one[0])

    window = WindowConfig()  # 300 one-second buckets
    monitor = RegionMonitor.from_codebook(book, window)
    n = 1000
    region = book.assign(validation[rng.integers(0, len(validation), n)])
    events = SimpleNamespace(t=1_000_000.0 + np.arange(n) / n, region=region, confidence=rng.uniform(0.2, 1.0, n))
    cases[("RegionMonitor.update_many", "", n)] = lambda: monitor.update_many(events)
    budgeted = ("Codebook.assign", "RegionMonitor.update_many")  # the rest explain, they are not a path of their own
    rows = [{"what": what, "path": path, "batch": batch, "us_per_prediction": round(us / batch, 3),
             "meets_budget": us / batch <= BUDGET_US if what in budgeted else None}
            for (what, path, batch), us in per_call_us(cases).items()]

    monitor.reset()
    for second in range(window.n_buckets):  # every bucket of the window filled, 100 events each
        monitor.update_many(SimpleNamespace(t=1_000_000.0 + second + np.arange(100) / 100, region=region[:100],
                                            confidence=events.confidence[:100]))
    now = 1_000_000.0 + window.n_buckets - 1
    recompute_ms = per_call_us({"results": lambda: monitor.results(now)})["results"] / 1000

    print(f"K={K} prototypes, {WIDTH} wide, budget {BUDGET_US} us per prediction (median of {REPEATS} repeats)")
    print(f"{'what':<28}{'path':<18}{'batch':>6}{'us/prediction':>15}  budget")
    for row in rows:
        print(f"{row['what']:<28}{row['path']:<18}{row['batch']:>6}{row['us_per_prediction']:>15.3f}  "
              f"{ {True: 'met', False: 'MISSED', None: '-'}[row['meets_budget']]}")
    print(f"RegionMonitor.results over a full window ({K + 1} regions): {recompute_ms:.3f} ms")
    results = {"k": K, "width": WIDTH, "budget_us_per_prediction": BUDGET_US, "rows": rows,
               "recompute_ms_full_window": round(recompute_ms, 3), "numpy": np.__version__,
               "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
               "load_average_1min": round(os.getloadavg()[0], 2)}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
