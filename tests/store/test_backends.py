"""One store interface, two engines: the same log, lookup and feedback behaviour on SQLite and on
a real PostgreSQL (harness.postgres), and the fleet-only parts (held labels across writers,
the shared chain, shared monitor windows) against PostgreSQL."""

import time

import numpy as np
import pytest
from prometheus_client import REGISTRY

from core.config import LogConfig
from store import feedback
from store.database import PostgresDatabase, StoreUnavailable
from store.prediction_log import PredictionLog, find, get, query, summary
from tests.log_rows import record_one
from tests.waiting import together

LABELS = {"base": [str(d) for d in range(10)]}


def response(i, *, flags=(), actions=("allow",), correlation=None):
    return {"request_id": f"r{i}", "correlation_id": correlation, "label": "3", "confidence": 0.5,
            "abstained": False, "flags": list(flags), "top_k": [{"label": "3", "probability": 0.5}],
            "guardrails": [{"guardrail": "g", "action": a, "reason": "x"} for a in actions]}


def held(outcome):
    return REGISTRY.get_sample_value("classguard_feedback_held_total", {"outcome": outcome}) or 0.0


def test_log_lookups_answer_the_same_on_both_engines(database):
    """Rows written in two flushes are found by id and correlation id, filtered by subgroup, flag
    and guardrail action, paged with `before`, and summarised per flag, on either engine."""
    log = PredictionLog(LogConfig(), database, replica="replica-a")
    for i in range(20):
        record_one(log, response(i, correlation="c1" if i == 4 else None), np.full(10, 0.1), "h", "base:v1",
                   "capture=scanner" if i % 2 else "capture=phone")
    log.flush()
    for i in range(20, 25):
        record_one(log, response(i, flags=["known_confusion:6->0"], actions=("suppress",)), np.full(10, 0.1), "h",
                   "base:v1", "capture=phone")
    assert log.flush() == 5
    conn = database.connect()
    assert get(conn, "r3")["replica"] == "replica-a" and get(conn, "r3")["probs"] == [0.1] * 10
    assert [r["request_id"] for r in find(conn, "c1")] == ["r4"]
    assert len(query(conn, subgroup="capture=scanner", limit=100)) == 10
    assert {r["request_id"] for r in query(conn, flag="known_confusion:6->0")} == {f"r{i}" for i in range(20, 25)}
    assert len(query(conn, action="suppress")) == 5 and len(query(conn, flagged_only=True)) == 5
    first = query(conn, limit=10)
    second = query(conn, limit=10, before=first[-1]["request_id"])
    assert len({r["request_id"] for r in first + second}) == 20
    counts = {(r["subgroup"], r["flag"]): r["count"] for r in summary(conn, 0)}
    assert counts[("capture=phone", "known_confusion:6->0")] == 5 and counts[("capture=scanner", "(none)")] == 10


def test_a_label_before_its_answer_is_held_then_joined(database):
    """A label for an answer not written yet answers `held` (202); the flush that writes the
    answer joins it (recorded, counted); a second label for it is then a duplicate."""
    from core.ids import time_ordered_id

    log = PredictionLog(LogConfig(), database)
    log.after_write = lambda conn: feedback.join_held(conn, LABELS, [])
    rid = time_ordered_id()
    before = held("joined")
    [result] = database.read(feedback.record, [(rid, "3")], LABELS, [])
    assert (result["result"], result["status"]) == ("held", 202)
    record_one(log, {**response(0), "request_id": rid}, np.full(10, 0.1), "h", "base:v1", "capture=phone")
    log.flush()
    assert held("joined") == before + 1
    [again] = database.read(feedback.record, [(rid, "3")], LABELS, [])
    assert again["result"] == "duplicate"


