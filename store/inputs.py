"""Captured input images in the store (table `inputs`, beside `predictions`), keyed by the
answer's request id: written in the prediction log's transaction, deleted with its log row by
retention, evicted oldest first beyond capture.max_bytes, erased on request.

Reading one back always gives a PNG re-encoded from the pixels (`as_png`): whatever bytes a
client uploaded (a PNG with HTML after its end, say) never reach a browser as they came.
"""

from __future__ import annotations

import io
import logging
from typing import Any, Sequence

import numpy as np

from core import metrics
from store import sql_sqlite
from store.capture import NPY, Stored, png, thumbnail, to_uint8
from store.database import dialect_of
from store.prediction_log import check_limit, where

COLUMNS = ("request_id", "ts", "model", "subgroup", "region", "reason", "media_type", "original", "thumbnail",
           "bytes")
log = logging.getLogger("classguard.capture")
MAX_PAGE = 1_000
EVICT_CHUNK = 500  # oldest rows looked at per eviction round


TOMBSTONE_SECONDS = 3_600.0  # how long an erasure keeps refusing late writes of what it named
# An input is written only if no erasure named it: an erasure on one worker (or replica) cannot
# reach another worker's queue, which writes what it holds within a flush; the erasure's record
# (a tombstone) makes that write a no-op, and retention deletes anything that slipped past.
NOT_ERASED = ("NOT EXISTS (SELECT 1 FROM erased_inputs e WHERE e.request_id = ?) "
              "AND NOT EXISTS (SELECT 1 FROM erased_ranges r WHERE ? BETWEEN r.since AND r.until)")


def insert(conn: Any, stored: Sequence[Stored]) -> int:
    """Write captured inputs (inside the caller's transaction), except those an erasure named;
    bytes offered."""
    if not stored:
        return 0
    rows = [(s.pending.request_id, s.pending.ts, s.pending.model, s.pending.subgroup, s.pending.region,
             s.pending.reason, s.media_type, s.original, s.thumbnail, s.size, s.pending.request_id, s.pending.ts)
            for s in stored]
    sql = dialect_of(conn).insert_inputs(COLUMNS, NOT_ERASED)
    for row in rows:
        conn.execute(sql, row)
    return sum(s.size for s in stored)


def forget_erasures(conn: Any, now: float) -> None:
    """Retention's share: inputs an erasure named that were written anyway (a write racing the
    erasure's transaction) are deleted; tombstones past TOMBSTONE_SECONDS are dropped."""
    conn.execute("DELETE FROM inputs WHERE request_id IN (SELECT request_id FROM erased_inputs)")
    conn.execute("DELETE FROM inputs WHERE EXISTS (SELECT 1 FROM erased_ranges r WHERE inputs.ts BETWEEN r.since "
                 "AND r.until)")
    conn.execute("DELETE FROM erased_inputs WHERE ts < ?", (now - TOMBSTONE_SECONDS,))
    conn.execute("DELETE FROM erased_ranges WHERE ts < ?", (now - TOMBSTONE_SECONDS,))


def stored_bytes(conn: Any) -> int:
    return int(conn.execute("SELECT COALESCE(SUM(bytes), 0) FROM inputs").fetchone()[0])


def evict(conn: Any, max_bytes: int) -> int:
    """Delete the oldest inputs until the store holds at most `max_bytes` of them; how many went."""
    total, evicted = stored_bytes(conn), 0
    while total > max_bytes:
        oldest = conn.execute("SELECT request_id, bytes FROM inputs ORDER BY ts, request_id LIMIT ?",
                              (EVICT_CHUNK,)).fetchall()
        if not oldest:
            break
        doomed = []
        for request_id, size in oldest:
            if total <= max_bytes:
                break
            doomed.append(request_id)
            total -= size
        _delete(conn, doomed)
        evicted += len(doomed)
    metrics.INPUTS_BYTES.set(total)
    if evicted:
        metrics.INPUTS_EVICTED.inc(evicted)
    return evicted


def _delete(conn: Any, request_ids: Sequence[str]) -> int:
    gone = 0
    for start in range(0, len(request_ids), 500):
        chunk = request_ids[start:start + 500]
        gone += conn.execute(f"DELETE FROM inputs WHERE request_id IN ({', '.join('?' * len(chunk))})",
                             chunk).rowcount
    return gone


def erase(conn: Any, *, request_ids: Sequence[str] = (), since: float | None = None,
          until: float | None = None) -> int:
    """Delete the inputs of these requests, or of every request answered in [since, until] (until:
    now, by the store's clock, when not given); how many were deleted. The erasure is recorded
    for TOMBSTONE_SECONDS, so an input still queued on another worker or replica is not
    written after it."""
    from store.clock import store_now

    if not request_ids and since is None and until is None:
        raise ValueError("name the inputs to erase: request ids, or a time range (since and/or until)")
    sqlite = dialect_of(conn) is sql_sqlite
    if sqlite:  # deleted content zeroed, not left in free pages (the default depends on how SQLite was built)
        conn.execute("PRAGMA secure_delete = ON")
    now = store_now(conn)
    with conn.transaction():
        if request_ids:
            ids = list(dict.fromkeys(request_ids))
            for request_id in ids:
                conn.execute(dialect_of(conn).UPSERT_ERASED_INPUT, (request_id, now))
            gone = _delete(conn, ids)
        else:
            until = min(until, now) if until is not None else now
            since = since if since is not None else 0.0
            conn.execute("INSERT INTO erased_ranges (since, until, ts) VALUES (?, ?, ?)", (since, until, now))
            gone = conn.execute("DELETE FROM inputs WHERE ts >= ? AND ts <= ?", (since, until)).rowcount
    if gone and sqlite:
        _truncate_wal(conn)
    if gone:
        metrics.INPUTS_ERASED.inc(gone)
    return gone


