"""A replica whose clock is wrong, on a real PostgreSQL: the fleet's windows, held labels,
retention and swaps stay correct for the others, and the skew is measured. A replica's clock is
shifted as a host's would be, by moving time.time/time.time_ns of this process while it acts
(what the live fleet test does with a sitecustomize)."""

from __future__ import annotations

import time
from contextlib import contextmanager

import numpy as np
import pytest
from prometheus_client import REGISTRY

from core import clock
from core.config import LogConfig, MonitorsConfig
from core.ids import time_ordered_id
from runtime.monitor_pipeline import MonitorPipeline
from store import feedback
from store.database import PostgresDatabase
from store.prediction_log import PredictionLog
from tests.log_rows import record_one
from tests.monitors.conftest import MODELS, SUBGROUPS, make_profile
from tests.store.test_fleet import PAIRS, events, fleet_windows, replica  # noqa: F401 - replica: the chain fixture

LABELS = {"base": [str(d) for d in range(10)]}


@contextmanager
def clock_off_by(seconds: float):
    """This process's clock `seconds` ahead (negative: behind) inside the block, as another
    host's; the fleet-time offset this process measured outside the block is its own again after."""
    real, real_ns, offset = time.time, time.time_ns, clock.CLOCK.offset
    time.time = lambda: real() + seconds
    time.time_ns = lambda: real_ns() + int(seconds * 1e9)
    try:
        yield
    finally:
        time.time, time.time_ns, clock.CLOCK.offset = real, real_ns, offset


@pytest.fixture(autouse=True)
def fresh_clock():
    """Each test starts, and leaves the session, with this process's clock offset at 0."""
    clock.CLOCK.offset = 0.0
    yield
    clock.CLOCK.offset = 0.0


def skew_metric() -> float | None:
    return REGISTRY.get_sample_value("classguard_fleet_clock_skew_seconds")


# -- monitor windows -----------------------------------------------------------------------------
@pytest.fixture
def pipeline(tmp_path):
    profiles = [make_profile(1), make_profile(2)]
    config = MonitorsConfig(min_samples=20, known_confusions=PAIRS)

    def make(name: str, fleet=None) -> MonitorPipeline:
        state = tmp_path / name
        state.mkdir()
        return MonitorPipeline(config.model_copy(update={"state_dir": state}), MODELS, profiles, SUBGROUPS, fleet=fleet)

    return make


def samples(scores) -> dict:
    """Events counted per (monitor, model, subgroup): what a window holds, whatever the buckets."""
    return {(s.monitor, s.statistic, s.model, s.subgroup, s.pair): s.samples for s in scores}


def observe(replica: MonitorPipeline, n: int) -> None:
    """`n` answers through the request path (stamped with the replica's time), drained."""
    probs = np.array([0.1, 0.7, 0.1, 0.1])
    for _ in range(n):
        replica.observe(MODELS[0], SUBGROUPS[0], probs, 1)
    replica.drain()


def expected_samples(pipeline, t0: float, n_observed: int) -> dict:
    alone = pipeline("alone")
    alone.suite.update_many(events(500, 1, t0))
    observe(alone, n_observed)
    return samples(alone.publish())


@pytest.mark.parametrize("skew", [400.0, -400.0], ids=["ahead", "behind"])
def test_a_replica_400_s_off_neither_erases_hides_nor_loses_window_events(pg_url, pipeline, skew):
    """A replica 400 s ahead or behind publishes 10 answers between two publishes of a correct
    one: both then publish the window of one process fed all 510 events, and the skewed one
    measures its skew (the old code pruned the correct replica's buckets from 400 s ahead, and
    from 400 s behind dropped its own events as out of the window)."""
    t0 = time.time() - 70
    correct = pipeline("correct", fleet_windows(pg_url, "correct"))
    correct.suite.update_many(events(500, 1, t0))
    correct.publish()
    with clock_off_by(skew):
        skewed = pipeline("skewed", fleet_windows(pg_url, "skewed"))
        observe(skewed, 10)
        skewed.publish()
        measured = skew_metric()
    expected = expected_samples(pipeline, t0, 10)
    assert max(expected.values()) >= 400
    assert samples(correct.publish()) == expected
    with clock_off_by(skew):
        assert samples(skewed.publish()) == expected
    assert measured == pytest.approx(skew, abs=1.0)


def test_buckets_ahead_of_the_database_clock_are_not_read(pg_url):
    """Buckets a worker wrote more than one bucket past the database's now (an old replica with a
    clock ahead) are not part of anyone's window, and do not push live buckets out of it."""
    ahead, reader = fleet_windows(pg_url, "ahead"), fleet_windows(pg_url, "reader")
    now = time.time()
    live, future = int(now) - 5, int(now) + 400
    ahead.exchange({live: np.ones(3), future: np.ones(3)}, now=now + 400)  # its window, as it believes
    reader.exchange({live: np.full(3, 2.0)})
    assert set(reader.exchange({})) == {live}


# -- held labels ---------------------------------------------------------------------------------
def correct_replica_log(pg_url):
    """A correct replica's prediction log, joining held labels after each write (on a migrated database)."""
    PostgresDatabase(pg_url, replica="owner").migrate()
    log = PredictionLog(LogConfig(), PostgresDatabase(pg_url, replica="correct"), replica="correct")
    log.after_write = lambda conn: feedback.join_held(conn, LABELS, [])
    return log


