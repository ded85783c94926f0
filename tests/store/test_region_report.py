"""The region ranking behind `classguard regions`: rows read from either engine, every figure equal to
numpy's on the same rows, the ranking by excess share x estimated error, and PostgreSQL's in-place
migration of the region column."""

import numpy as np
import pytest

from core.config import LogConfig
from monitors.estimates import PublishedEstimate, calibrated_confidence
from monitors.regions import RegionReference
from store import feedback, region_report
from store.database import PostgresDatabase, SqliteDatabase
from store.prediction_log import PredictionLog
from tests.log_rows import record_one

NAMES = ["r00", "r01", "novel"]
REFERENCES = [RegionReference(50, 0.5, {"capture=scanner": 1.0}, 0.98, 0.95, {}, 0.05),
              RegionReference(49, 0.49, {"capture=scanner": 0.9, "capture=phone": 0.1}, 0.9, 0.9, {}, 0.1),
              RegionReference(1, 0.01, {"capture=scanner": 1.0}, 1.0, 0.6, {}, 0.3)]
TEMPERATURES = {"base": 1.5, "fixed": 0.8}
# base with ATC thresholds (the whole split's, and phone's own), fixed profiled before them
THRESHOLDS = {"all": 0.6, "capture=phone": 0.4}
ESTIMATES = {"base": PublishedEstimate(1.5, THRESHOLDS), "fixed": PublishedEstimate(0.8)}


def test_the_ranking_matches_numpy_on_the_rows_of_either_engine(database):
    """60 answers in r00 (training share 0.5), 30 in r01 at low confidence (0.49), 10 novel (0.01), one
    without a region: shares, excess, estimated accuracy (ATC's credits per subgroup threshold; the
    mean calibrated confidence for a model without thresholds), realized accuracy on the labelled
    ones, subgroup mix and the newest ids per region equal numpy's; novel (+0.09 at low confidence)
    ranks above r01 (-0.19) and r00 (+0.1, confident)."""
    rng = np.random.default_rng(3)
    log = PredictionLog(LogConfig(), database)
    rows = []
    plan = [("r00", 60, 0.95), ("r01", 30, 0.5), ("novel", 10, 0.3), (None, 1, 0.9)]
    i = 0
    for region, n, peak in plan:
        for _ in range(n):
            probs = rng.dirichlet(np.ones(10)) * (1 - peak)
            probs[i % 10] += peak
            model = "fixed" if region == "r01" and i % 3 == 0 else "base"
            label = str(int(np.argmax(probs)))
            subgroup = "capture=phone" if i % 4 == 0 else "capture=scanner"
            record_one(log, {"request_id": f"q{i:03d}", "correlation_id": None, "label": label,
                             "confidence": float(probs.max()), "abstained": False, "flags": [], "guardrails": [],
                             "top_k": []}, probs, "h", f"{model}:v1", subgroup, region=region)
            rows.append((f"q{i:03d}", region, subgroup, model, label, probs.astype(np.float32)))
            i += 1
        log.flush(now=i)  # each region written in its own flush: the newest rows are the last ones
    truths = {f"q{j:03d}": ("0" if j % 2 else rows[j][4]) for j in range(0, 100, 5)}
    database.read(feedback.record, list(truths.items()), {"base": list("0123456789"), "fixed": list("0123456789")}, [])

    read = database.read(region_report.read_rows, since=None, until=None)
    assert len(read) == 100 and all(r[1] is not None for r in read)
    ranked = {r["region"]: r for r in region_report.rank(read, NAMES, REFERENCES, ESTIMATES, exemplars=3)}
    assert [r["region"] for r in region_report.rank(read, NAMES, REFERENCES, ESTIMATES)] == ["novel", "r00", "r01"]
    placed = [r for r in rows if r[1] is not None]
    for k, name in enumerate(NAMES):
        mine = [r for r in placed if r[1] == name]
        live = len(mine) / len(placed)
        logits = np.log(np.stack([r[5] for r in mine]).astype(np.float64)) / np.array([TEMPERATURES[r[3]] for r in mine])[:, None]
        soft = np.exp(logits - logits.max(axis=1, keepdims=True))
        calibrated = soft.max(axis=1) / soft.sum(axis=1)
        threshold = [THRESHOLDS.get(r[2], THRESHOLDS["all"]) for r in mine]
        estimated = float(np.mean([c if r[3] == "fixed" else float(c > t) for c, t, r in zip(calibrated, threshold, mine)]))
        labelled = [(r[4], truths[r[0]]) for r in mine if r[0] in truths]
        got = ranked[name]
        assert got["answers"] == len(mine) and got["live_share"] == pytest.approx(live, abs=1e-6)
        assert got["excess_share"] == pytest.approx(live - REFERENCES[k].share, abs=1e-6)
        assert got["estimated_accuracy"] == pytest.approx(estimated, abs=1e-6)
        assert got["score"] == pytest.approx(max(live - REFERENCES[k].share, 0) * (1 - estimated), abs=1e-6)
        assert got["labelled"] == len(labelled)
        assert got["realized_accuracy"] == pytest.approx(np.mean([a == b for a, b in labelled]), abs=1e-6)
        phone = sum(r[2] == "capture=phone" for r in mine) / len(mine)
        assert got["subgroups"].get("capture=phone", 0) == pytest.approx(phone, abs=1e-6)
        assert got["exemplars"] == [r[0] for r in mine][::-1][:3]
        assert got["training_share"] == REFERENCES[k].share and got["training_accuracy"] == REFERENCES[k].accuracy


