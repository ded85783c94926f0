"""Write throughput of the prediction log (SQLite, WAL), one process.

    python -m benchmarks.log_throughput        (make bench-log)

Records 100,000 realistic rows (10 classes, flags and a guardrail trace) through
PredictionLog.record() and flushes in batches as the service does (every 1,000 rows here),
then reports rows/s for record (the request path) and for the flush (the writer thread).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks import save_flat

OUT = Path("artifacts/bench_log.json")


def main() -> int:
    from service.config import LogConfig
    from service.prediction_log import PredictionLog

    n, batch = 100_000, 1_000
    probs = np.random.default_rng(0).dirichlet(np.ones(10), 64)
    with tempfile.TemporaryDirectory() as tmp:
        log = PredictionLog(LogConfig(path=Path(tmp) / "p.sqlite", queue_size=n + 1))
        record_s = flush_s = 0.0
        for start in range(0, n, batch):
            began = time.perf_counter()
            for i in range(start, start + batch):
                log.record({"request_id": f"{i:032x}", "label": "3", "confidence": 0.61, "abstained": False,
                            "flags": ["known_confusion:6->0"] if i % 7 == 0 else [],
                            "guardrails": [{"guardrail": "allow_all", "action": "allow", "reason": "none"}],
                            "top_k": [{"label": "3", "probability": 0.61}, {"label": "9", "probability": 0.2}]},
                           probs[i % 64], "ca41b24220abcf66", "classguard-baseline:v1", "capture=phone")
            record_s += time.perf_counter() - began
            began = time.perf_counter()
            log.flush()
            flush_s += time.perf_counter() - began
        size = sum(f.stat().st_size for f in Path(tmp).iterdir())
    results = {"rows": n, "record_rows_per_s": round(n / record_s), "flush_rows_per_s": round(n / flush_s),
               "bytes_per_row": round(size / n)}
    save_flat(OUT, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