def answer(log: PredictionLog, rid: str) -> None:
    record_one(log, {"request_id": rid, "correlation_id": None, "label": "3", "confidence": 0.5, "abstained": False,
                     "flags": [], "guardrails": [], "top_k": []}, np.full(10, 0.1), "h", "base:v1", "capture=phone")


def recorded(pg_url, ids) -> int:
    conn = PostgresDatabase(pg_url, replica="check").connect(schema=False)
    try:
        return conn.execute("SELECT COUNT(*) FROM feedback WHERE request_id = ANY(?)", (list(ids),)).fetchone()[0]
    finally:
        conn.close()


def test_a_label_held_by_a_replica_150_s_behind_is_joined_not_expired(pg_url):
    """A label posted through a replica 150 s behind, before its answer is written, is held; the
    correct replica that writes the answer joins it (the old code stamped the hold 150 s in the
    past, and the correct replica's next join expired it: answered 202, never recorded)."""
    log = correct_replica_log(pg_url)
    rid = time_ordered_id()
    behind = PostgresDatabase(pg_url, replica="behind")
    with clock_off_by(-150):
        [result] = behind.read(feedback.record, [(rid, "3")], LABELS, [], feedback.Hold(seconds=120))
    assert result["result"] == "held"
    answer(log, rid)
    log.flush()
    assert recorded(pg_url, [rid]) == 1


def test_labels_for_fresh_answers_through_a_replica_400_s_ahead_are_held_not_refused(pg_url):
    """50 labels for answers a correct replica has just served, posted through a replica 400 s
    ahead before the answers are written, are held and then joined (the old code judged the ids
    minted 400 s ago: 404 `unknown_request` for all 50)."""
    log = correct_replica_log(pg_url)
    ids = [time_ordered_id() for _ in range(50)]
    ahead = PostgresDatabase(pg_url, replica="ahead")
    with clock_off_by(400):
        results = ahead.read(feedback.record, [(rid, "3") for rid in ids], LABELS, [])
    assert {r["result"] for r in results} == {"held"}
    for rid in ids:
        answer(log, rid)
    log.flush()
    assert recorded(pg_url, ids) == 50


def test_ids_minted_by_a_replica_400_s_behind_are_fresh_to_the_others(pg_url):
    """A replica 400 s behind mints its request ids in fleet time: labels for its fresh answers
    posted through a correct replica are held (the old code minted them 400 s in the past: 404)."""
    PostgresDatabase(pg_url, replica="owner").migrate()
    with clock_off_by(-400):
        behind_log = PredictionLog(LogConfig(), PostgresDatabase(pg_url, replica="behind"), replica="behind")
        ids = [time_ordered_id() for _ in range(5)]
    correct = PostgresDatabase(pg_url, replica="correct")
    results = correct.read(feedback.record, [(rid, "3") for rid in ids], LABELS, [])
    assert {r["result"] for r in results} == {"held"}
    behind_log.after_write = lambda conn: feedback.join_held(conn, LABELS, [])
    with clock_off_by(-400):
        for rid in ids:
            answer(behind_log, rid)
        behind_log.flush()
    assert recorded(pg_url, ids) == 5


# -- retention and swaps -------------------------------------------------------------------------
def test_retention_on_a_replica_400_s_ahead_deletes_no_fresh_rows(pg_url):
    """With a 5-minute retention, a replica 400 s ahead runs retention right after a correct one
    wrote 20 answers: all 20 stay, and the task's claim is stamped by the database's clock (the
    old code cut at 100 s in the future, deleting them all, and kept the task for 400 s)."""
    config = LogConfig(retention_days=300 / 86400)
    log = correct_replica_log(pg_url)
    for i in range(20):
        answer(log, f"fresh-{i}")
    log.flush(retention=False)
    with clock_off_by(400):
        PredictionLog(config, PostgresDatabase(pg_url, replica="ahead"), replica="ahead").flush()
    conn = PostgresDatabase(pg_url, replica="check").connect(schema=False)
    assert conn.execute("SELECT COUNT(*) FROM predictions").fetchone()[0] == 20
    last_run = conn.execute("SELECT last_run FROM maintenance WHERE task = 'retention'").fetchone()[0]
    assert abs(last_run - time.time()) < 5
    conn.close()


def test_swaps_through_a_replica_400_s_ahead_are_ordered_and_stamped_by_the_database(replica):  # noqa: F811
    """A swap through a replica 400 s ahead, then one through a correct replica: the later swap is
    active everywhere and the audit trail lists them in the order they happened, each stamped
    within seconds of the database's time (the old code stamped the first 400 s in the future)."""
    correct = replica("correct")
    with clock_off_by(400):
        ahead = replica("ahead")
        ahead.swap(profile="abstain_when_unsure")
    correct.sync()
    correct.swap(profile="allow_all")
    with clock_off_by(400):
        assert ahead.sync() and ahead.chain.profile == "allow_all"
    history = correct.store.history()
    assert [(h["replica"], h["profile"]) for h in history[:2]] == [("correct", "allow_all"),
                                                                  ("ahead", "abstain_when_unsure")]
    assert all(abs(h["ts"] - time.time()) < 5 for h in history)
