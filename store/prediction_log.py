"""The prediction and incident log: SQLite (WAL), written off the request path.

Request path: `record()` applies the logging policy (every prediction, a sampled share, and
always the flagged ones) and appends to a bounded queue; a full queue drops the row and
counts it. Background (a thread, every `flush_seconds`): one transaction inserts the batch; a
failed write keeps its rows for the next flush.
Retention (age and row count) is enforced every `retention_check_seconds`. Each worker
writes through its own connection; SQLite's locking (WAL, busy timeout) serialises them.
Raw images are never stored; an optional SHA-256 of the upload is.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import logging
import math
import os
import sqlite3
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar

import numpy as np

from guardrails.core import bucket
from service import metrics
from service.config import LogConfig
from store.model_store import split_tag

log = logging.getLogger("classguard.log")
T = TypeVar("T")
QUIET_ACTIONS = {"allow", "pass", "shadow"}  # guardrail actions that do not make a row "flagged"
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
    image_sha256 TEXT
);
CREATE TABLE IF NOT EXISTS feedback (
    request_id  TEXT PRIMARY KEY,
    label       TEXT NOT NULL,
    ts          REAL NOT NULL
);
"""
INDEXES = """
CREATE INDEX IF NOT EXISTS predictions_ts ON predictions (ts);
CREATE INDEX IF NOT EXISTS predictions_subgroup_ts ON predictions (subgroup, ts);
CREATE INDEX IF NOT EXISTS predictions_flagged_ts ON predictions (flagged, ts);
CREATE INDEX IF NOT EXISTS predictions_correlation ON predictions (correlation_id) WHERE correlation_id IS NOT NULL;
"""
COLUMNS = ("request_id", "correlation_id", "ts", "subgroup", "model", "model_version", "label", "abstained",
           "confidence", "flagged", "flags", "guardrails", "top_k", "probs", "config_hash", "image_sha256")
MAX_PAGE = 1_000  # rows in one lookup answer; more come page by page (`before`)


# Many rows per INSERT: SQLite then runs once per chunk with the GIL released, where
# executemany released and retook it for every row and so fought the request thread for it.
ROWS_PER_STATEMENT = 512  # 512 x 16 parameters, under SQLite's 32,766-variable limit


def _chunk_sizes(n: int) -> list[int]:
    """Full chunks, then powers of two: few distinct statements, each prepared once and cached."""
    sizes = [ROWS_PER_STATEMENT] * (n // ROWS_PER_STATEMENT)
    rest = n % ROWS_PER_STATEMENT
    return sizes + [1 << bit for bit in reversed(range(rest.bit_length())) if rest >> bit & 1]


@functools.lru_cache(maxsize=16)
def _insert_sql(n_rows: int) -> str:
    row = f"({', '.join('?' * len(COLUMNS))})"
    return f"INSERT OR REPLACE INTO predictions ({', '.join(COLUMNS)}) VALUES {', '.join([row] * n_rows)}"


def connect(path: Path, busy_timeout: float = 5.0) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, timeout=busy_timeout, check_same_thread=False)
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


def is_flagged(response: dict[str, Any]) -> bool:
    return bool(response["flags"]) or response["abstained"] or any(
        d["action"] not in QUIET_ACTIONS for d in response["guardrails"])


class LogDisabled(Exception):
    """The prediction log is off (log.enabled: false): nothing to read."""


