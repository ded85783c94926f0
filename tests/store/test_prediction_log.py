"""The prediction log: policy, bounded queue, retention, lookups, and several writers at once."""

import multiprocessing
import time

import numpy as np
import pytest

from core.config import LogConfig
from store.database import PostgresDatabase
from store.prediction_log import PredictionLog, connect, get, query, summary
from tests.log_rows import record_one


def response(i: int, *, flags=(), abstained=False, actions=("allow",), subgroup="capture=phone"):
    return {"request_id": f"r{i}", "label": None if abstained else "3", "confidence": 0.5, "abstained": abstained,
            "flags": list(flags), "guardrails": [{"guardrail": "g", "action": a, "reason": "x"} for a in actions],
            "top_k": [{"label": "3", "probability": 0.5}], "subgroup": {"capture": subgroup.split("=")[1]}}


def write(log, n, start=0, **kwargs):
    for i in range(start, start + n):
        record_one(log, response(i, **kwargs), np.full(10, 0.1), "hash1", "base:v1",
                   kwargs.get("subgroup", "capture=phone"))
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
        record_one(log, response(i), np.zeros(10), "h", "base:v1", "capture=phone")
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


def test_retention_takes_feedback_with_its_predictions(tmp_path):
    """max_rows=200 over 5 rounds of 200 answers, each given feedback: 200 predictions and their 200
    feedback rows remain, no orphan; an id seen again after its row aged out takes its label."""
    from store import feedback

    log = PredictionLog(LogConfig(path=tmp_path / "p.sqlite", max_rows=200, retention_check_seconds=0.001))
    conn = connect(tmp_path / "p.sqlite")
    for round_ in range(5):
        write(log, 200, start=round_ * 200)
        items = [(f"r{i}", "3") for i in range(round_ * 200, round_ * 200 + 200)]
        assert {r["result"] for r in feedback.record(conn, items, {"base": ["3", "5"]}, [])} == {"recorded"}
        time.sleep(0.002)
    log.flush()
    assert conn.execute("SELECT COUNT(*) FROM predictions").fetchone()[0] == 200
    assert conn.execute("SELECT COUNT(*) FROM feedback").fetchone()[0] == 200
    assert conn.execute("SELECT COUNT(*) FROM feedback WHERE request_id NOT IN "
                        "(SELECT request_id FROM predictions)").fetchone()[0] == 0
    write(log, 1, start=0)  # r0 again, long after its first row went
    assert feedback.record(conn, [("r0", "5")], {"base": ["3", "5"]}, [])[0]["result"] == "recorded"


def test_a_log_file_deleted_while_serving_is_recreated_and_written(tmp_path):
    """Deleting the SQLite file between flushes: the next flush writes to a new file at the same path,
    so the rows after it are findable and none is counted as written into the deleted file."""
    path = tmp_path / "p.sqlite"
    log = PredictionLog(LogConfig(path=path))
    write(log, 100)
    for suffix in ("", "-wal", "-shm"):
        (tmp_path / f"p.sqlite{suffix}").unlink(missing_ok=True)
    write(log, 100, start=100)
    conn = connect(path)
    assert conn.execute("SELECT COUNT(*), MIN(request_id) FROM predictions").fetchone() == (100, "r100")


def test_an_older_log_is_migrated_in_place(tmp_path):
    """A log written before correlation ids and regions gains the columns and loses feedback orphaned by
    old retention."""
    import sqlite3

    path = tmp_path / "old.sqlite"
    old = sqlite3.connect(path)
    old.executescript("""
        CREATE TABLE predictions (request_id TEXT PRIMARY KEY, ts REAL NOT NULL, subgroup TEXT NOT NULL,
            model TEXT NOT NULL, model_version TEXT NOT NULL, label TEXT, abstained INTEGER NOT NULL,
            confidence REAL NOT NULL, flagged INTEGER NOT NULL, flags TEXT NOT NULL, guardrails TEXT NOT NULL,
            top_k TEXT NOT NULL, probs BLOB NOT NULL, config_hash TEXT NOT NULL, image_sha256 TEXT);
        CREATE TABLE feedback (request_id TEXT PRIMARY KEY, label TEXT NOT NULL, ts REAL NOT NULL);
        INSERT INTO predictions VALUES ('a', 1, 's', 'm', 'v', '1', 0, 0.9, 0, '[]', '[]', '[]', x'', 'h', NULL);
        INSERT INTO feedback VALUES ('a', '1', 2), ('gone', '1', 2);
    """)
    old.commit()
    old.close()
    conn = connect(path)
    assert [r[0] for r in conn.execute("SELECT request_id FROM feedback")] == ["a"]
    assert get(conn, "a")["correlation_id"] is None and get(conn, "a")["region"] is None
    assert query(conn, correlation_id="x") == [] and query(conn, region="r01") == []


def test_pages_continue_after_the_last_row_seen(tmp_path):
    """query(before=the last id of a page) continues with the next older rows, none twice."""
    log = PredictionLog(LogConfig(path=tmp_path / "p.sqlite"))
    write(log, 250)
    conn = connect(tmp_path / "p.sqlite")
    seen, before = [], None
    while True:
        page = query(conn, limit=100, before=before)
        seen += [r["request_id"] for r in page]
        if len(page) < 100:
            break
        before = page[-1]["request_id"]
    assert len(seen) == len(set(seen)) == 250


def test_since_refuses_what_is_not_a_finite_time():
    """`nan`, `inf`, `1e999` and `infm` are refused like any other bad value, not read as no bound."""
    import pytest

    from store.prediction_log import parse_since

    for text in ("nan", "inf", "1e999", "infm", "15x", ""):
        with pytest.raises(ValueError, match="15m, 2h"):
            parse_since(text)
    assert parse_since("15m", now=1000.0) == 100.0


@pytest.mark.parametrize("limit", [-1, 0, 2.5, True])
def test_a_lookup_limit_below_one_is_refused_on_either_engine(database, limit):
    """query() and the chain history refuse a limit that is not a whole number >= 1 with a
    ValueError, on SQLite (which reads every row for LIMIT -1) and PostgreSQL (which raises)."""
    from store.chain_store import FleetChainStore
    from store.prediction_log import query

    PredictionLog(LogConfig(), database).flush()  # the store's tables
    with pytest.raises(ValueError, match="limit must be a whole number of at least 1"):
        database.read(query, limit=limit)
    if isinstance(database, PostgresDatabase):
        with pytest.raises(ValueError, match="limit must be a whole number of at least 1"):
            FleetChainStore(database, "r1").history(limit)
