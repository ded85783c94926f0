"""What the fleet's PostgreSQL can take, and what each replica costs it: the figures behind the
README's "Scaling out" (run by `make bench-fleet`, after benchmarks.fleet).

    python -m benchmarks.fleet_store

1. Log capacity: 1 and 2 writer processes, each a PredictionLog flushing 500-row batches (what
   a replica at 1,000 req/s queues in one 0.5 s flush) into one throwaway PostgreSQL as fast
   as it can: rows/s, the server's CPU per row, and table, index and WAL bytes per row.
2. Window exchange: N workers' FleetWindows (N = 1, 10, 30, 100, simulated in one process, each
   with a full 5-minute window of the default configuration's layout) each exchange once, as a
   publish does: milliseconds, the server's CPU, bytes written and read, statements per
   exchange, and the time for the round of N. A flat per-exchange cost means the fleet's window
   traffic grows linearly with replicas, not as N^2.
3. Chain poll: the cost of one `changed()` poll (every worker, every 0.5 s).
"""

from __future__ import annotations

import multiprocessing
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks import save_flat

OUT = Path("artifacts/bench_fleet_store.json")
BATCH = 500
WRITE_SECONDS = 8.0


def progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def server_cpu_seconds(data_dir: Path) -> float:
    """CPU seconds the PostgreSQL server has used so far: the postmaster's own and its exited
    children's (cutime, cstime), plus every live backend's. The writers here are Python and
    share the 2 cores, so rows/s measures them as much as the server; the server's CPU per
    row is what extrapolates to a bigger machine."""
    import os

    ticks = os.sysconf("SC_CLK_TCK")
    postmaster = int((data_dir / "postmaster.pid").read_text().split()[0])

    def fields(pid: int) -> list[str]:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()

    own = fields(postmaster)
    total = sum(int(v) for v in own[11:15])  # utime, stime, cutime, cstime
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                f = fields(int(entry.name))
            except OSError:
                continue
            if int(f[1]) == postmaster:  # ppid
                total += int(f[11]) + int(f[12])
    return total / ticks


def _writer(url: str, seconds: float, out: multiprocessing.Queue) -> None:
    from benchmarks.log_throughput import record
    from core.config import LogConfig
    from core.ids import time_ordered_id
    from store.database import PostgresDatabase
    from store.prediction_log import PredictionLog

    log = PredictionLog(LogConfig(queue_size=BATCH + 1), PostgresDatabase(url, replica="bench"))
    written, started, i = 0, time.perf_counter(), 0
    while time.perf_counter() - started < seconds:
        for _ in range(BATCH):
            record(log, i, time_ordered_id())
            i += 1
        written += log.flush(retention=False)
    out.put((written, time.perf_counter() - started))


def log_capacity(url: str, writers: int, data_dir: Path) -> dict[str, float]:
    import psycopg

    cpu0 = server_cpu_seconds(data_dir)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("TRUNCATE predictions")
        lsn0 = conn.execute("SELECT pg_current_wal_lsn()").fetchone()[0]
        queue: multiprocessing.Queue = multiprocessing.Queue()
        procs = [multiprocessing.Process(target=_writer, args=(url, WRITE_SECONDS, queue)) for _ in range(writers)]
        for p in procs:
            p.start()
        results = [queue.get(timeout=120) for _ in procs]
        for p in procs:
            p.join()
        rows = sum(r[0] for r in results)
        # a backend's CPU reaches the postmaster's cutime only once it has exited and been reaped
        deadline = time.monotonic() + 10
        while conn.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'classguard bench'"
                           ).fetchone()[0] and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
        wal = conn.execute("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), %s)", (lsn0,)).fetchone()[0]
        table = conn.execute("SELECT pg_relation_size('predictions'), pg_indexes_size('predictions')").fetchone()
    seconds = max(r[1] for r in results)
    server_us = (server_cpu_seconds(data_dir) - cpu0) / rows * 1e6
    return {"writers": writers, "rows_per_s": round(rows / seconds), "server_cpu_us_per_row": round(server_us, 1),
            "table_bytes_per_row": round(table[0] / rows),
            "index_bytes_per_row": round(table[1] / rows), "wal_bytes_per_row": round(float(wal) / rows)}


def default_layout_suite():
    """A MonitorSuite of the default configuration (both stored models' profiles, the configured
    subgroups and pairs): the real vector size per bucket."""
    from core.config import Settings
    from monitors.reference import ReferenceProfile
    from monitors.suite import MonitorSuite
    from runtime.models import find_stored
    from runtime.monitor_pipeline import confusion_pairs, window_config
    from runtime.subgroups import SubgroupResolver
    from store.model_store import PROFILE_KEY

    settings = Settings()
    tags = settings.models.tags()
    profiles = [ReferenceProfile.from_dict(find_stored(t).info.metadata[PROFILE_KEY]) for t in tags]
    return MonitorSuite([t.split(":")[0] for t in tags], profiles, SubgroupResolver(settings.subgroups.attributes).keys(),
                        confusion_pairs(settings.monitors), window_config(settings.monitors), settings.monitors.regions)


