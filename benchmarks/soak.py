"""Soak: many requests at concurrency 32 against one `bentoml serve`, bounded in time.

    python -m benchmarks.soak --requests 100000          (make soak)

Checks, printed and returned: no failed request; resident memory of the service's processes
after warm-up grows less than 10%; the predictions counted on /metrics equal the requests
answered; the monitor window and the prediction log stay within their bounds.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from benchmarks import save_flat

OUT = Path("artifacts/bench_soak.json")


def rss_bytes(pid: int) -> int:
    import psutil

    root = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [root, *root.children(recursive=True)])


def soak(requests: int, *, concurrency: int = 32, env: dict | None = None, max_seconds: float = 900) -> dict:
    from harness import promtext
    from harness.server import Server
    from harness.traffic import holdout_samples, run, stream
    from store.prediction_log import connect

    pool = stream(holdout_samples(), 2000, phone_share=0.3, seed=5)
    warmup = 2000
    with Server(env={"CLASSGUARD_LOG__MAX_ROWS": "20000", "CLASSGUARD_LOG__RETENTION_CHECK_SECONDS": "2",
                     **(env or {})}) as server:
        run(server.url, pool[:warmup], concurrency=concurrency)
        rss_start = rss_bytes(server.process.pid)
        answered = failed = 0
        started = time.monotonic()
        while answered + failed < requests and time.monotonic() - started < max_seconds:
            chunk = min(len(pool), requests - answered - failed)
            results, _ = run(server.url, pool[:chunk], concurrency=concurrency)
            answered += sum(status == 200 for _, status, _ in results)
            failed += sum(status != 200 for _, status, _ in results)
            print(f"soak: {answered + failed}/{requests}, rss {rss_bytes(server.process.pid) / 2**20:.1f} MB",
                  file=sys.stderr, flush=True)
        seconds = time.monotonic() - started
        time.sleep(3)  # monitors publish, the log flushes and enforces retention
        rss_end = rss_bytes(server.process.pid)
        samples = promtext.scrape(server.url)
        conn = connect(Path(server.env["CLASSGUARD_LOG__PATH"]))
        log_rows = conn.execute("SELECT COUNT(*) FROM predictions").fetchone()[0]
    counted = promtext.total(samples, "classguard_predictions_total")
    window = promtext.total(samples, "classguard_monitor_window_samples", monitor="representation", subgroup="")
    return {
        "requests": answered + failed, "failed": failed, "seconds": round(seconds, 1),
        "requests_per_s": round((answered + failed) / seconds), "rss_after_warmup_mb": round(rss_start / 2**20, 1),
        "rss_end_mb": round(rss_end / 2**20, 1), "rss_growth": round(rss_end / rss_start - 1, 4),
        "predictions_counted": int(counted), "answered_including_warmup": answered + warmup,
        "monitor_window_events": int(window), "log_rows": log_rows, "log_max_rows": 20000,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--max-seconds", type=float, default=900)
    args = parser.parse_args(argv)
    result = soak(args.requests, max_seconds=args.max_seconds)
    save_flat(OUT, result)
    ok = (result["failed"] == 0 and result["rss_growth"] < 0.10
          and result["predictions_counted"] == result["answered_including_warmup"]
          and result["log_rows"] <= result["log_max_rows"])
    print("soak: " + ("all checks hold" if ok else "A CHECK FAILED"))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
