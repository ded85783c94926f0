"""Write throughput of the prediction log (SQLite, WAL), one process.

    python -m benchmarks.log_throughput        (make bench-log)

Records 100,000 realistic rows (10 classes, flags and a guardrail trace) through
PredictionLog.record_many(), a row a call, and flushes in batches as the service does (every 1,000 rows here),
then reports rows/s for record (the request path) and for the flush (the writer thread),
once with the service's time-ordered request ids and once with random (uuid4) ids: the
flush cost per row over the last 10,000 rows shows what random primary keys do as the table
grows. Last, 450 queued rows are flushed on a thread while the main thread runs Python
non-stop (a busy request thread), as the service's multi-row INSERTs and as row-by-row
executemany: how long the writer waits for the interpreter lock.
"""

from __future__ import annotations

import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np

from benchmarks import save_flat

OUT = Path("artifacts/bench_log.json")
PROBS = np.random.default_rng(0).dirichlet(np.ones(10), 64)


def record(log, i: int, request_id: str) -> None:
    log.record_many([{"request_id": request_id, "label": "3", "confidence": 0.61, "abstained": False,
                      "flags": ["known_confusion:6->0"] if i % 7 == 0 else [],
                      "guardrails": [{"guardrail": "allow_all", "action": "allow", "reason": "none"}],
                      "top_k": [{"label": "3", "probability": 0.61}, {"label": "9", "probability": 0.2}]}],
                    [PROBS[i % 64]], "ca41b24220abcf66", ["classguard-baseline:v1"], ["capture=phone"])


def fill(new_id, n: int = 100_000, batch: int = 1_000) -> dict[str, float]:
    from core.config import LogConfig
    from store.prediction_log import PredictionLog

    with tempfile.TemporaryDirectory() as tmp:
        log = PredictionLog(LogConfig(path=Path(tmp) / "p.sqlite", queue_size=n + 1))
        ids = [new_id() for _ in range(n)]  # minted outside the timing
        record_s = flush_s = last_s = 0.0
        for start in range(0, n, batch):
            began = time.perf_counter()
            for i in range(start, start + batch):
                record(log, i, ids[i])
            record_s += time.perf_counter() - began
            began = time.perf_counter()
            log.flush()
            took = time.perf_counter() - began
            flush_s += took
            last_s += took if start >= n - 10_000 else 0.0
        size = sum(f.stat().st_size for f in Path(tmp).iterdir())
    return {"record_rows_per_s": round(n / record_s), "flush_rows_per_s": round(n / flush_s),
            "flush_us_per_row_last_10k": round(last_s / 10_000 * 1e6, 1), "bytes_per_row": round(size / n)}


def flush_beside_busy_thread(row_by_row: bool, rows: int = 450) -> float:
    """Milliseconds to write `rows` queued rows on a thread while this thread runs Python."""
    from core.config import LogConfig
    from core.ids import time_ordered_id
    from store.prediction_log import COLUMNS, PredictionLog

    with tempfile.TemporaryDirectory() as tmp:
        log = PredictionLog(LogConfig(path=Path(tmp) / "p.sqlite"))
        for i in range(rows):
            record(log, i, time_ordered_id())
        if row_by_row:
            queued = list(log._queue)
            sql = f"INSERT INTO predictions ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"

            def write() -> None:
                with log._conn:
                    log._conn.executemany(sql, queued)
        else:
            write = log.flush
        took = {}

        def timed() -> None:
            began = time.perf_counter()
            write()
            took["s"] = time.perf_counter() - began

        writer = threading.Thread(target=timed)
        writer.start()
        while writer.is_alive():
            sum(range(200))  # the request thread, never waiting on I/O
        return round(took["s"] * 1000, 1)


def main() -> int:
    from core.ids import time_ordered_id

    ordered = fill(time_ordered_id)
    random_ids = fill(lambda: uuid.uuid4().hex)
    results = {"rows": 100_000, **ordered,
               "random_ids_flush_rows_per_s": random_ids["flush_rows_per_s"],
               "random_ids_flush_us_per_row_last_10k": random_ids["flush_us_per_row_last_10k"],
               "busy_thread_flush_450_rows_ms": flush_beside_busy_thread(row_by_row=False),
               "busy_thread_executemany_450_rows_ms": flush_beside_busy_thread(row_by_row=True)}
    save_flat(OUT, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