def _truncate_wal(conn: Any) -> None:
    """The write-ahead log still holds each erased image as it was inserted (measured: an
    erased upload's bytes stayed in predictions.sqlite-wal, beside a file that had none):
    checkpoint it into the (zeroed) database pages and truncate it. A reader in the middle of
    a long query can keep it from completing; the next erase or SQLite's own checkpoints
    overwrite it later."""
    busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    if busy:
        log.warning("erased inputs may stay in the SQLite write-ahead log until its next checkpoint: a reader "
                    "kept it busy")


def get(conn: Any, request_id: str) -> dict[str, Any] | None:
    row = conn.execute(f"SELECT {', '.join(COLUMNS)} FROM inputs WHERE request_id = ?", (request_id,)).fetchone()
    return dict(zip(COLUMNS, row)) if row else None


def query(conn: Any, *, since: float | None = None, until: float | None = None, region: str | None = None,
          subgroup: str | None = None, model: str | None = None, flag: str | None = None, labelled: bool = False,
          after: str | tuple[float, str] | None = None, limit: int = 100,
          thumbnails: bool = False) -> list[dict[str, Any]]:
    """Captured inputs with their logged answer and true label (where feedback arrived), oldest
    first (exports read in a stable order). `after`: continue after the input of that request
    id, or after that (ts, request id). The request id is looked up among the answers, which
    outlive their inputs: pages are read oldest first, and the oldest inputs are the ones
    eviction takes, so the previous page's last input may be gone (an empty page then ended
    an export early, silently). An answer gone too (retention) matches nothing: see `anchored`."""
    check_limit(limit)
    anchor = ("(i.ts, i.request_id) > (?, ?)" if isinstance(after, tuple)
              else "(i.ts, i.request_id) > (SELECT ts, request_id FROM predictions WHERE request_id = ?)")
    clause, args = where([
        ("i.ts >= ?", since), ("i.ts <= ?", until), ("i.region = ?", region), ("i.subgroup = ?", subgroup),
        ("i.model = ?", model), (dialect_of(conn).HAS_FLAG, flag or None),
        ("f.label IS NOT NULL AND ? = 1", 1 if labelled else None), (anchor, after),
    ])
    args = [v for arg in args for v in (arg if isinstance(arg, tuple) else (arg,))]  # the (ts, id) anchor: two
    extra = ", i.thumbnail" if thumbnails else ""
    rows = conn.execute(
        "SELECT i.request_id, i.ts, i.model, i.subgroup, i.region, i.reason, i.media_type, i.bytes, p.label, "
        f"p.model_version, p.flags, p.correlation_id, f.label{extra} FROM inputs i "
        "LEFT JOIN predictions p USING (request_id) LEFT JOIN feedback f USING (request_id) "
        f"{clause} ORDER BY i.ts, i.request_id LIMIT ?", (*args, int(limit))).fetchall()
    import json

    out = []
    for r in rows:
        item = {"request_id": r[0], "ts": r[1], "model": r[2], "subgroup": r[3], "region": r[4], "reason": r[5],
                "media_type": r[6], "bytes": r[7], "predicted": r[8], "model_version": r[9],
                "flags": json.loads(r[10]) if r[10] else [], "correlation_id": r[11], "truth": r[12]}
        if thumbnails:
            item["thumbnail"] = bytes(r[13])
        out.append(item)
    return out


def anchored(conn: Any, request_id: str) -> bool:
    """Whether `query(after=request_id)` can continue after it: its answer is still logged."""
    return conn.execute("SELECT 1 FROM predictions WHERE request_id = ?", (request_id,)).fetchone() is not None


def as_png(row: dict[str, Any], *, thumbnail_only: bool = False, side: int = 64) -> bytes:
    """The stored input as a PNG made anew from its pixels (its thumbnail when asked, or when
    only the thumbnail was kept)."""
    from PIL import Image

    if thumbnail_only or row["original"] is None:
        return png(Image.open(io.BytesIO(bytes(row["thumbnail"]))))  # re-encoded: what is served is ours
    data = bytes(row["original"])
    if row["media_type"] == NPY:
        return png(Image.fromarray(to_uint8(np.load(io.BytesIO(data), allow_pickle=False))))
    image = Image.open(io.BytesIO(data))
    return thumbnail(image, max(image.size))  # full size, first frame, 8-bit grey or RGB


def totals(conn: Any, *, since: float | None = None, until: float | None = None, region: str | None = None,
           subgroup: str | None = None, model: str | None = None, flag: str | None = None) -> dict[str, int]:
    """Of the logged answers matching the filters: how many there are, how many kept their input,
    how many have a true label, and how many have both (what an export can train on)."""
    clause, args = where([("p.ts >= ?", since), ("p.ts <= ?", until), ("p.region = ?", region),
                          ("p.subgroup = ?", subgroup), ("p.model = ?", model),
                          (dialect_of(conn).HAS_FLAG.replace("flags", "p.flags"), flag or None)])
    answers, captured, labelled, both = conn.execute(
        "SELECT COUNT(*), COUNT(i.request_id), COUNT(f.label), "
        "SUM(CASE WHEN i.request_id IS NOT NULL AND f.label IS NOT NULL THEN 1 ELSE 0 END) FROM predictions p "
        "LEFT JOIN inputs i USING (request_id) LEFT JOIN feedback f USING (request_id) " + clause, args).fetchone()
    return {"answers": answers, "captured": captured, "labelled": labelled, "captured_and_labelled": both or 0}