def full_window(suite, seed: int, now: float) -> dict[int, np.ndarray]:
    """Bucket vectors of a 5-minute window of random counts (every bucket changed)."""
    rng = np.random.default_rng(seed)
    n, size = suite.window.n_buckets, suite.vector_size()
    newest = int(now // suite.window.bucket_s)
    return {b: rng.integers(0, 5, size).astype(np.float64) for b in range(newest - n + 1, newest + 1)}


def window_exchange(url: str, workers: int, suite, data_dir: Path) -> dict[str, float]:
    """Each of `workers` writes its first full window (warm-up), then a steady publish: the 5
    newest buckets changed (recompute_seconds 5 s at 1 s buckets) and the fleet's window read."""
    from store.database import PostgresDatabase
    from store.fleet_windows import FleetWindows

    now = time.time()
    layout = f"bench{workers}"
    db = PostgresDatabase(url, replica="bench")
    fleet = [FleetWindows(db, layout=layout, worker=f"w{i}", bucket_s=1.0, n_buckets=suite.window.n_buckets)
             for i in range(workers)]
    states = [full_window(suite, i, now) for i in range(workers)]
    for windows, state in zip(fleet, states):
        windows.exchange(state, now)
    times, written, read, statements = [], [], [], []
    cpu0 = server_cpu_seconds(data_dir)
    round_started = time.perf_counter()
    for windows, state in zip(fleet, states):
        for b in sorted(state)[-5:]:
            state[b] = state[b] + 1.0
        began = time.perf_counter()
        totals = windows.exchange(state, now)
        times.append(time.perf_counter() - began)
        written.append(windows.last["written_bytes"])
        read.append(windows.last["read_bytes"])
        statements.append(windows.last["statements"])
    round_s = time.perf_counter() - round_started
    server_ms = (server_cpu_seconds(data_dir) - cpu0) / workers * 1000
    expected = sum(s[max(s)] for s in states)
    assert np.array_equal(totals[max(totals)], expected), "fleet totals differ from the sum of the workers"
    for windows in fleet:
        windows._conn.close()
    return {"workers": workers, "exchange_ms_p50": round(statistics.median(times) * 1000, 2),
            "exchange_ms_max": round(max(times) * 1000, 2), "server_cpu_ms_per_exchange": round(server_ms, 2),
            "written_bytes": int(statistics.median(written)),
            "read_bytes": int(statistics.median(read)), "statements": int(statistics.median(statements)),
            "round_of_all_workers_ms": round(round_s * 1000, 1)}


def chain_poll(url: str, data_dir: Path) -> dict[str, float]:
    from store.chain_store import FleetChainStore
    from store.database import PostgresDatabase

    store = FleetChainStore(PostgresDatabase(url, replica="bench"), "bench")
    store.changed()
    cpu0 = server_cpu_seconds(data_dir)
    began = time.perf_counter()
    for _ in range(500):
        store.changed()
    return {"chain_poll_us": round((time.perf_counter() - began) / 500 * 1e6),
            "chain_poll_server_cpu_us": round((server_cpu_seconds(data_dir) - cpu0) / 500 * 1e6)}


def main() -> int:
    from harness.postgres import Postgres
    from store.database import PostgresDatabase

    from harness.postgres import server_bindir

    if server_bindir() is None:
        print("make bench-fleet needs PostgreSQL's server binaries: apt-get install postgresql", file=sys.stderr)
        return 2
    results: dict[str, float] = {}
    with Postgres.start() as pg:
        PostgresDatabase(pg.url, replica="bench").migrate()
        for writers in (1, 2):
            progress(f"log capacity, {writers} writer process(es), {WRITE_SECONDS:g} s ...")
            r = log_capacity(pg.url, writers, pg.data)
            progress(f"  {r}")
            for k, v in r.items():
                if k != "writers":
                    results[f"log_{writers}w_{k}"] = v
        suite = default_layout_suite()
        results["window_vector_floats"] = suite.vector_size()
        results["window_buckets"] = suite.window.n_buckets
        for workers in (1, 10, 30, 100):
            progress(f"window exchange, {workers} workers ...")
            r = window_exchange(pg.url, workers, suite, pg.data)
            progress(f"  {r}")
            for k, v in r.items():
                if k != "workers":
                    results[f"windows_{workers}w_{k}"] = v
        results.update(chain_poll(pg.url, pg.data))
    save_flat(OUT, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