class NoLog:
    """The off switch: same interface, records nothing, and reading says it is off."""

    def record(self, *args: Any, **kwargs: Any) -> None:
        return None

    async def run(self) -> None:
        return None

    def flush(self, now: float | None = None, *, retention: bool = True) -> int:
        return 0

    def read(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        raise LogDisabled("the prediction log is disabled (log.enabled: false)")


class PredictionLog:
    def __init__(self, config: LogConfig) -> None:
        self.config = config
        self._queue: deque[tuple] = deque()
        self._lock = threading.Lock()
        self._conn = connect(config.path, config.busy_timeout_seconds)
        self._inode = os.stat(config.path).st_ino
        self._last_retention = 0.0

    def read(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """`fn(connection, ...)` on a connection of its own: lookups never share the writer's
        (the schema is already in place: this log created it)."""
        conn = sqlite3.connect(self.config.path, timeout=self.config.busy_timeout_seconds)
        try:
            return fn(conn, *args, **kwargs)
        finally:
            conn.close()

    # -- request path ------------------------------------------------------------------------
    def record(self, response: dict[str, Any], probs: np.ndarray, config_hash: str, model: str,
               subgroup: str, image: bytes | None = None) -> None:
        """Queue one answered prediction; `model` is name:version."""
        flagged = is_flagged(response)
        if not flagged and not self._sampled(response["request_id"]):
            return
        if len(self._queue) >= self.config.queue_size:
            metrics.LOG_DROPPED.inc()
            return
        digest = hashlib.sha256(image).hexdigest() if image is not None and self.config.store_image_hash else None
        self._queue.append((
            response["request_id"], response.get("correlation_id"), time.time(), subgroup, *split_tag(model),
            response["label"],
            int(response["abstained"]),
            float(response["confidence"]), int(flagged), json.dumps(response["flags"]),
            json.dumps(response["guardrails"]), json.dumps(response["top_k"]),
            np.asarray(probs, dtype=np.float32).tobytes(), config_hash, digest,
        ))

    def _sampled(self, request_id: str) -> bool:
        if self.config.mode == "all":
            return True
        if self.config.mode == "flagged":
            return False
        return bucket("log", request_id) < self.config.sample_share

    # -- background ----------------------------------------------------------------------------
    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.config.flush_seconds)
            try:
                await asyncio.to_thread(self.flush)
            except Exception:
                metrics.LOG_ERRORS.labels("flush").inc()
                log.exception("prediction log flush failed")

    def flush(self, now: float | None = None, *, retention: bool = True) -> int:
        """Write what is queued; the number of rows written. A request that only needs its
        rows findable passes retention=False: retention is the background flush's work."""
        with self._lock:
            self._reopen_if_replaced()
            rows = [self._queue.popleft() for _ in range(len(self._queue))]
            written = self._write(rows) if rows else 0
            now = time.time() if now is None else now
            if retention and now - self._last_retention >= self.config.retention_check_seconds:
                self._enforce_retention(now)
        return written

    def _reopen_if_replaced(self) -> None:
        """A log file deleted (or moved away) while serving would swallow every later write into
        its unlinked inode, counted as written: open the file at the configured path again."""
        try:
            same = os.stat(self.config.path).st_ino == self._inode
        except OSError:
            same = False
        if same:
            return
        log.warning("prediction log %s was deleted or replaced; opening it again", self.config.path)
        try:
            conn = connect(self.config.path, self.config.busy_timeout_seconds)
        except (sqlite3.Error, OSError):
            metrics.LOG_ERRORS.labels("write").inc()
            log.warning("could not reopen the prediction log", exc_info=True)
            return
        self._conn.close()
        self._conn, self._inode = conn, os.stat(self.config.path).st_ino

    def _write(self, rows: list[tuple]) -> int:
        try:
            with self._conn:
                start = 0
                for size in _chunk_sizes(len(rows)):
                    chunk = rows[start:start + size]
                    self._conn.execute(_insert_sql(size), [v for row in chunk for v in row])
                    start += size
        except sqlite3.OperationalError:
            # locked, disk full, I/O error: conditions that pass. The rows go back to the front
            # of the queue for the next flush; what no longer fits in it is dropped and counted.
            metrics.LOG_ERRORS.labels("write").inc()
            room = max(0, self.config.queue_size - len(self._queue))
            self._queue.extendleft(reversed(rows[:room]))
            if len(rows) > room:
                metrics.LOG_DROPPED.inc(len(rows) - room)
            log.warning("could not write %d log rows; %d kept for the next flush", len(rows), min(room, len(rows)),
                        exc_info=True)
            return 0
        except sqlite3.Error:  # anything else would fail again: drop the batch, counted
            metrics.LOG_ERRORS.labels("write").inc()
            metrics.LOG_DROPPED.inc(len(rows))
            log.warning("dropped %d log rows that could not be written", len(rows), exc_info=True)
            return 0
        metrics.LOG_WRITTEN.inc(len(rows))
        return len(rows)

    def _enforce_retention(self, now: float) -> None:
        """Delete predictions past their age or beyond the row count, and their feedback with them
        (left behind, feedback grew without bound and refused labels for reused ids)."""
        try:
            with self._conn:
                cutoff = now - self.config.retention_days * 86400
                newest_kept = self._conn.execute("SELECT ts FROM predictions ORDER BY ts DESC LIMIT 1 OFFSET ?",
                                                 (self.config.max_rows - 1,)).fetchone()
                if newest_kept is not None:
                    cutoff = max(cutoff, newest_kept[0])
                self._conn.execute("DELETE FROM feedback WHERE request_id IN "
                                   "(SELECT request_id FROM predictions WHERE ts < ?)", (cutoff,))
                self._conn.execute("DELETE FROM predictions WHERE ts < ?", (cutoff,))
            self._last_retention = now
        except sqlite3.Error:
            metrics.LOG_ERRORS.labels("retention").inc()
            log.warning("log retention failed", exc_info=True)


# -- lookups (admin routes and CLI read the same file) -----------------------------------------------
def where(conditions: Sequence[tuple[str, Any]]) -> tuple[str, list[Any]]:
    """`WHERE ...` from (clause with one `?`, value) pairs whose value is not None; and its
    arguments. No condition left: an empty clause."""
    kept = [(clause, value) for clause, value in conditions if value is not None]
    sql = " AND ".join(clause for clause, _ in kept)
    return (f"WHERE {sql}" if sql else ""), [value for _, value in kept]


def query(conn: sqlite3.Connection, *, since: float | None = None, until: float | None = None,
          subgroup: str | None = None, flag: str | None = None, action: str | None = None,
          model: str | None = None, correlation_id: str | None = None, flagged_only: bool = False,
          before: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
    """Newest first; `before` (a request id from the previous page) continues after that row."""
    clause, args = where([
        ("ts >= ?", since), ("ts <= ?", until), ("subgroup = ?", subgroup), ("model = ?", model),
        ("correlation_id = ?", correlation_id), ("flagged = ?", 1 if flagged_only else None),
        ("EXISTS (SELECT 1 FROM json_each(flags) WHERE json_each.value = ?)", flag or None),
        ("EXISTS (SELECT 1 FROM json_each(guardrails) WHERE json_extract(json_each.value, '$.action') = ?)",
         action or None),
        ("(ts, request_id) < (SELECT ts, request_id FROM predictions WHERE request_id = ?)", before),
    ])
    sql = f"SELECT {', '.join(COLUMNS)} FROM predictions {clause} ORDER BY ts DESC, request_id DESC LIMIT ?"
    return [_row(r) for r in conn.execute(sql, (*args, int(limit)))]


def get(conn: sqlite3.Connection, request_id: str) -> dict[str, Any] | None:
    row = conn.execute(f"SELECT {', '.join(COLUMNS)} FROM predictions WHERE request_id = ?", (request_id,)).fetchone()
    return _row(row, probs=True) if row else None


def find_rows(conn: sqlite3.Connection, key: str, columns: Sequence[str], limit: int = 10) -> list[tuple]:
    """`columns` of the answer whose request id is `key`; else of every answer (up to `limit`)
    whose client correlation id is `key`, newest first: a client may reuse its ids."""
    select = f"SELECT {', '.join(columns)} FROM predictions"
    rows = conn.execute(f"{select} WHERE request_id = ?", (key,)).fetchall()
    return rows or conn.execute(f"{select} WHERE correlation_id = ? ORDER BY ts DESC LIMIT ?", (key, limit)).fetchall()


def find(conn: sqlite3.Connection, key: str, limit: int = 10) -> list[dict[str, Any]]:
    """find_rows, as full records (probabilities included)."""
    return [_row(r, probs=True) for r in find_rows(conn, key, COLUMNS, limit)]


def summary(conn: sqlite3.Connection, since: float) -> list[dict[str, Any]]:
    """Per subgroup and flag: how many logged predictions carried it since `since`."""
    sql = """SELECT subgroup, COALESCE(json_each.value, '(none)') AS flag, COUNT(*)
             FROM predictions LEFT JOIN json_each(predictions.flags) WHERE ts >= ?
             GROUP BY subgroup, flag ORDER BY subgroup, COUNT(*) DESC"""
    return [{"subgroup": s, "flag": f, "count": n} for s, f, n in conn.execute(sql, (since,))]


def _row(row: tuple, probs: bool = False) -> dict[str, Any]:
    out = dict(zip(COLUMNS, row))
    for key in ("flags", "guardrails", "top_k"):
        out[key] = json.loads(out[key])
    out["abstained"], out["flagged"] = bool(out["abstained"]), bool(out["flagged"])
    blob = out.pop("probs")
    if probs:
        out["probs"] = [round(float(p), 6) for p in np.frombuffer(blob, dtype=np.float32)]
    return out


def parse_since(text: str | None, now: float | None = None) -> float | None:
    """'15m', '2h', '1d', '90s' before now, or absolute Unix seconds."""
    if text is None:
        return None
    now = time.time() if now is None else now
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    try:
        value = now - float(text[:-1]) * units[text[-1]] if text[-1:] in units else float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise ValueError(f"expected e.g. 15m, 2h, 1d or Unix seconds, got {text[:40]!r}")
    return value


def export(records: list[dict[str, Any]], fmt: str) -> str:
    """Lookup results as JSON Lines or CSV (nested fields as JSON text)."""
    if fmt == "jsonl":
        return "".join(json.dumps(r) + "\n" for r in records)
    import csv
    import io

    out = io.StringIO()
    columns = [c for c in COLUMNS if c != "probs"]
    writer = csv.DictWriter(out, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    for r in records:
        writer.writerow({k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in r.items()})
    return out.getvalue()
