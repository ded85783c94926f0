"""Fleet mode against the single-host default, on this machine: what sharing one PostgreSQL
costs each replica, what the database sees, whether every replica publishes the statistics
one process would, and how fast a guardrail swap reaches the other replicas.

    make bench-fleet        (or: python -m benchmarks.fleet --requests 2500 --rounds 2 --replicas 1,2,3)

Everything is real: `bentoml serve` replicas with homes of their own (harness.fleet,
harness.server) and a throwaway PostgreSQL (harness.postgres). Four parts:

1. Throughput. For 1, 2 and 3 replicas, a fleet sharing one PostgreSQL database and as many
   separate servers in the default mode (each its own SQLite prediction log) run side by side.
   One client sends the same real test-split PNGs (70% scanner, 30% phone, the capture named
   in the context) to /classify, round-robin over the replicas, 8 requests in flight per
   replica. Each setup is warmed up, then measured in the order fleet, SQLite, SQLite, fleet,
   twice (`--rounds`), so a drift in this shared machine's speed hits both alike. Reported:
   requests/s per replica and the ratio fleet/SQLite (the target: >= 0.9x), over all phases
   and per pair of back-to-back phases (their spread shows the noise); CPU time per request
   of the replicas and of PostgreSQL (which the SQLite servers do not need), a steadier
   measure of what the store costs than requests/s on a machine the client shares.
2. The store under that load (fleet phases only): prediction rows/s written, the database's
   transactions, tuples, buffer hits and WAL bytes per replica per second (pg_stat_database,
   pg_stat_wal, pg_stat_user_tables), connections per replica (pg_stat_activity), and the
   monitor-window exchange size, from the default layout (the MonitorSuite that
   Engine._fleet_windows shares) and from the rows the replicas actually upserted.
3. Statistics. The same stream sent to a 3-replica fleet and to one process (SQLite): every
   replica must publish the counts, shares and scores one process publishes for all of it.
4. Swap propagation. Swaps alternating two profiles, each posted through the next replica:
   for each other replica, the time from the POST until its /metrics exports the new hash
   (classguard_guardrail_config_info); p50, p99 and max. Replicas pick a swap up every
   `guardrails.sync_seconds` (0.5 s), and one scrape of /metrics (printed) is the resolution.

How to read it: only the ratios measured in the same run compare. Client, replicas and
PostgreSQL share this machine's cores, so requests/s per replica falls as replicas are added
(that is the machine, not the store) and absolute figures move from run to run. The store's
per-second figures are deltas over the fleet load phases divided by their seconds (they
include the ~1.5 s waited after each phase for the last rows and statistics to land); the
benchmark's own queries are kept out of the fleet database's counters.
Results: progress on stderr, a summary on stdout, everything in artifacts/bench_fleet.json;
each server's log under artifacts/bench-fleet-logs/. Nothing here asserts on timing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import httpx
import numpy as np
import psycopg

from harness import promtext, traffic
from harness.fleet import Fleet
from harness.postgres import Postgres
from harness.server import Server

OUT = Path("artifacts/bench_fleet.json")
LOGS = Path("artifacts/bench-fleet-logs")
TOKEN = "bench-fleet-token-0123456789"  # admin routes need one (>= 16 characters)
AUTH = {"Authorization": f"Bearer {TOKEN}"}
BASE_ENV = {"CLASSGUARD_ADMIN_TOKEN": TOKEN}  # every server, fleet or not: the default config otherwise
FAST_PUBLISH = {"CLASSGUARD_MONITORS__RECOMPUTE_SECONDS": "1"}  # parts 3 and 4: publish every second
PHONE_SHARE, SEED = 0.3, 11
PROFILES = ("abstain_when_unsure", "allow_all")  # the default chain is allow_all: the first swap changes it
TABLES = ("predictions", "window_part", "window_total", "guardrail_chain")
DB_COUNTERS = ("xact_commit", "xact_rollback", "tup_returned", "tup_fetched", "tup_inserted", "tup_updated",
               "tup_deleted", "blks_read", "blks_hit")
STATS_FLUSH_S = 1.5  # PostgreSQL backends report their statistics at most once a second
STARTUP_S = 240.0  # six `bentoml serve` starting at once on two cores take a while
STARTED = time.monotonic()


def progress(message: str) -> None:
    print(f"[{time.monotonic() - STARTED:5.0f} s] {message}", file=sys.stderr, flush=True)


def wait_for(predicate: Callable[[], Any], timeout: float, interval: float = 0.1) -> Any:
    """Poll `predicate` until it returns something truthy (returned) or `timeout` passes (None)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(interval)
    return None


