"""Everything SQLite-specific of the store: schema, migrations, upserts, JSON functions, locking.

The embedded single-host default. Shared SQL elsewhere in `store/` is written once with `?`
placeholders; what SQLite says differently from PostgreSQL is here (and in `sql_postgres`).
"""

from __future__ import annotations

import functools
import sqlite3
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

TRANSIENT = (sqlite3.OperationalError,)  # locked, disk full, I/O error: a retry may succeed
ERRORS = (sqlite3.Error,)

TABLES = """
CREATE TABLE IF NOT EXISTS predictions (
    request_id  TEXT PRIMARY KEY,
    correlation_id TEXT,
    ts          REAL NOT NULL,
    subgroup    TEXT NOT NULL,
    model       TEXT NOT NULL,
    model_version TEXT NOT NULL,
    label       TEXT,
    abstained   INTEGER NOT NULL,
    confidence  REAL NOT NULL,
    flagged     INTEGER NOT NULL,
    flags       TEXT NOT NULL,
    guardrails  TEXT NOT NULL,
    top_k       TEXT NOT NULL,
    probs       BLOB NOT NULL,
    config_hash TEXT NOT NULL,
    image_sha256 TEXT,
    replica     TEXT,
    region      TEXT
);
CREATE TABLE IF NOT EXISTS feedback (
    request_id  TEXT PRIMARY KEY,
    label       TEXT NOT NULL,
    ts          REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS held_feedback (
    key         TEXT PRIMARY KEY,
    label       TEXT NOT NULL,
    ts          REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS maintenance (
    task        TEXT PRIMARY KEY,
    last_run    REAL NOT NULL
);
-- captured input images (capture.policy), a row per kept input, deleted with its prediction
CREATE TABLE IF NOT EXISTS inputs (
    request_id  TEXT PRIMARY KEY,
    ts          REAL NOT NULL,
    model       TEXT NOT NULL,
    subgroup    TEXT NOT NULL,
    region      TEXT,
    reason      TEXT NOT NULL,
    media_type  TEXT,
    original    BLOB,
    thumbnail   BLOB NOT NULL,
    bytes       INTEGER NOT NULL
);
-- erasures, remembered for a while: a write of what they named, still queued elsewhere, is refused
CREATE TABLE IF NOT EXISTS erased_inputs (
    request_id  TEXT PRIMARY KEY,
    ts          REAL NOT NULL
);
-- a shadow model's answer to a logged request (its evidence: agreement, and accuracy once labelled)
CREATE TABLE IF NOT EXISTS shadow_answers (
    request_id  TEXT NOT NULL,
    model       TEXT NOT NULL,
    label       TEXT,
    ts          REAL NOT NULL,
    PRIMARY KEY (request_id, model)
);
-- what automatic actions decided on the alerts Alertmanager posted (runtime/automation.py)
CREATE TABLE IF NOT EXISTS alert_actions (
    id          INTEGER PRIMARY KEY,
    ts          REAL NOT NULL,
    key         TEXT NOT NULL UNIQUE,
    rule        TEXT NOT NULL,
    alertname   TEXT NOT NULL,
    subgroup    TEXT NOT NULL,
    status      TEXT NOT NULL,
    outcome     TEXT NOT NULL,
    reason      TEXT NOT NULL,
    evidence    TEXT NOT NULL,
    chain_hash  TEXT,
    base_hash   TEXT,
    base_profile TEXT,
    guardrails  TEXT,
    replica     TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS erased_ranges (
    id          INTEGER PRIMARY KEY,
    since       REAL NOT NULL,
    until       REAL NOT NULL,
    ts          REAL NOT NULL
);
"""
INDEXES = """
CREATE INDEX IF NOT EXISTS predictions_ts ON predictions (ts);
CREATE INDEX IF NOT EXISTS predictions_subgroup_ts ON predictions (subgroup, ts);
CREATE INDEX IF NOT EXISTS predictions_flagged_ts ON predictions (flagged, ts);
CREATE INDEX IF NOT EXISTS predictions_correlation ON predictions (correlation_id) WHERE correlation_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS inputs_ts ON inputs (ts);
CREATE INDEX IF NOT EXISTS shadow_answers_ts ON shadow_answers (ts);
CREATE INDEX IF NOT EXISTS alert_actions_rule_ts ON alert_actions (rule, ts);
"""