def test_a_window_bounds_the_rows_and_an_unknown_region_is_marked(tmp_path):
    """`since`/`until` keep the window's rows only; a region name the codebook lacks (an older primary's)
    is ranked without a training share and says so."""
    database = SqliteDatabase(tmp_path / "p.sqlite")
    log = PredictionLog(LogConfig(), database)
    for i, region in enumerate(["r00", "r07", "r00"]):
        record_one(log, {"request_id": f"q{i}", "correlation_id": None, "label": "1", "confidence": 0.9,
                         "abstained": False, "flags": [], "guardrails": [], "top_k": []},
                   np.eye(10)[1] * 0.9 + 0.01, "h", "base:v1", "s", region=region)
        log.flush()
    conn = database.connect()
    stamps = [t for (t,) in conn.execute("SELECT ts FROM predictions ORDER BY ts")]
    assert [r[0] for r in region_report.read_rows(conn, since=stamps[1], until=None)] == ["q2", "q1"]
    assert [r[0] for r in region_report.read_rows(conn, since=None, until=stamps[0])] == ["q0"]
    ranked = region_report.rank(region_report.read_rows(conn, since=None, until=None), NAMES, REFERENCES, ESTIMATES)
    unknown = next(r for r in ranked if r["region"] == "r07")
    assert unknown["training_share"] is None and "unknown" in unknown and unknown["excess_share"] == pytest.approx(1 / 3)


def test_postgresql_adds_the_region_column_to_an_older_fleet_database(pg_url):
    """A fleet database created before regions (no column, no schema version) gains it when
    `classguard db migrate` runs, and keeps its rows."""
    import psycopg

    PostgresDatabase(pg_url, replica="old").migrate()
    with psycopg.connect(pg_url, autocommit=True) as conn:  # the shape releases before versions left
        conn.execute("ALTER TABLE predictions DROP COLUMN region")
        conn.execute("DROP TABLE classguard_schema")
        conn.execute("INSERT INTO predictions (request_id, ts, subgroup, model, model_version, abstained, confidence, "
                     "flagged, flags, guardrails, top_k, probs, config_hash) "
                     "VALUES ('a', 1, 's', 'm', 'v', 0, 0.9, 0, '[]', '[]', '[]', '', 'h')")
    database = PostgresDatabase(pg_url, replica="new")
    database.migrate()
    database.prepare(0.0)
    assert database.read(lambda c: c.execute("SELECT request_id, region FROM predictions").fetchall()) == [("a", None)]


def test_rows_of_one_model_with_different_widths_are_estimated_row_by_row(tmp_path):
    """A region holding answers of two versions of one model, 10 and 12 classes, gets the mean
    of each row's own calibrated confidence (one reshape over both widths had cut rows across
    answers and reported a wrong estimate)."""
    log = PredictionLog(LogConfig(), SqliteDatabase(tmp_path / "p.sqlite"))
    rng = np.random.default_rng(5)
    rows = [rng.dirichlet(np.ones(width) * 0.3) for width in (10, 12, 10, 12, 12, 10, 12)]
    for i, probs in enumerate(rows):
        record_one(log, {"request_id": f"q{i}", "correlation_id": None, "label": str(int(np.argmax(probs))),
                         "confidence": float(probs.max()), "abstained": False, "flags": [], "guardrails": [],
                         "top_k": []},
                   probs, "h", f"base:v{len(probs)}", "capture=scanner", region="r00")
    log.flush()
    read = SqliteDatabase(tmp_path / "p.sqlite").read(region_report.read_rows, since=None, until=None)
    [got] = region_report.rank(read, NAMES, REFERENCES, {"base": PublishedEstimate(TEMPERATURES["base"])})
    expected = np.mean([calibrated_confidence(p.astype(np.float32)[None], TEMPERATURES["base"])[0] for p in rows])
    assert got["estimated_accuracy"] == pytest.approx(expected, abs=1e-6)
