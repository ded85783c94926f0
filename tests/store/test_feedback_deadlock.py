"""Feedback posts that lock the same answers from two replicas at once, on a real PostgreSQL:
they queue or run again, and never answer as if the store were away."""

import threading

import numpy as np
from prometheus_client import REGISTRY

from core.config import LogConfig
from store import feedback, sql_postgres
from store.database import PostgresDatabase
from store.prediction_log import PredictionLog
from tests.log_rows import record_one

LABELS = {"base": [str(d) for d in range(10)]}


def log_answers(database, ids, correlation=lambda n: None):
    log = PredictionLog(LogConfig(), database, replica="r0")
    for n, rid in enumerate(ids):
        record_one(log, {"request_id": rid, "correlation_id": correlation(n), "label": "3", "confidence": 0.5,
                         "abstained": False, "flags": [], "guardrails": [], "top_k": []},
                   np.full(10, 0.1), "h", "base:v1", "capture=phone")
    assert log.flush() == len(ids)


def posts_at_once(replicas, first, second):
    """Replica 0 posts `first` and replica 1 `second` at the same moment; (each post's results,
    what each raised)."""
    start, results, errors = threading.Barrier(2), [None, None], []

    def post(i, items):
        start.wait()
        try:
            results[i] = replicas[i].read(feedback.record, items, LABELS, [])
        except Exception as exc:  # noqa: BLE001 - asserted on below
            errors.append(exc)

    threads = [threading.Thread(target=post, args=(i, items)) for i, items in enumerate((first, second))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results, errors


def test_two_posts_of_the_same_answers_in_opposite_orders_never_deadlock(pg_url):
    """Two replicas post labels for the same 400 answers in opposite orders at once, 6 rounds:
    never an error (the old code deadlocked and answered 503 in every round), each answer
    recorded exactly once and reported a duplicate to the other post."""
    replicas = [PostgresDatabase(pg_url, replica=f"r{i}") for i in range(2)]
    replicas[0].migrate()
    for round_ in range(6):
        ids = [f"q{round_}-{i:04d}" for i in range(400)]
        log_answers(replicas[0], ids)
        items = [(rid, "3") for rid in ids]
        (first, second), errors = posts_at_once(replicas, items, items[::-1])
        assert errors == []
        outcomes = [(a["result"], b["result"]) for a, b in zip(first, second[::-1])]
        assert all(sorted(pair) == ["duplicate", "recorded"] for pair in outcomes), round_
        assert [r["request_id"] for r in first] == ids  # results in the order the items came


def test_a_deadlock_between_request_ids_and_correlation_ids_is_run_again_alone(pg_url):
    """One post names 300 answers by request id, the other by client correlation ids that sort
    in the opposite order, so key order cannot order their writes and PostgreSQL aborts one as
    deadlocked: it runs again holding the feedback lock alone, and both posts answer, each
    answer recorded exactly once (the old code answered one of them 503 `store_unavailable`)."""
    replicas = [PostgresDatabase(pg_url, replica=f"r{i}") for i in range(2)]
    replicas[0].migrate()
    retries = REGISTRY.get_sample_value("classguard_feedback_write_retries_total") or 0.0
    for round_ in range(3):
        ids = [f"k{round_}-{n:04d}" for n in range(300)]
        log_answers(replicas[0], ids, correlation=lambda n: f"c{round_}-{299 - n:04d}")
        by_id = [(rid, "3") for rid in ids]
        by_correlation = [(f"c{round_}-{n:04d}", "3") for n in range(300)]
        (first, second), errors = posts_at_once(replicas, by_id, by_correlation)
        assert errors == []
        assert sum(r["result"] == "recorded" for r in first + second) == 300, round_
        assert {r["result"] for r in first + second} == {"recorded", "duplicate"}
    assert (REGISTRY.get_sample_value("classguard_feedback_write_retries_total") or 0.0) > retries


def test_write_conflicts_are_the_errors_postgresql_aborts_a_racing_transaction_with():
    """Deadlocks and serialization failures are retried; a connection failure is not among them."""
    import psycopg

    conflicts = sql_postgres.write_conflicts()
    assert issubclass(psycopg.errors.DeadlockDetected, conflicts)
    assert not issubclass(psycopg.OperationalError, conflicts)