# -- servers and load --------------------------------------------------------------------------
def start_together(stack: contextlib.ExitStack, managers: list) -> None:
    """Enter every context manager (a Fleet, Servers) at once, as pods start side by side; each
    one started is stopped when `stack` closes, even if another failed to start."""
    with ThreadPoolExecutor(len(managers)) as pool:
        futures = [pool.submit(m.__enter__) for m in managers]
    for manager, future in zip(managers, futures):
        if future.exception() is None:
            stack.push(manager)
    errors = [f.exception() for f in futures if f.exception() is not None]
    if errors:
        raise errors[0]


def load(urls: list[str], samples: list[traffic.Sample], concurrency: int) -> dict[str, float]:
    """Send every sample round-robin over `urls`: requests, seconds, non-200 answers, requests/s."""
    results, seconds = traffic.run(urls, samples, concurrency=concurrency)
    failed = sum(status != 200 for _, status, _ in results)
    return {"requests": len(results), "seconds": seconds, "non_200": failed, "requests_per_s": len(results) / seconds}


def cpu_by_pid(root_pids: list[int]) -> dict[int, float]:
    """User + system CPU seconds so far of each process under the given roots."""
    import psutil

    out = {}
    for pid in root_pids:
        with contextlib.suppress(psutil.Error):
            root = psutil.Process(pid)
            for proc in [root, *root.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    times = proc.cpu_times()
                    out[proc.pid] = times.user + times.system
    return out


def cpu_used(before: dict[int, float], after: dict[int, float]) -> float:
    # per process, so a process that exits or appears in between does not subtract its whole total
    return sum(after[pid] - before.get(pid, 0.0) for pid in after)


def postmaster_pid(pg: Postgres) -> int:
    return int((pg.data / "postmaster.pid").read_text().split()[0])


# -- the PostgreSQL side -----------------------------------------------------------------------
def create_database(pg: Postgres, name: str) -> str:
    """A fresh database per setup, so its counters and tables hold that setup's traffic only."""
    with psycopg.connect(pg.url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return pg.url.rsplit("/", 1)[0] + f"/{name}"


def rows(url: str, sql: str, *args: Any) -> list[tuple]:
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute(sql, args).fetchall()


def snapshot(pg: Postgres, url: str) -> dict[str, float]:
    """The fleet database's cumulative counters now. The benchmark's own queries stay out of
    them: the cluster-wide views are read through the harness's own database (`pg.url`), and
    the fleet database is asked only for its tables' statistics (no count(*): a scan of the
    log would count as the replicas' work). Each part is one transaction on a fresh connection
    (PostgreSQL caches statistics for the length of a transaction)."""
    with psycopg.connect(url) as conn:
        out = {}
        for table, inserted, updated, live in conn.execute(
                "SELECT relname, n_tup_ins, n_tup_upd, n_live_tup FROM pg_stat_user_tables WHERE relname = ANY(%s)",
                (list(TABLES),)):
            out.update({f"{table}.ins": float(inserted), f"{table}.upd": float(updated), f"{table}.live": float(live)})
        out["predictions.bytes"] = float(conn.execute("SELECT pg_total_relation_size('predictions')").fetchone()[0])
    with psycopg.connect(pg.url) as conn:
        row = conn.execute(f"SELECT {', '.join(DB_COUNTERS)} FROM pg_stat_database WHERE datname = %s",
                           (database_of(url),)).fetchone()
        out.update({name: float(value) for name, value in zip(DB_COUNTERS, row)})
        wal_records, wal_bytes = conn.execute("SELECT wal_records, wal_bytes FROM pg_stat_wal").fetchone()
        out.update(wal_records=float(wal_records), wal_bytes=float(wal_bytes))
    out["at"] = time.monotonic()
    return out


def snapshot_cost(pg: Postgres) -> dict[str, float]:
    """What one snapshot adds to a database's own counters (its fresh connection reads the
    catalog: some 900 tuples), measured on an idle database with the fleet's schema and
    subtracted from every interval that holds one."""
    from store.sql_postgres import SCHEMA

    url = create_database(pg, "calibration")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(SCHEMA)
    taken = []
    for _ in range(3):  # the first interval still holds the schema's creation
        time.sleep(STATS_FLUSH_S)
        taken.append(snapshot(pg, url))
    cost = difference(taken[2], taken[1])
    return {k: cost[k] for k in DB_COUNTERS}


def without(delta: dict[str, float], cost: dict[str, float]) -> dict[str, float]:
    return {k: v - cost.get(k, 0.0) for k, v in delta.items()}


def database_of(url: str) -> str:
    return url.rsplit("/", 1)[1]


def difference(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {k: after[k] - before.get(k, 0.0) for k in after}


def connections(pg: Postgres, url: str) -> dict[str, int]:
    """Open connections to the fleet database, by application_name ("classguard <replica>")."""
    found = rows(pg.url, "SELECT application_name, count(*) FROM pg_stat_activity WHERE datname = %s "
                         "AND application_name LIKE 'classguard %%' GROUP BY 1 ORDER BY 1", database_of(url))
    return {name: int(n) for name, n in found}


def logged(urls: list[str]) -> float:
    """Prediction-log rows the replicas say they wrote (their /metrics, not the database)."""
    return sum(promtext.total(promtext.scrape(u), "classguard_log_rows_written_total") for u in urls)


def wait_logged(urls: list[str], expected: float, timeout: float = 15.0) -> bool:
    """Until the replicas have written `expected` log rows (each flushes every 0.5 s), then
    until the database's backends have reported their statistics."""
    done = wait_for(lambda: logged(urls) >= expected, timeout, 0.2)
    time.sleep(STATS_FLUSH_S)
    return bool(done)


# -- part 1 and 2: throughput, and what the store sees -------------------------------------------
def measure_fleet(fleet: Fleet, url: str, pg: Postgres, samples: list, concurrency: int,
                  cost: dict[str, float]) -> dict[str, Any]:
    before, logged_before = snapshot(pg, url), logged(fleet.urls)
    replicas_cpu, pg_cpu = cpu_by_pid([s.process.pid for s in fleet.servers]), cpu_by_pid([postmaster_pid(pg)])
    phase = load(fleet.urls, samples, concurrency)
    phase["cpu_ms_per_request"] = cpu_used(replicas_cpu, cpu_by_pid([s.process.pid for s in fleet.servers])) \
        / phase["requests"] * 1e3
    phase["postgres_cpu_ms_per_request"] = cpu_used(pg_cpu, cpu_by_pid([postmaster_pid(pg)])) / phase["requests"] * 1e3
    phase["connections"] = connections(pg, url)
    phase["all_rows_written"] = wait_logged(fleet.urls, logged_before + phase["requests"])
    after = snapshot(pg, url)
    phase["store"] = without(difference(after, before), cost)  # the `before` snapshot's own reads
    phase["window_total_rows"] = after["window_total.live"]
    phase["_after"], phase["_before"] = after, before  # for the idle interval between fleet phases
    return phase


def measure_sqlite(servers: list[Server], samples: list, concurrency: int) -> dict[str, Any]:
    cpu_before = cpu_by_pid([s.process.pid for s in servers])
    phase = load([s.url for s in servers], samples, concurrency)
    phase["cpu_ms_per_request"] = cpu_used(cpu_before, cpu_by_pid([s.process.pid for s in servers])) \
        / phase["requests"] * 1e3
    return phase


def compare_throughput(pg: Postgres, n: int, samples: list, warmup: list, per_replica: int,
                       rounds: int, cost: dict[str, float]) -> dict[str, Any]:
    """n fleet replicas and n SQLite servers, alive together; (fleet, SQLite, SQLite, fleet) x rounds."""
    url = create_database(pg, f"fleet_{n}")
    (LOGS / f"fleet-{n}").mkdir(parents=True, exist_ok=True)
    fleet = Fleet(n, url, env=BASE_ENV, log_dir=LOGS / f"fleet-{n}", startup_timeout=STARTUP_S)
    singles = [Server(env=BASE_ENV, log_path=LOGS / f"sqlite-{n}-{i}.log", startup_timeout=STARTUP_S)
               for i in range(n)]
    concurrency = per_replica * n
    with contextlib.ExitStack() as stack:
        progress(f"{n} replica(s): starting {n} fleet replica(s) and {n} SQLite server(s) ...")
        start_together(stack, [fleet, *singles])
        progress(f"{n} replica(s): warming up ({len(warmup)} requests each)")
        load(fleet.urls, warmup, concurrency)
        load([s.url for s in singles], warmup, concurrency)
        wait_logged(fleet.urls, len(warmup))
        phases = []
        for mode in ("fleet", "sqlite", "sqlite", "fleet") * rounds:
            phase = (measure_fleet(fleet, url, pg, samples, concurrency, cost) if mode == "fleet"
                     else measure_sqlite(singles, samples, concurrency))
            phases.append({"mode": mode, **phase})
            progress(f"{n} replica(s), {mode:<6}: {phase['requests_per_s'] / n:6.1f} req/s per replica, "
                     f"{phase['cpu_ms_per_request']:.2f} ms CPU/request, {phase['non_200']} non-200")
        # the exact check, once at the end: pg_stat_user_tables reports inserts asynchronously
        # (a backend flushes its counts about once a second), so per-phase deltas drift by a
        # flush; the table itself must hold one row per request the fleet answered
        sent = len(warmup) + sum(p["requests"] for p in phases if p["mode"] == "fleet")
        in_table = rows(url, "SELECT count(*) FROM predictions")[0][0]
        progress(f"{n} replica(s): stopping")
    result = summarize_throughput(n, phases, cost)
    store = result["store"]
    store["requests_sent_to_fleet"], store["rows_in_table"] = sent, in_table
    store["every_answer_logged"] = all(p["all_rows_written"] for p in phases if p["mode"] == "fleet") \
        and in_table == sent
    return result


def summarize_throughput(n: int, phases: list[dict[str, Any]], cost: dict[str, float]) -> dict[str, Any]:
    fleet = [p for p in phases if p["mode"] == "fleet"]
    sqlite = [p for p in phases if p["mode"] == "sqlite"]

    def rate(ps):  # requests/s per replica over all phases of one mode
        return sum(p["requests"] for p in ps) / sum(p["seconds"] for p in ps) / n

    def cpu(ps, key="cpu_ms_per_request"):
        return sum(p[key] * p["requests"] for p in ps) / sum(p["requests"] for p in ps)

    # the idle interval: from the first fleet phase's last snapshot to the second's first one
    idle = without(difference(fleet[1]["_before"], fleet[0]["_after"]), cost)
    idle_s = idle.pop("at")
    return {
        "replicas": n,
        "sqlite_requests_per_s_per_replica": rate(sqlite),
        "fleet_requests_per_s_per_replica": rate(fleet),
        "ratio_fleet_over_sqlite": rate(fleet) / rate(sqlite),
        # phases 1-2, 3-4, ...: a fleet and a SQLite phase that ran back to back
        "ratio_per_pair": pair_ratios(phases),
        "sqlite_cpu_ms_per_request": cpu(sqlite),
        "fleet_cpu_ms_per_request": cpu(fleet),
        "postgres_cpu_ms_per_request": cpu(fleet, "postgres_cpu_ms_per_request"),
        "non_200": sum(p["non_200"] for p in phases),
        "store": store_figures(n, fleet),
        "idle_store_per_replica_per_s": {k: idle[k] / idle_s / n for k in ("xact_commit", "tup_returned", "wal_bytes")},
        "idle_seconds": idle_s,
        "phases": [{k: v for k, v in p.items() if not k.startswith("_")} for p in phases],
    }


def pair_ratios(phases: list[dict[str, Any]]) -> list[float]:
    """fleet/SQLite requests/s of each two phases that ran back to back (the order is
    fleet, SQLite, SQLite, fleet, ...: every pair holds one of each)."""
    ratios = []
    for a, b in zip(phases[::2], phases[1::2]):
        fleet, sqlite = (a, b) if a["mode"] == "fleet" else (b, a)
        ratios.append(fleet["requests_per_s"] / sqlite["requests_per_s"])
    return ratios


def store_figures(n: int, fleet_phases: list[dict[str, Any]]) -> dict[str, Any]:
    """What the database did during the fleet phases, per second and per replica."""
    seconds = sum(p["seconds"] for p in fleet_phases)
    requests = sum(p["requests"] for p in fleet_phases)
    total = {k: sum(p["store"][k] for p in fleet_phases) for k in fleet_phases[0]["store"] if k != "at"}
    per_replica_s = {k: total[k] / seconds / n for k in (*DB_COUNTERS, "wal_bytes", "wal_records")}
    tables = {t: {"inserted_per_s": total.get(f"{t}.ins", 0.0) / seconds,
                  "updated_per_s": total.get(f"{t}.upd", 0.0) / seconds} for t in TABLES}
    return {
        "seconds": seconds,
        "requests": requests,
        "prediction_rows_written": total["predictions.ins"],
        "prediction_rows_per_s": total["predictions.ins"] / seconds,
        "predictions_bytes_per_row": total["predictions.bytes"] / max(total["predictions.ins"], 1),
        "wal_bytes_per_request": total["wal_bytes"] / max(requests, 1),
        "per_replica_per_s": per_replica_s,
        "tables_per_s": tables,
        # window_part holds one row per worker and bucket: its upserts are the buckets written
        "window_buckets_written_per_replica_per_s": (total.get("window_part.ins", 0.0)
                                                     + total.get("window_part.upd", 0.0)) / seconds / n,
        "window_buckets_live_at_end": fleet_phases[-1]["window_total_rows"],
        "connections_per_replica": fleet_phases[-1]["connections"],
    }


def window_layout() -> dict[str, Any]:
    """Counts per bucket of the default configuration's shared window, from the same
    MonitorSuite Engine._fleet_windows shares (the models' profiles, not the models)."""
    from core.config import Settings
    from monitors.reference import ReferenceProfile
    from monitors.suite import MonitorSuite
    from runtime.models import find_stored
    from runtime.monitor_pipeline import confusion_pairs, window_config
    from runtime.subgroups import SubgroupResolver
    from store.model_store import PROFILE_KEY

    settings = Settings()
    stored = [find_stored(tag) for tag in settings.models.tags()]
    profiles = [ReferenceProfile.from_dict(s.info.metadata[PROFILE_KEY]) for s in stored]
    window = window_config(settings.monitors)
    suite = MonitorSuite([s.tag.name for s in stored], profiles, SubgroupResolver(settings.subgroups.attributes).keys(),
                         confusion_pairs(settings.monitors), window, settings.monitors.regions)
    size = suite.vector_size()
    row = 8 * size + 8  # float8 counts and the bucket id, as FleetWindows.last counts them
    return {"counts_per_bucket": size, "bytes_per_bucket": row, "buckets_in_window": window.n_buckets,
            "bucket_seconds": window.bucket_s, "recompute_seconds": settings.monitors.recompute_seconds,
            "read_bytes_per_publish_full_window": window.n_buckets * row,
            "read_bytes_per_replica_per_s_full_window": window.n_buckets * row / settings.monitors.recompute_seconds}


def exchange_figures(layout: dict[str, Any], results: list[dict[str, Any]], db_sizes: list[int]) -> dict[str, Any]:
    """Measured window traffic per replica, from the buckets the replicas upserted and read."""
    row, every = layout["bytes_per_bucket"], layout["recompute_seconds"]
    out = {"counts_per_bucket_in_database": sorted(set(db_sizes))}
    for r in results:
        s = r["store"]
        written = s["window_buckets_written_per_replica_per_s"]
        out[str(r["replicas"])] = {
            "buckets_written_per_publish": written * every,
            "written_bytes_per_replica_per_s": written * row,
            "live_buckets_at_end": s["window_buckets_live_at_end"],
            "read_bytes_per_publish_at_end": s["window_buckets_live_at_end"] * row,
            "read_bytes_per_replica_per_s_at_end": s["window_buckets_live_at_end"] * row / every,
        }
    return out


# -- part 3: statistics --------------------------------------------------------------------------
def published(url: str, primary: str) -> dict[str, float]:
    """The statistics a replica exports for the representation monitor: window samples, events
    per capture (from the per-subgroup counts of the primary model's monitors), shares, scores."""
    s = promtext.scrape(url)

    def score(statistic: str, subgroup: str = "") -> float:
        return promtext.total(s, "classguard_monitor_score", monitor="representation", statistic=statistic,
                              subgroup=subgroup)

    def events(subgroup: str) -> float:
        return promtext.total(s, "classguard_monitor_window_samples", monitor="class_drift", model=primary,
                              subgroup=subgroup)

    return {"samples": promtext.total(s, "classguard_monitor_window_samples", monitor="representation", subgroup=""),
            "phone": events("capture=phone"), "scanner": events("capture=scanner"),
            "phone_share": score("share", "capture=phone"), "js_distance": score("js_distance"), "psi": score("psi")}


def fleet_statistics(fleet: Fleet, single: Server, samples: list, per_replica: int) -> dict[str, Any]:
    """The same stream through the fleet and through one process; every replica's published
    statistics against that process's and against what was sent."""
    from core.config import Settings

    primary = Settings().models.primary.split(":")[0]  # the model whose per-capture counts are compared
    sent = {"samples": len(samples), "phone": sum(s.capture == "phone" for s in samples),
            "scanner": sum(s.capture == "scanner" for s in samples)}
    progress(f"statistics: {len(samples)} requests through the fleet and through one process")
    answered = {"fleet": load(fleet.urls, samples, per_replica * len(fleet.urls)),
                "one process": load([single.url], samples, per_replica)}
    targets = {f"replica-{i}": u for i, u in enumerate(fleet.urls)} | {"one process": single.url}

    def settled(url: str) -> dict[str, Any]:
        """What `url` publishes once its window holds every request (workers publish every second)."""
        if wait_for(lambda: published(url, primary)["samples"] == len(samples), 20, 0.25):
            return published(url, primary)
        return {**published(url, primary), "timed_out": True}

    table = {name: settled(u) for name, u in targets.items()}
    reference = table["one process"]
    keys = ("samples", "phone", "scanner", "phone_share", "js_distance", "psi")
    equal = {name: all(np.isclose(p[k], reference[k], rtol=1e-9, atol=1e-12) for k in keys)
             and all(p[k] == sent[k] for k in sent) for name, p in table.items()}
    return {"sent": sent, "answered": answered, "published": table, "equal_to_one_process": equal}


# -- part 4: swap propagation ---------------------------------------------------------------------
def served_hash(url: str) -> set[str]:
    return promtext.label_values(promtext.scrape(url), "classguard_guardrail_config_info", "hash")


def seen_after(url: str, new_hash: str, started: float, timeout: float = 10.0) -> float | None:
    """Seconds from `started` until `url` exports `new_hash` (polled every 20 ms), None if never."""
    shown = wait_for(lambda: served_hash(url) == {new_hash}, timeout, 0.02)
    return time.monotonic() - started if shown else None


def swap_propagation(fleet: Fleet, url: str, swaps: int) -> dict[str, Any]:
    urls, delays, posts, missed = fleet.urls, [], [], 0
    # how long one scrape of /metrics takes: the resolution of the figures below
    scrapes = []
    for _ in range(10):
        began = time.monotonic()
        served_hash(urls[0])
        scrapes.append(time.monotonic() - began)
    progress(f"swaps: {swaps}, each through the next replica")
    pause = random.Random(SEED)
    for k in range(swaps):
        # a random pause first: swaps sent back to back would start at a fixed phase of the
        # replicas' 0.5 s sync timers (right after the slowest one polled) and bias every delay
        time.sleep(pause.uniform(0.0, 1.0))
        through = k % len(urls)
        started = time.monotonic()
        answer = httpx.post(f"{urls[through]}/admin/guardrails", json={"profile": PROFILES[k % 2]}, headers=AUTH,
                            timeout=30)
        posts.append(time.monotonic() - started)
        answer.raise_for_status()
        new_hash = answer.json()["hash"]
        others = [u for i, u in enumerate(urls) if i != through]
        # one poller per replica, so the second is not measured late by the first's scrape
        with ThreadPoolExecutor(len(others)) as pool:
            for delay in pool.map(lambda u: seen_after(u, new_hash, started), others):
                if delay is None:
                    missed += 1
                else:
                    delays.append(delay)
    history = rows(url, "SELECT id, replica, previous_id FROM guardrail_chain ORDER BY id")
    linked = all(later[2] == earlier[0] for earlier, later in zip(history, history[1:]))
    ms = np.array(delays) * 1e3
    return {"swaps": swaps, "observations": len(delays), "never_seen": missed,
            "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)), "max_ms": float(ms.max()),
            "post_p50_ms": statistics.median(posts) * 1e3, "post_max_ms": max(posts) * 1e3,
            "scrape_p50_ms": statistics.median(scrapes) * 1e3,
            "chain_rows": len(history), "chain_rows_linked": linked,
            "through_replicas": sorted({r[1] for r in history[-swaps:]}), "delays_ms": [round(d, 1) for d in ms]}


def statistics_and_swaps(pg: Postgres, per_replica: int, stats_requests: int, swaps: int) -> dict[str, Any]:
    url = create_database(pg, "fleet_stats")
    env = {**BASE_ENV, **FAST_PUBLISH}
    (LOGS / "fleet-stats").mkdir(parents=True, exist_ok=True)
    fleet = Fleet(3, url, env=env, log_dir=LOGS / "fleet-stats", startup_timeout=STARTUP_S)
    single = Server(env=env, log_path=LOGS / "one-process.log", startup_timeout=STARTUP_S)
    samples = traffic.stream(traffic.holdout_samples(), stats_requests, phone_share=PHONE_SHARE, seed=SEED + 1)
    with contextlib.ExitStack() as stack:
        progress("statistics and swaps: starting 3 fleet replicas (publishing every 1 s) and one process ...")
        start_together(stack, [fleet, single])
        stats = fleet_statistics(fleet, single, samples, per_replica)
        swap = swap_propagation(fleet, url, swaps)
        progress("statistics and swaps: stopping")
    return {"statistics": stats, "swaps": swap}


# -- the report ----------------------------------------------------------------------------------
def print_summary(report: dict[str, Any]) -> None:
    config = report["config"]
    print(f"\nfleet mode (PostgreSQL) vs the SQLite default, {report['machine']}; {config['requests_per_phase']} "
          f"requests per phase, {config['in_flight_per_replica']} in flight per replica, round-robin; "
          f"phases (fleet, SQLite, SQLite, fleet) x {config['rounds']}; target fleet/SQLite >= 0.9x")
    print(f"{'replicas':>8} {'SQLite r/s/rep':>15} {'fleet r/s/rep':>14} {'fleet/SQLite':>13} {'median pair':>12} "
          f"{'pairs':>24} {'CPU ms/req SQLite':>18} {'fleet':>6} {'+PostgreSQL':>12} {'non-200':>8}")
    for r in report["throughput"]:
        pairs = " ".join(f"{x:.2f}" for x in r["ratio_per_pair"])
        print(f"{r['replicas']:>8} {r['sqlite_requests_per_s_per_replica']:>15.1f} "
              f"{r['fleet_requests_per_s_per_replica']:>14.1f} {r['ratio_fleet_over_sqlite']:>12.2f}x "
              f"{statistics.median(r['ratio_per_pair']):>11.2f}x {pairs:>24} "
              f"{r['sqlite_cpu_ms_per_request']:>18.2f} {r['fleet_cpu_ms_per_request']:>6.2f} "
              f"{r['postgres_cpu_ms_per_request']:>12.2f} {r['non_200']:>8}")

    print("\nthe store during the fleet phases (per replica per second unless said)")
    print(f"{'replicas':>8} {'rows/s (all)':>12} {'logged all':>10} {'commits':>8} {'tup ins':>8} {'tup upd':>8} "
          f"{'tup ret':>8} {'tup fetch':>9} {'blks hit':>9} {'blks read':>9} {'WAL KB':>7} {'WAL B/req':>9} "
          f"{'B/row':>6} {'conns':>6} {'idle commits':>12}")
    for r in report["throughput"]:
        s, p = r["store"], r["store"]["per_replica_per_s"]
        conns = s["connections_per_replica"]
        print(f"{r['replicas']:>8} {s['prediction_rows_per_s']:>12.1f} {str(s['every_answer_logged']):>10} "
              f"{p['xact_commit']:>8.1f} {p['tup_inserted']:>8.1f} {p['tup_updated']:>8.1f} {p['tup_returned']:>8.0f} "
              f"{p['tup_fetched']:>9.0f} {p['blks_hit']:>9.0f} {p['blks_read']:>9.1f} {p['wal_bytes'] / 1e3:>7.1f} "
              f"{s['wal_bytes_per_request']:>9.0f} {s['predictions_bytes_per_row']:>6.0f} "
              f"{'/'.join(str(c) for c in conns.values()) or '-':>6} "
              f"{r['idle_store_per_replica_per_s']['xact_commit']:>12.1f}")
    print(f"{'replicas':>8}  table rows/s, whole fleet (inserted+updated): "
          + "  ".join(f"{t}" for t in TABLES))
    for r in report["throughput"]:
        t = r["store"]["tables_per_s"]
        print(f"{r['replicas']:>8}  " + "  ".join(f"{t[name]['inserted_per_s']:.1f}+{t[name]['updated_per_s']:.1f}"
                                                for name in TABLES))

    layout, exchange = report["window_layout"], report["window_exchange"]
    print(f"\nwindow exchange: {layout['counts_per_bucket']} counts per bucket (database rows hold "
          f"{exchange['counts_per_bucket_in_database']}), {layout['bytes_per_bucket']} B per bucket; a publish every "
          f"{layout['recompute_seconds']:g} s reads the live buckets: a full window ({layout['buckets_in_window']} "
          f"buckets) is {layout['read_bytes_per_publish_full_window'] / 1e3:.1f} KB per publish, "
          f"{layout['read_bytes_per_replica_per_s_full_window'] / 1e3:.1f} KB/s per replica")
    for r in report["throughput"]:
        e = exchange[str(r["replicas"])]
        print(f"  {r['replicas']} replica(s): {e['buckets_written_per_publish']:.1f} buckets written per publish = "
              f"{e['written_bytes_per_replica_per_s']:.0f} B/s per replica; {e['live_buckets_at_end']:.0f} live "
              f"buckets at the end = {e['read_bytes_per_publish_at_end'] / 1e3:.1f} KB read per publish "
              f"({e['read_bytes_per_replica_per_s_at_end'] / 1e3:.1f} KB/s per replica)")

    stats = report["statistics"]
    print(f"\nstatistics, 3 replicas vs one process: sent {stats['sent']['samples']} "
          f"({stats['sent']['phone']} phone, {stats['sent']['scanner']} scanner)")
    print(f"{'':<12} {'samples':>8} {'phone':>6} {'scanner':>8} {'phone share':>12} {'JS distance':>12} {'PSI':>10} "
          f"{'equal':>6}")
    for name, p in stats["published"].items():
        print(f"{name:<12} {p['samples']:>8.0f} {p['phone']:>6.0f} {p['scanner']:>8.0f} {p['phone_share']:>12.6f} "
              f"{p['js_distance']:>12.6f} {p['psi']:>10.6f} {str(stats['equal_to_one_process'][name]):>6}")

    sw = report["swaps"]
    print(f"\nswap propagation, 3 replicas: {sw['swaps']} swaps, {sw['observations']} observations "
          f"({sw['never_seen']} never seen): p50 {sw['p50_ms']:.0f} ms, p99 {sw['p99_ms']:.0f} ms, "
          f"max {sw['max_ms']:.0f} ms from the POST (POST itself p50 {sw['post_p50_ms']:.0f} ms, one scrape "
          f"p50 {sw['scrape_p50_ms']:.0f} ms); "
          f"{sw['chain_rows']} chain rows, linked: {sw['chain_rows_linked']}")
    print(f"took {report['seconds']:.0f} s; everything in {OUT}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--replicas", type=lambda s: [int(n) for n in s.split(",")], default=[1, 2, 3])
    parser.add_argument("--requests", type=int, default=2500, help="requests per measured phase (all replicas)")
    parser.add_argument("--rounds", type=int, default=2, help="(fleet, SQLite, SQLite, fleet) per replica count")
    parser.add_argument("--warmup", type=int, default=1000, help="requests per setup before measuring")
    parser.add_argument("--in-flight", type=int, default=8, help="requests in flight per replica")
    parser.add_argument("--stats-requests", type=int, default=900)
    parser.add_argument("--swaps", type=int, default=20)
    args = parser.parse_args(argv)
    from harness.postgres import server_bindir

    if server_bindir() is None:
        print("make bench-fleet needs PostgreSQL's server binaries: apt-get install postgresql", file=sys.stderr)
        return 2

    LOGS.mkdir(parents=True, exist_ok=True)
    layout = window_layout()  # also fails early, and clearly, when the models are not in BENTOML_HOME
    holdout = traffic.holdout_samples()
    samples = traffic.stream(holdout, args.requests, phone_share=PHONE_SHARE, seed=SEED)
    warmup = traffic.stream(holdout, args.warmup, phone_share=PHONE_SHARE, seed=SEED + 100)
    progress("starting PostgreSQL")
    with Postgres.start() as pg:
        cost = snapshot_cost(pg)
        results = [compare_throughput(pg, n, samples, warmup, args.in_flight, args.rounds, cost)
                   for n in args.replicas]
        sizes = [int(r[0]) for n in args.replicas
                 for r in rows(pg.url.rsplit("/", 1)[0] + f"/fleet_{n}",
                               "SELECT DISTINCT array_length(counts, 1) FROM window_total")]
        parts = statistics_and_swaps(pg, args.in_flight, args.stats_requests, args.swaps)
    report = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "config": {"requests_per_phase": args.requests, "rounds": args.rounds, "warmup": args.warmup,
                   "in_flight_per_replica": args.in_flight, "phone_share": PHONE_SHARE,
                   "stats_requests": args.stats_requests, "swaps": args.swaps},
        "snapshot_cost_subtracted": cost,
        "throughput": results,
        "window_layout": layout,
        "window_exchange": exchange_figures(layout, results, sizes),
        **parts,
        "seconds": time.monotonic() - STARTED,
    }
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps(report, indent=2) + "\n")
    print_summary(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