def test_held_labels_are_bounded_and_expire(database):
    """Past `most` held labels the next is refused with 503 `hold_full`; held labels older than
    the hold are dropped at the next join and counted; an id minted before the hold is a 404 at once."""
    from core.ids import time_ordered_id

    database.prepare()  # the schema, as a serving replica finds it at start
    hold = feedback.Hold(seconds=60, most=3)
    ids = [time_ordered_id() for _ in range(4)]
    results = database.read(feedback.record, [(i, "3") for i in ids], LABELS, [], hold)
    # PostgreSQL takes items in key order (two posts then lock rows in one order): which item of
    # a batch finds the hold full follows that order there
    assert sorted(r["result"] for r in results) == ["held"] * 3 + ["hold_full"]
    assert {r["status"] for r in results if r["result"] == "hold_full"} == {503}
    expired = held("expired")
    out = database.read(feedback.join_held, LABELS, [], hold, time.time() + 61)
    assert out["expired"] == 3 and held("expired") == expired + 3
    old = "0" * 12 + "7000" + "8" + "0" * 15
    assert database.read(feedback.record, [(old, "3")], LABELS, [], hold)[0]["result"] == "unknown_request"


def test_feedback_for_one_answer_from_many_writers_is_recorded_once(database):
    """8 threads on their own connections post the same labels for 30 answers at once: one
    `recorded` each, every other a `duplicate`, no error."""
    log = PredictionLog(LogConfig(), database)
    for i in range(30):
        record_one(log, response(i), np.full(10, 0.1), "h", "base:v1", "capture=phone")
    log.flush()
    posts, errors = together(8, lambda: [r for i in range(30)
                                         for r in database.read(feedback.record, [(f"r{i}", "3")], LABELS, [])])
    results = [r for post in posts for r in post]
    assert not errors
    assert sum(r["result"] == "recorded" for r in results) == 30
    assert sum(r["result"] == "duplicate" for r in results) == 7 * 30


def test_replicas_migrating_together_create_the_schema_once(pg_url):
    """12 replicas allowed to migrate (fleet.migrate) start on an empty database at the same
    moment: every one starts, and each version is applied once."""
    _, errors = together(12, lambda: PostgresDatabase(pg_url, replica="r", migrate=True).prepare())
    assert not errors
    conn = PostgresDatabase(pg_url, replica="r").connect()
    assert conn.execute("SELECT version FROM classguard_schema ORDER BY version").fetchall() == [(1,), (2,), (3,), (4,)]


def test_log_rows_wait_out_an_outage_and_are_all_written(postgres, pg_url):
    """With the server stopped, flushes write nothing and keep every row queued (counted as write
    errors), the log says it is failing, and a lookup says the store is unavailable; once it is
    back, one flush writes them all and the log is no longer failing."""
    db = PostgresDatabase(pg_url, replica="r", connect_timeout=1, migrate=True)
    db.prepare()
    log = PredictionLog(LogConfig(queue_size=1000), db)
    postgres.stop()
    try:
        for i in range(300):
            record_one(log, response(i), np.full(10, 0.1), "h", "base:v1", "capture=phone")
        assert log.flush() == 0 and log.flush() == 0
        assert log.queued == 300 and log.failing  # what POST /feedback checks to refuse at once
        with pytest.raises(StoreUnavailable):
            log.read(get, "r1")
    finally:
        postgres.resume()
    assert log.flush() == 300 and not log.failing
    assert db.read(lambda c: c.execute("SELECT COUNT(*) FROM predictions").fetchone()[0]) == 300


def test_a_lookup_right_after_a_database_restart_is_answered(postgres, pg_url):
    """A reader connection kept idle across a restart of the server is replaced on the spot: the
    first lookup after the restart is answered, not a 503 (a pool that backs off had taken 27 s)."""
    db = PostgresDatabase(pg_url, replica="r", connect_timeout=1, migrate=True)
    db.prepare()
    count = lambda conn: conn.execute("SELECT COUNT(*) FROM predictions").fetchone()[0]  # noqa: E731
    assert db.read(count) == 0  # leaves an idle reader connection behind
    postgres.stop()
    postgres.resume()
    assert db.read(count) == 0


