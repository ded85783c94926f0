"""Ground truth arrives late: join true labels with the logged predictions.

Each item is answered on its own: `recorded` (201), `duplicate` (the same label again, 200:
idempotent), `conflict` (a different label for a request that already has one, 409: never
overwritten silently), `unknown_request` (404: not in the log, or no longer), `unknown_label`
(422: not a class of the model that answered), `invalid_request_id` (400: not an id at all),
`ambiguous_request_id` (409: a client correlation id that names several answers).
"""

from __future__ import annotations

import sqlite3
import time
from typing import Any, Mapping, Sequence

from monitors.keys import pair_name
from service import metrics
from service.ids import is_lookup_id
from store.prediction_log import find_rows, where

STATUS = {"recorded": 201, "duplicate": 200, "conflict": 409, "unknown_request": 404, "unknown_label": 422,
          "invalid_request_id": 400, "ambiguous_request_id": 409}


def record(conn: sqlite3.Connection, items: Sequence[tuple[str, str]], labels_of: Mapping[str, Sequence[str]],
           pairs: Sequence[tuple[str, str]]) -> list[dict[str, Any]]:
    """Store (request id or correlation id, true label) pairs in one transaction; once it has
    committed, update the realized-accuracy metrics for the new ones (a batch that fails
    part-way is rolled back, and so must its counts be)."""
    results, new = [], []
    # the write lock first: two posts for one id then queue on it instead of racing from
    # "not recorded yet" to a failed insert
    conn.execute("BEGIN IMMEDIATE")
    try:
        for key, truth in items:
            result, joined = _record_one(conn, key, truth, labels_of)
            results.append(result)
            if joined is not None:
                new.append(joined)
        conn.commit()
    except BaseException:
        conn.rollback()
        raise
    for model, subgroup, emitted, truth, outcome in new:
        metrics.FEEDBACK.labels(model, subgroup, outcome).inc()
        for source, target in pairs:
            if truth == source and emitted == target:
                metrics.FEEDBACK_CONFUSIONS.labels(pair_name(source, target), model, subgroup).inc()
    return results


def _record_one(conn: sqlite3.Connection, key: str, truth: str, labels_of: Mapping[str, Sequence[str]]):
    """(the item's result, (model, subgroup, emitted, truth, outcome) when newly recorded, else None)."""
    if not is_lookup_id(key):
        return _result(None, "invalid_request_id", "request_id must be 1-80 of A-Z a-z 0-9 . _ : -"), None
    rows = find_rows(conn, key, ("request_id", "model", "subgroup", "label"))  # a correlation id must name one
    if not rows:
        return _result(key, "unknown_request", "no logged prediction has this request id"), None
    if len(rows) > 1:
        return _result(key, "ambiguous_request_id",
                       f"this correlation id names several answers; send one of their request ids: "
                       f"{', '.join(r[0] for r in rows)}"), None
    request_id, model, subgroup, emitted = rows[0]
    if truth not in labels_of.get(model, ()):
        return _result(key, "unknown_label", f"{truth[:64]!r} is not a class of {model}"), None
    inserted = conn.execute("INSERT INTO feedback (request_id, label, ts) VALUES (?, ?, ?) "
                            "ON CONFLICT (request_id) DO NOTHING", (request_id, truth, time.time())).rowcount
    if not inserted:
        known = conn.execute("SELECT label FROM feedback WHERE request_id = ?", (request_id,)).fetchone()[0]
        same = known == truth
        return _result(key, "duplicate" if same else "conflict",
                       "already recorded" if same else f"already recorded as {known!r}", request_id), None
    outcome = "abstained" if emitted is None else "correct" if emitted == truth else "wrong"
    return _result(key, "recorded", outcome, request_id), (model, subgroup, emitted, truth, outcome)


def _result(key: str | None, result: str, detail: str, request_id: str | None = None) -> dict[str, Any]:
    out = {"request_id": request_id or key, "result": result, "status": STATUS[result], "detail": detail}
    if request_id is not None and request_id != key:
        out["correlation_id"] = key  # the item named its answer by the client's id
    return out


def confusion(conn: sqlite3.Connection, *, subgroup: str | None = None, model: str | None = None,
              since: float | None = None) -> dict[tuple[str, str], int]:
    """(true label, emitted label or 'abstained') -> count, over predictions with feedback."""
    clause, args = where([("p.subgroup = ?", subgroup), ("p.model = ?", model), ("p.ts >= ?", since)])
    sql = (f"SELECT f.label, COALESCE(p.label, 'abstained'), COUNT(*) FROM predictions p JOIN feedback f "
           f"USING (request_id) {clause} GROUP BY 1, 2")
    return {(t, e): n for t, e, n in conn.execute(sql, args)}
