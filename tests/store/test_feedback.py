"""Feedback joins true labels with logged answers: each item judged alone, one transaction,
metrics moved only once it committed, and concurrent posts for one answer never fail."""

import sqlite3

import numpy as np
import pytest
from prometheus_client import REGISTRY

from core.config import LogConfig
from store import feedback
from store.clock import store_now
from store.prediction_log import PredictionLog, connect
from tests.log_rows import record_one
from tests.waiting import together

LABELS = {"base": [str(d) for d in range(10)]}
LONG_AGO = "0" * 12 + "7000" + "8" + "0" * 15  # a service id minted in 1970: its answer will never arrive


def counted() -> float:
    return sum(REGISTRY.get_sample_value("classguard_feedback_total", {"model": "base", "subgroup": "capture=phone",
                                                                        "outcome": o}) or 0.0
               for o in ("correct", "wrong", "abstained"))


@pytest.fixture
def db(tmp_path):
    path = tmp_path / "p.sqlite"
    log = PredictionLog(LogConfig(path=path))
    for i in range(50):
        record_one(log, {"request_id": f"r{i}", "correlation_id": "shared" if i < 2 else f"c{i}", "label": "3",
                         "confidence": 0.5, "abstained": False, "flags": [], "guardrails": [], "top_k": []},
                   np.full(10, 0.1), "h", "base:v1", "capture=phone")
    log.flush()
    return path


def test_each_item_gets_its_own_result(db):
    """recorded, duplicate, conflict, unknown, bad label, invalid id, ambiguous and by-correlation items in one post."""
    conn = connect(db)
    items = [("r5", "3"), ("r5", "3"), ("r5", "4"), (LONG_AGO, "3"), ("r6", "zero"), ("\ud800", "3"),
             ("shared", "3"), ("c7", "2")]
    results = feedback.record(conn, items, LABELS, [])
    assert [r["result"] for r in results] == ["recorded", "duplicate", "conflict", "unknown_request",
                                              "unknown_label", "invalid_request_id", "ambiguous_request_id", "recorded"]
    assert results[5]["request_id"] is None and "r0" in results[6]["detail"] and "r1" in results[6]["detail"]
    assert results[7]["request_id"] == "r7" and results[7]["correlation_id"] == "c7"


class FailingConnection:
    """A real connection whose third feedback insert fails, as a disk error would."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn, self.inserts = conn, 0

    def execute(self, sql, args=()):
        if sql.startswith("INSERT INTO feedback"):
            self.inserts += 1
            if self.inserts == 3:
                raise sqlite3.OperationalError("disk I/O error")
        return self.conn.execute(sql, args)

    def transaction(self, **kwargs):
        return self.conn.transaction(**kwargs)

    def commit(self):
        self.conn.commit()

    def rollback(self):
        self.conn.rollback()


def test_a_batch_that_fails_part_way_moves_no_metric(db):
    """The third of four inserts fails: the batch is rolled back, and no feedback metric moved."""
    conn = connect(db)
    before = counted()
    with pytest.raises(sqlite3.OperationalError):
        feedback.record(FailingConnection(conn), [(f"r{i}", "3") for i in range(10, 14)], LABELS, [])
    assert counted() == before
    assert conn.execute("SELECT COUNT(*) FROM feedback").fetchone()[0] == 0
    assert {r["result"] for r in feedback.record(conn, [(f"r{i}", "3") for i in range(10, 14)], LABELS, [])} == {"recorded"}
    assert counted() == before + 4


def test_concurrent_posts_for_one_answer_are_each_recorded_or_duplicate(db):
    """8 threads, each on its own connection, post the same labels for 40 answers at once: no error,
    exactly one `recorded` per answer, every other answer a `duplicate`, counted once."""
    before = counted()

    def post():
        conn = connect(db)
        return [r for i in range(10, 50) for r in feedback.record(conn, [(f"r{i}", "3")], LABELS, [])]

    posts, errors = together(8, post)
    results = [r for p in posts for r in p]
    assert not errors
    assert sum(r["result"] == "recorded" for r in results) == 40
    assert sum(r["result"] == "duplicate" for r in results) == 7 * 40
    assert counted() == before + 40


def estimated() -> float:
    return REGISTRY.get_sample_value("classguard_feedback_estimated_total",
                                     {"model": "base", "subgroup": "capture=scanner"}) or 0.0


def test_labels_add_what_the_published_estimate_said_of_their_answers(tmp_path):
    """Each answer labelled correct or wrong adds its published-estimate credit (1 above its
    subgroup's ATC threshold, else 0) to classguard_feedback_estimated_total, the labels joined
    later from the hold too; an abstained answer adds nothing; so do models without an estimate."""
    from monitors.estimates import PublishedEstimate

    path = tmp_path / "p.sqlite"
    log = PredictionLog(LogConfig(path=path))
    peaks = [0.9, 0.2, 0.8, 0.95, 0.7, 0.85]  # above / below the threshold 0.5 at T = 1
    for i, peak in enumerate(peaks):
        probs = np.full(10, (1 - peak) / 9)
        probs[3] = peak
        record_one(log, {"request_id": f"e{i}", "correlation_id": None, "label": None if i == 5 else "3",
                         "confidence": peak, "abstained": i == 5, "flags": [], "guardrails": [], "top_k": []},
                   probs, "h", "base:v1", "capture=scanner")
    log.flush()
    estimates = {"base": PublishedEstimate(1.0, {"all": 0.5})}
    before = estimated()
    feedback.record(connect(path), [("e0", "3"), ("e1", "3"), ("e2", "4"), ("e5", "3")], LABELS, [],
                    estimates=estimates)
    assert estimated() - before == 2.0  # e0 and e2 above the threshold; e1 below; e5 abstained
    feedback.record(connect(path), [("e3", "3")], LABELS, [])  # no estimates given: nothing added
    assert estimated() - before == 2.0
    conn = connect(path)
    with conn.transaction():
        conn.execute("INSERT INTO held_feedback (key, label, ts) VALUES ('e4', '3', ?)", (store_now(conn),))
    feedback.join_held(conn, LABELS, [], estimates=estimates)
    assert estimated() - before == 3.0  # e4 (0.7) joined from the hold, above the threshold
    assert REGISTRY.get_sample_value("classguard_feedback_total", {"model": "base", "subgroup": "capture=scanner",
                                                                   "outcome": "correct"}) >= 3