# -- query fragments (one `?` each) -------------------------------------------------------------
HAS_FLAG = "EXISTS (SELECT 1 FROM json_each(flags) WHERE json_each.value = ?)"
HAS_ACTION = ("EXISTS (SELECT 1 FROM json_each(guardrails) "
              "WHERE json_extract(json_each.value, '$.action') = ?)")
SUMMARY = """SELECT subgroup, COALESCE(json_each.value, '(none)') AS flag, COUNT(*)
             FROM predictions LEFT JOIN json_each(predictions.flags) WHERE ts >= ?
             GROUP BY subgroup, flag ORDER BY subgroup, COUNT(*) DESC"""
# Many rows per INSERT: SQLite then runs once per chunk with the GIL released, where
# executemany released and retook it for every row and so fought the request thread for it.
ROWS_PER_STATEMENT = 512  # 512 x 18 parameters, under SQLite's 32,766-variable limit


@functools.lru_cache(maxsize=16)
def insert_predictions(columns: tuple[str, ...], n_rows: int) -> str:
    # a row written again (a retried flush) replaces itself: ids are minted by the service
    row = f"({', '.join('?' * len(columns))})"
    return f"INSERT OR REPLACE INTO predictions ({', '.join(columns)}) VALUES {', '.join([row] * n_rows)}"


UPSERT_ERASED_INPUT = ("INSERT INTO erased_inputs (request_id, ts) VALUES (?, ?) "
                       "ON CONFLICT (request_id) DO UPDATE SET ts = excluded.ts")


def insert_inputs(columns: tuple[str, ...], condition: str) -> str:
    """One input, written unless `condition` (its own `?`s follow the columns') is false."""
    return (f"INSERT OR REPLACE INTO inputs ({', '.join(columns)}) SELECT {', '.join('?' * len(columns))} "
            f"WHERE {condition}")


class Connection(sqlite3.Connection):
    """sqlite3's connection with the store's one transaction idiom."""

    @contextmanager
    def transaction(self, *, exclusive: bool = False) -> Iterator["Connection"]:
        """`exclusive`: take the write lock first, so two writers of one key queue instead of
        racing from "not there yet" to a failed insert."""
        if exclusive:
            self.execute("BEGIN IMMEDIATE")
        with self:
            yield self


def connect(path: Path, busy_timeout: float = 5.0, *, schema: bool = True) -> Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, timeout=busy_timeout, check_same_thread=False, factory=Connection)
    if not schema:
        return conn
    # Workers start side by side. Switching a new file to WAL answers "database is locked" at
    # once, without waiting out the busy timeout, while another process does the same; that
    # had stopped the second worker of two at start-up. Retry until the timeout instead.
    deadline = time.monotonic() + busy_timeout
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.executescript(TABLES)
            _migrate(conn)
            conn.executescript(INDEXES)
            break
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                conn.close()
                raise
            time.sleep(0.02)
    conn.execute("PRAGMA synchronous=NORMAL")
    return conn


def _migrate(conn: sqlite3.Connection) -> None:
    """Bring a log written by an older version up to date, in place (idempotent)."""
    columns = {row[1] for row in conn.execute("PRAGMA table_info(predictions)")}
    if "correlation_id" not in columns:
        with conn:
            conn.execute("ALTER TABLE predictions ADD COLUMN correlation_id TEXT")
            # retention used to leave feedback behind: drop what no longer has its prediction
            conn.execute("DELETE FROM feedback WHERE request_id NOT IN (SELECT request_id FROM predictions)")
    if "replica" not in columns:
        with conn:
            conn.execute("ALTER TABLE predictions ADD COLUMN replica TEXT")
    if "region" not in columns:
        with conn:
            conn.execute("ALTER TABLE predictions ADD COLUMN region TEXT")


def chunk_sizes(n: int, most: int = ROWS_PER_STATEMENT) -> Sequence[int]:
    """Full chunks, then powers of two: few distinct statements, each prepared once and cached."""
    sizes = [most] * (n // most)
    rest = n % most
    return sizes + [1 << bit for bit in reversed(range(rest.bit_length())) if rest >> bit & 1]
