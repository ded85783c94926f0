"""The prediction log: policy, bounded queue, retention, lookups, and several writers at once."""

import multiprocessing
import time

import numpy as np

from service.config import LogConfig
from service.prediction_log import PredictionLog, connect, get, query, summary


def response(i: int, *, flags=(), abstained=False, actions=("allow",), subgroup="capture=phone"):
    return {"request_id": f"r{i}", "label": None if abstained else "3", "confidence": 0.5, "abstained": abstained,
            "flags": list(flags), "guardrails": [{"guardrail": "g", "action": a, "reason": "x"} for a in actions],
            "top_k": [{"label": "3", "probability": 0.5}], "subgroup": {"capture": subgroup.split("=")[1]}}


def write(log, n, start=0, **kwargs):
    for i in range(start, start + n):
        log.record(response(i, **kwargs), np.full(10, 0.1), "hash1", "base:v1", kwargs.get("subgroup", "capture=phone"))
    log.flush()


def test_a_flush_of_any_size_writes_every_row_once_with_its_values(tmp_path):
    """Flushes of 1, 511 and 1,037 rows (multi-row INSERTs of 512 and powers of two) write each
    row exactly once, its columns in place."""
    log = PredictionLog(LogConfig(path=tmp_path / "p.sqlite"))
    start = 0
    for n in (1, 511, 1037):
        write(log, n, start=start)
        start += n
    conn = connect(tmp_path / "p.sqlite")
    assert conn.execute("SELECT COUNT(*), COUNT(DISTINCT request_id) FROM predictions").fetchone() == (start, start)
    one = get(conn, "r700")
    assert (one["label"], one["model"], one["model_version"], one["config_hash"]) == ("3", "base", "v1", "hash1")
    assert one["probs"] == [0.1] * 10 and one["top_k"] == [{"label": "3", "probability": 0.5}]


def test_flagged_rows_are_always_kept_and_sampling_is_deterministic(tmp_path):
    """mode=sampled keeps every flagged prediction and about `sample_share` of the rest."""
    log = PredictionLog(LogConfig(path=tmp_path / "p.sqlite", mode="sampled", sample_share=0.2))
    write(log, 1000)
    write(log, 50, start=5000, flags=["low_confidence"])
    write(log, 50, start=6000, actions=("abstain",), abstained=True)
    conn = connect(tmp_path / "p.sqlite")
    kept = conn.execute("SELECT COUNT(*) FROM predictions WHERE flagged = 0").fetchone()[0]
    assert 150 < kept < 250
    assert conn.execute("SELECT COUNT(*) FROM predictions WHERE flagged = 1").fetchone()[0] == 100


def test_full_queue_drops_without_blocking(tmp_path):
    """With room for 10 rows, 25 records return at once and only 10 are written."""
    log = PredictionLog(LogConfig(path=tmp_path / "p.sqlite", queue_size=10))
    started = time.perf_counter()
    for i in range(25):
        log.record(response(i), np.zeros(10), "h", "base:v1", "capture=phone")
    assert time.perf_counter() - started < 0.5
    assert log.flush() == 10


def test_retention_by_age_and_count(tmp_path):
    """Rows older than retention_days go; beyond max_rows the oldest go."""
    log = PredictionLog(LogConfig(path=tmp_path / "p.sqlite", max_rows=100, retention_days=1,
                                  retention_check_seconds=0.001))
    write(log, 300)
    conn = connect(tmp_path / "p.sqlite")
    assert conn.execute("SELECT COUNT(*) FROM predictions").fetchone()[0] == 100
    assert conn.execute("SELECT MIN(request_id) FROM predictions").fetchone()[0] >= "r200"
    log.flush(now=time.time() + 2 * 86400)
    assert conn.execute("SELECT COUNT(*) FROM predictions").fetchone()[0] == 0


def test_lookups_filter_and_show_one_trace(tmp_path):
    """Filters by subgroup, flag and guardrail action; one request's full record with probabilities."""
    log = PredictionLog(LogConfig(path=tmp_path / "p.sqlite"))
    write(log, 20, subgroup="capture=scanner")
    write(log, 5, start=100, flags=["known_confusion:6->0"])
    write(log, 3, start=200, actions=("suppress", "abstain"), abstained=True)
    conn = connect(tmp_path / "p.sqlite")
    assert len(query(conn, subgroup="capture=scanner")) == 20
    assert {r["request_id"] for r in query(conn, flag="known_confusion:6->0")} == {f"r{i}" for i in range(100, 105)}
    assert len(query(conn, action="abstain")) == 3 and len(query(conn, flagged_only=True)) == 8
    one = get(conn, "r201")
    assert one["abstained"] and one["guardrails"][0]["action"] == "suppress" and len(one["probs"]) == 10
    assert get(conn, "nope") is None
    counts = {(r["subgroup"], r["flag"]): r["count"] for r in summary(conn, since=0)}
    assert counts[("capture=phone", "known_confusion:6->0")] == 5 and counts[("capture=scanner", "(none)")] == 20


def _writer(path, start):
    log = PredictionLog(LogConfig(path=path))
    for batch in range(10):
        write(log, 100, start=start + batch * 100)


def test_several_processes_write_one_consistent_log(tmp_path):
    """Four processes writing 1,000 rows each at once: all 4,000 rows land, none twice."""
    path = tmp_path / "p.sqlite"
    connect(path).close()
    procs = [multiprocessing.get_context("spawn").Process(target=_writer, args=(path, k * 10_000)) for k in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    conn = connect(path)
    assert conn.execute("SELECT COUNT(*), COUNT(DISTINCT request_id) FROM predictions").fetchone() == (4000, 4000)


def _open_fresh(path, barrier) -> None:
    barrier.wait()
    connect(path).close()


def test_workers_opening_a_new_log_at_the_same_instant_all_start(tmp_path):
    """Eight processes released together onto a log file that does not exist yet (workers
    starting side by side): each switches it to WAL and creates the schema without failing."""
    for attempt in range(3):
        path = tmp_path / f"fresh{attempt}.sqlite"
        ctx = multiprocessing.get_context("fork")
        barrier = ctx.Barrier(8)
        procs = [ctx.Process(target=_open_fresh, args=(path, barrier)) for _ in range(8)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(60)
        assert [p.exitcode for p in procs] == [0] * 8
        assert connect(path).execute("PRAGMA journal_mode").fetchone() == ("wal",)
