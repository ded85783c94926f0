"""The prediction and incident log, written off the request path: SQLite (WAL) on one host,
PostgreSQL for a fleet (store.database).

Request path: `record()` applies the logging policy (every prediction, a sampled share, and
always the flagged ones) and appends to a bounded queue; a full queue drops the row and
counts it. Background (a thread, every `flush_seconds`): one transaction inserts the batch; a
failed write (the store away, the file locked) keeps its rows for the next flush, up to the
queue's size. After each write, labels that arrived before their answers are joined
(`after_write`). Retention (age and row count) is enforced every `retention_check_seconds`.
Each worker writes through its own connection. Images are kept only when capture is on
(store.capture picks them, store.inputs writes them in the same transaction as their rows);
else an optional SHA-256 of the upload is all that is stored of them.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import threading
import time
from collections import Counter, deque
from typing import Any, Callable, Sequence, TypeVar

import numpy as np
import orjson

from core import metrics
from core.clock import CLOCK
from core.config import CaptureConfig, LogConfig
from guardrails.answer_table import AnswerTable
from guardrails.core import bucket
from store import sql_sqlite
from store.capture import Capture, Pending
from store.clock import store_now
from store.database import Database, SqliteDatabase, dialect_of, off_loop
from store.model_store import split_tag

log = logging.getLogger("classguard.log")
T = TypeVar("T")
COLUMNS = ("request_id", "correlation_id", "ts", "subgroup", "model", "model_version", "label", "abstained",
           "confidence", "flagged", "flags", "guardrails", "top_k", "probs", "config_hash", "image_sha256", "replica",
           "region")
MAX_PAGE = 1_000  # rows in one lookup answer; more come page by page (`before`)
JOIN_IDLE_SECONDS = 5.0  # with no new rows, how often held labels are looked at (to expire them)
connect = sql_sqlite.connect  # a SQLite log file, opened (and its schema brought up to date)


def _json(value: Any) -> str:
    """Compact JSON text for a log column (orjson: a row's three columns in 1.2 us, json.dumps 13 us)."""
    return orjson.dumps(value).decode()


def _sha256(image: bytes | np.ndarray) -> str:
    return hashlib.sha256(image if isinstance(image, bytes) else image.tobytes()).hexdigest()


SHADOW_ROWS_PER_STATEMENT = 500  # x 4 parameters: under SQLite's and PostgreSQL's limits


class LogDisabled(Exception):
    """The prediction log is off (log.enabled: false): nothing to read."""


class NoLog:
    """The off switch: same interface, records nothing, and reading says it is off."""

    failing = False

    def record_many(self, *args: Any, **kwargs: Any) -> None:
        return None

    def record_table(self, *args: Any, **kwargs: Any) -> None:
        return None

    def record_shadow(self, *args: Any, **kwargs: Any) -> None:
        return None

    async def run(self) -> None:
        return None

    def flush(self, now: float | None = None, *, retention: bool = True) -> int:
        return 0

    def read(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        raise LogDisabled("the prediction log is disabled (log.enabled: false)")


class PredictionLog:
    def __init__(self, config: LogConfig, database: Database | None = None, replica: str | None = None,
                 capture: CaptureConfig | None = None) -> None:
        self.config = config
        self.capture = Capture(capture or CaptureConfig())
        self.db = database or SqliteDatabase(config.path, config.busy_timeout_seconds)
        self.replica = replica
        self._queue: deque[tuple] = deque()
        self._shadows: deque[tuple] = deque()  # (request_id, model, label, ts) of shadow answers
        self._lock = threading.Lock()
        self._conn = self.db.connect()
        store_now(self._conn)  # rows are stamped in fleet time (store.clock) from the first one
        self._last_retention = self._last_join = 0.0
        # after every write: labels that arrived before their answers were written are joined
        # (set by the wiring, which knows the models' classes)
        self.after_write: Callable[[Any], None] | None = None

    @property
    def queued(self) -> int:
        return len(self._queue)

    def read(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """`fn(connection, ...)` on a connection of its own: lookups never share the writer's.
        An unreachable store raises store.database.StoreUnavailable."""
        return self.db.read(fn, *args, **kwargs)

    # -- request path ------------------------------------------------------------------------
    def record_many(self, responses: Sequence[dict[str, Any]], probs: Sequence[np.ndarray], config_hash: str,
                    models: Sequence[str], subgroups: Sequence[str],
                    images: Sequence[bytes | np.ndarray] | None = None,
                    regions: Sequence[str | None] | None = None) -> None:
        """`record_table` for answers in the per-answer format, each answered by `models` (name:version)."""
        table = AnswerTable.from_rows(responses)
        table.models = list(models)
        self.record_table(table, probs, config_hash, subgroups, images, regions)

    def record_table(self, table: AnswerTable, probs: Sequence[np.ndarray], config_hash: str,
                     subgroups: Sequence[str], images: Sequence[bytes | np.ndarray] | None = None,
                     regions: Sequence[str | None] | None = None) -> None:
        """Queue a batch's answered predictions (guardrails/answer_table.py: each row's model is
        name:version); each `regions` entry the primary's region of the image (None when it has
        none), each `images` entry the upload (or the array row) it answered. One clock reading
        (fleet time: replicas' rows compare by it, in lookups and retention), each model tag
        split once, the drops of a full queue counted once."""
        now, dropped, rows = CLOCK.now(), 0, []
        room = self.config.queue_size - len(self._queue)
        versions: dict[str, tuple[str, str]] = {}
        hash_images = images is not None and self.config.store_image_hash
        capture = self.capture if images is not None and self.capture.enabled else None
        captured: list[Pending] = []
        for i in range(len(table)):
            request_id = table.request_ids[i]
            flagged = table.flagged(i)
            if not flagged and not self._sampled(request_id):
                continue
            if len(rows) >= room:
                dropped += 1
                continue
            model = table.models[i]
            name_version = versions.get(model) or versions.setdefault(model, split_tag(model))
            region = regions[i] if regions is not None else None
            if capture is not None:
                reason = capture.reason(name_version[0], subgroups[i], region, flagged, now)
                if reason is not None:
                    captured.append(Pending(request_id, now, name_version[0], subgroups[i], region,
                                            reason, images[i]))  # type: ignore[index]
            label = table.labels[i]
            rows.append((
                request_id, table.correlation_ids[i], now, subgroups[i], *name_version,
                label, int(label is None), float(table.confidences[i]), int(flagged),
                _json(table.flags[i]), _json([d.as_dict() for d in table.decisions[i]]), _json(table.top_k(i)),
                np.asarray(probs[i], dtype=np.float32).tobytes(), config_hash,
                _sha256(images[i]) if hash_images else None,  # type: ignore[index]
                self.replica, region,
            ))
        self._queue.extend(rows)
        if dropped:
            metrics.LOG_DROPPED.inc(dropped)
        if captured:
            self.capture.offer(captured)

    def record_shadow(self, request_id: str, model: str, label: str | None) -> None:
        """Queue a shadow model's answer to a request (None: it abstained): joined with the
        request's logged answer and its true label, the evidence automatic actions are gated on
        (store/evidence.py). Bounded like the answers: beyond the queue size, dropped and counted."""
        if len(self._shadows) >= self.config.queue_size:
            metrics.LOG_DROPPED.inc()
            return
        self._shadows.append((request_id, model, label, CLOCK.now()))

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
                await off_loop(self.flush)
            except Exception:
                metrics.LOG_ERRORS.labels("flush").inc()
                log.exception("prediction log flush failed")

    def flush(self, now: float | None = None, *, retention: bool = True) -> int:
        """Write what is queued; the number of rows written. A request that only needs its
        rows findable passes retention=False: retention is the background flush's work.
        `now` (tests): the time retention cuts by, instead of the store's clock."""
        with self._lock:
            rows = [self._queue.popleft() for _ in range(len(self._queue))]
            if not self._revive():
                self._requeue(rows)
                return 0
            written = self._write(rows) if rows else 0
            shadows = [self._shadows.popleft() for _ in range(len(self._shadows))]
            if shadows:
                self._guarded("shadow", self._write_shadows, shadows)
            cut_by, now = now, time.time() if now is None else now
            # held labels: joined when answers arrive, expired now and then even without traffic
            # (which also tells, with an empty queue, whether the store answers again)
            if self.after_write is not None and (written or now - self._last_join >= JOIN_IDLE_SECONDS):
                self._last_join = now
                if self._guarded("join", self.after_write, self._conn):
                    self._failed = False
            if retention and now - self._last_retention >= self.config.retention_check_seconds:
                self._last_retention = now  # a failed round waits for the next interval too
                self._guarded("retention", self._enforce_retention, cut_by)
        return written

    _failed = False  # the last contact with the store failed in a way that may pass (it is away)

    @property
    def failing(self) -> bool:
        """The store did not answer this worker's last write (or reconnect, or join): a request
        that needs it can be refused at once instead of waiting out a timeout."""
        return self._failed

    def _revive(self) -> bool:
        """A usable writer connection: the same one, or a new one if the store came back (or
        the SQLite file was replaced). False when the store cannot be reached now."""
        try:
            self._conn = self.db.revive(self._conn)
            return True
        except (*self.db.errors, OSError):
            metrics.LOG_ERRORS.labels("write").inc()
            self._failed = True
            log.warning("prediction log store %s unreachable; rows stay queued", self.db.describe())
            return False

    def _requeue(self, rows: list[tuple]) -> None:
        """Rows go back to the front of the queue for the next flush; what no longer fits is
        dropped and counted."""
        room = max(0, self.config.queue_size - len(self._queue))
        self._queue.extendleft(reversed(rows[:room]))
        if len(rows) > room:
            metrics.LOG_DROPPED.inc(len(rows) - room)

    def _write(self, rows: list[tuple]) -> int:
        from store import inputs

        sql = self.db.sql
        # captured inputs made ready (thumbnails encoded) before the transaction, written in it:
        # an input is never in the store without its answer's row
        stored = self.capture.prepared(self.capture.take()) if self.capture.enabled else []
        try:
            with self._conn.transaction():
                start = 0
                for size in sql_sqlite.chunk_sizes(len(rows), sql.ROWS_PER_STATEMENT):
                    chunk = rows[start:start + size]
                    self._conn.execute(sql.insert_predictions(COLUMNS, size), [v for row in chunk for v in row])
                    start += size
                inputs.insert(self._conn, stored)
        except self.db.transient:
            if stored:  # best effort: the rows are kept for the next flush, the images are not
                metrics.INPUTS_DROPPED.labels("write_failed").inc(len(stored))
            # locked, disk full, I/O error, the database away: conditions that pass
            metrics.LOG_ERRORS.labels("write").inc()
            self._failed = True
            self._requeue(rows)
            log.warning("could not write %d log rows; kept for the next flush (up to the queue size)", len(rows),
                        exc_info=log.isEnabledFor(logging.DEBUG))
            return 0
        except self.db.errors:  # anything else would fail again: drop the batch, counted
            metrics.LOG_ERRORS.labels("write").inc()
            metrics.LOG_DROPPED.inc(len(rows))
            if stored:
                metrics.INPUTS_DROPPED.labels("write_failed").inc(len(stored))
            log.warning("dropped %d log rows that could not be written", len(rows), exc_info=True)
            return 0
        self._failed = False
        metrics.LOG_WRITTEN.inc(len(rows))
        if stored:
            for reason, n in Counter(s.pending.reason for s in stored).items():
                metrics.INPUTS_CAPTURED.labels(reason).inc(n)
            # over the byte budget: the oldest inputs go (the whole store's, in a fleet)
            self._guarded("evict", lambda: self._evict(inputs))
        return len(rows)

    def _write_shadows(self, shadows: list[tuple]) -> None:
        """After the answers they follow (a shadow runs once its request is answered): a
        shadow answer whose request's row is not written yet waits in the table for it."""
        with self._conn.transaction():
            for start in range(0, len(shadows), SHADOW_ROWS_PER_STATEMENT):
                chunk = shadows[start:start + SHADOW_ROWS_PER_STATEMENT]
                self._conn.execute(
                    "INSERT INTO shadow_answers (request_id, model, label, ts) VALUES "
                    + ", ".join(["(?, ?, ?, ?)"] * len(chunk)) + " ON CONFLICT (request_id, model) DO NOTHING",
                    [v for row in chunk for v in row])

    def _evict(self, inputs) -> None:
        with self._conn.transaction():
            inputs.evict(self._conn, self.capture.config.max_bytes)

    def _guarded(self, stage: str, fn: Callable[..., Any], *args: Any) -> bool:
        try:
            fn(*args)
            return True
        except self.db.transient:
            self._failed = True
            metrics.LOG_ERRORS.labels(stage).inc()
            log.warning("log %s failed: the store is away", stage, exc_info=log.isEnabledFor(logging.DEBUG))
            return False
        except self.db.errors:
            metrics.LOG_ERRORS.labels(stage).inc()
            log.warning("log %s failed", stage, exc_info=log.isEnabledFor(logging.DEBUG))
            return False

    def _enforce_retention(self, now: float | None = None) -> None:
        """Delete predictions past their age or beyond the row count, and their feedback with them
        (left behind, feedback grew without bound and refused labels for reused ids). Ages are
        by the store's clock: a replica whose clock ran ahead had deleted the fleet's fresh rows
        (and claimed the task for as long as it ran ahead)."""
        from store import inputs

        now = store_now(self._conn) if now is None else now
        with self._conn.transaction():  # the claim commits at once: no lock held through the deletes
            if not claim(self._conn, "retention", now, self.config.retention_check_seconds):
                return  # another worker (or replica) did it within the interval
        with self._conn.transaction():
            cutoff = now - self.config.retention_days * 86400
            newest_kept = self._conn.execute("SELECT ts FROM predictions ORDER BY ts DESC LIMIT 1 OFFSET ?",
                                             (self.config.max_rows - 1,)).fetchone()
            if newest_kept is not None:
                cutoff = max(cutoff, newest_kept[0])
            self._conn.execute("DELETE FROM feedback WHERE request_id IN "
                               "(SELECT request_id FROM predictions WHERE ts < ?)", (cutoff,))
            self._conn.execute("DELETE FROM inputs WHERE ts < ?", (cutoff,))  # stamped as their rows are
            self._conn.execute("DELETE FROM shadow_answers WHERE ts < ?", (cutoff,))
            # automatic actions' decisions age out too, but an action's `applied` row stays: it is
            # how the chain in force names the actions it carries (store/alert_actions.py)
            self._conn.execute("DELETE FROM alert_actions WHERE ts < ? AND outcome <> 'applied'", (cutoff,))
            inputs.forget_erasures(self._conn, now)
            self._conn.execute("DELETE FROM predictions WHERE ts < ?", (cutoff,))


def claim(conn: Any, task: str, now: float, every: float) -> bool:
    """True for the one caller per `every` seconds that gets to run `task`, across every worker
    and replica sharing the store (the row's update is atomic); the others skip it. Retention
    on every replica every 30 s would scan the table 100 times as often in a 100-replica fleet."""
    return conn.execute(
        "INSERT INTO maintenance (task, last_run) VALUES (?, ?) ON CONFLICT (task) DO UPDATE "
        "SET last_run = excluded.last_run WHERE maintenance.last_run <= ?", (task, now, now - every)).rowcount == 1


# -- lookups (admin routes and CLI read the same file) -----------------------------------------------
def where(conditions: Sequence[tuple[str, Any]]) -> tuple[str, list[Any]]:
    """`WHERE ...` from (clause with one `?`, value) pairs whose value is not None; and its
    arguments. No condition left: an empty clause."""
    kept = [(clause, value) for clause, value in conditions if value is not None]
    sql = " AND ".join(clause for clause, _ in kept)
    return (f"WHERE {sql}" if sql else ""), [value for _, value in kept]


def query(conn: Any, *, since: float | None = None, until: float | None = None,
          subgroup: str | None = None, flag: str | None = None, action: str | None = None,
          model: str | None = None, correlation_id: str | None = None, flagged_only: bool = False,
          before: str | None = None, limit: int = 100, region: str | None = None) -> list[dict[str, Any]]:
    """Newest first; `before` (a request id from the previous page) continues after that row."""
    check_limit(limit)
    clause, args = where([
        ("ts >= ?", since), ("ts <= ?", until), ("subgroup = ?", subgroup), ("model = ?", model),
        ("region = ?", region),
        ("correlation_id = ?", correlation_id), ("flagged = ?", 1 if flagged_only else None),
        (dialect_of(conn).HAS_FLAG, flag or None), (dialect_of(conn).HAS_ACTION, action or None),
        ("(ts, request_id) < (SELECT ts, request_id FROM predictions WHERE request_id = ?)", before),
    ])
    sql = f"SELECT {', '.join(COLUMNS)} FROM predictions {clause} ORDER BY ts DESC, request_id DESC LIMIT ?"
    return [_row(r) for r in conn.execute(sql, (*args, int(limit)))]


def check_limit(limit: int) -> int:
    """A row count a caller asked for: a whole number of at least 1 (SQLite reads every row for
    LIMIT -1; PostgreSQL refuses it), else a ValueError saying so."""
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValueError(f"limit must be a whole number of at least 1, not {limit!r}")
    return limit


def get(conn: Any, request_id: str) -> dict[str, Any] | None:
    row = conn.execute(f"SELECT {', '.join(COLUMNS)} FROM predictions WHERE request_id = ?", (request_id,)).fetchone()
    return _row(row, probs=True) if row else None


def find_rows(conn: Any, key: str, columns: Sequence[str], limit: int = 10) -> list[tuple]:
    """`columns` of the answer whose request id is `key`; else of every answer (up to `limit`)
    whose client correlation id is `key`, newest first: a client may reuse its ids."""
    select = f"SELECT {', '.join(columns)} FROM predictions"
    rows = conn.execute(f"{select} WHERE request_id = ?", (key,)).fetchall()
    return rows or conn.execute(f"{select} WHERE correlation_id = ? ORDER BY ts DESC LIMIT ?", (key, limit)).fetchall()


def find(conn: Any, key: str, limit: int = 10) -> list[dict[str, Any]]:
    """find_rows, as full records (probabilities included)."""
    return [_row(r, probs=True) for r in find_rows(conn, key, COLUMNS, limit)]


def summary(conn: Any, since: float) -> list[dict[str, Any]]:
    """Per subgroup and flag: how many logged predictions carried it since `since`."""
    return [{"subgroup": s, "flag": f, "count": n} for s, f, n in conn.execute(dialect_of(conn).SUMMARY, (since,))]


def _row(row: tuple, probs: bool = False) -> dict[str, Any]:
    out = dict(zip(COLUMNS, row))
    for key in ("flags", "guardrails", "top_k"):
        out[key] = json.loads(out[key])
    out["abstained"], out["flagged"] = bool(out["abstained"]), bool(out["flagged"])
    blob = out.pop("probs")
    if probs:
        out["probs"] = [round(float(p), 6) for p in np.frombuffer(bytes(blob), dtype=np.float32)]
    return out


def parse_since(text: str | None, now: float | None = None) -> float | None:
    """'15m', '2h', '1d', '90s' before now (fleet time, as rows are stamped), or absolute Unix seconds."""
    if text is None:
        return None
    now = CLOCK.now() if now is None else now
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