def test_retention_keeps_the_newest_rows_and_their_feedback_only(database):
    """max_rows=100: of 300 rows only the newest 100 remain on either engine; the feedback of a
    deleted answer goes with it, a kept answer's stays."""
    log = PredictionLog(LogConfig(max_rows=100, retention_check_seconds=1e-6), database)
    for i in range(300):
        record_one(log, response(i), np.full(10, 0.1), "h", "base:v1", "capture=phone")
    log.flush(retention=False)
    database.read(feedback.record, [("r0", "3"), ("r250", "3")], LABELS, [])
    log.flush()
    count = lambda conn, table: conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]  # noqa: E731
    assert database.read(count, "predictions") == 100
    assert database.read(lambda conn: conn.execute("SELECT request_id FROM feedback").fetchall()) == [("r250",)]


def test_a_held_label_is_held_once_and_a_different_one_is_a_conflict(database):
    """The same early label twice: held both times, counted once; another label for it: 409
    `conflict`; a label no loaded model knows: 422 at once (it would wait only to be dropped)."""
    database.prepare()
    before = held("held")
    results = database.read(feedback.record, [("client-7", "3"), ("client-7", "3"), ("client-7", "4"),
                                              ("client-8", "cat")], LABELS, [])
    assert [r["result"] for r in results] == ["held", "held", "conflict", "unknown_label"]
    assert held("held") == before + 1


def test_a_label_for_a_model_this_replica_lacks_waits_for_one_that_has_it(database):
    """Mid rollout: an answer by a model replica A does not load. A label posted to A is held,
    not refused; A's join leaves it; B, which loads the model, joins it."""
    log = PredictionLog(LogConfig(), database)
    record_one(log, response(1), np.full(10, 0.1), "h", "newer:v2", "capture=phone")
    log.flush()
    a_labels, b_labels = LABELS, {**LABELS, "newer": [str(d) for d in range(10)]}
    [result] = database.read(feedback.record, [("r1", "3")], a_labels, [])
    assert result["result"] == "held"
    assert database.read(feedback.join_held, a_labels, []) == {"joined": 0, "expired": 0, "rejected": 0}
    assert database.read(feedback.join_held, b_labels, [])["joined"] == 1


def test_with_holding_off_an_unknown_id_is_a_404(database):
    """log.mode sampled or flagged turns holding off (an answer may never be written): a
    correlation id not in the log is a plain 404."""
    database.prepare()
    [result] = database.read(feedback.record, [("client-9", "3")], LABELS, [], feedback.Hold(seconds=0))
    assert (result["result"], result["status"]) == ("unknown_request", 404)


def test_every_idle_reader_is_replaced_after_a_restart(postgres, pg_url):
    """Two idle reader connections, both dead after a restart: the next lookup is answered on a
    fresh connection (the check finds the first dead one and drops the other with it)."""
    db = PostgresDatabase(pg_url, replica="r", connect_timeout=1, migrate=True)
    db.prepare()
    count = lambda conn: conn.execute("SELECT COUNT(*) FROM predictions").fetchone()[0]  # noqa: E731
    assert db.read(lambda conn: (count(conn), db.read(count))) == (0, 0)  # two borrowed at once
    assert len(db._idle) == 2
    postgres.stop()
    postgres.resume()
    assert db.read(count) == 0 and len(db._idle) == 1


def test_two_replicas_joining_at_once_join_each_label_once(database):
    """200 early labels, then their answers written; two joiners (two replicas' flushes) run at
    once: every label is joined exactly once between them, each counted once, no error."""
    from core.ids import time_ordered_id

    database.prepare()
    ids = [time_ordered_id() for _ in range(200)]
    assert {r["result"] for r in database.read(feedback.record, [(i, "3") for i in ids], LABELS, [])} == {"held"}
    log = PredictionLog(LogConfig(), database)
    for i in ids:
        record_one(log, {**response(0), "request_id": i}, np.full(10, 0.1), "h", "base:v1", "capture=phone")
    log.flush()
    outcomes, errors = together(2, lambda: database.read(feedback.join_held, LABELS, []))
    assert not errors
    assert sum(o.get("joined", 0) for o in outcomes) == 200
    assert database.read(lambda conn: conn.execute("SELECT COUNT(*) FROM feedback").fetchone()[0]) == 200
