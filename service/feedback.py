"""Ground truth arrives late: join true labels with the logged predictions.

Each item is answered on its own: `recorded` (201), `duplicate` (the same label again, 200:
idempotent), `conflict` (a different label for a request that already has one, 409: never
overwritten silently), `unknown_request` (404: not in the log, or no longer), `unknown_label`
(422: not a class of the model that answered).
"""

from __future__ import annotations

import sqlite3
import time
from typing import Any, Mapping, Sequence

from service import metrics
from service.prediction_log import where

STATUS = {"recorded": 201, "duplicate": 200, "conflict": 409, "unknown_request": 404, "unknown_label": 422}


def record(conn: sqlite3.Connection, items: Sequence[tuple[str, str]], labels_of: Mapping[str, Sequence[str]],
           pairs: Sequence[tuple[str, str]]) -> list[dict[str, Any]]:
    """Store (request_id, true label) pairs; update the realized-accuracy metrics for new ones."""
    results = []
    with conn:
        for request_id, truth in items:
            row = conn.execute("SELECT model, subgroup, label FROM predictions WHERE request_id = ?",
                               (request_id,)).fetchone()
            if row is None:
                results.append(_result(request_id, "unknown_request", "no logged prediction has this request id"))
                continue
            model, subgroup, emitted = row
            if truth not in labels_of.get(model, ()):
                results.append(_result(request_id, "unknown_label", f"{truth!r} is not a class of {model}"))
                continue
            known = conn.execute("SELECT label FROM feedback WHERE request_id = ?", (request_id,)).fetchone()
            if known is not None:
                same = known[0] == truth
                results.append(_result(request_id, "duplicate" if same else "conflict",
                                       "already recorded" if same else f"already recorded as {known[0]!r}"))
                continue
            conn.execute("INSERT INTO feedback (request_id, label, ts) VALUES (?, ?, ?)", (request_id, truth, time.time()))
            outcome = "abstained" if emitted is None else "correct" if emitted == truth else "wrong"
            metrics.FEEDBACK.labels(model, subgroup, outcome).inc()
            for source, target in pairs:
                if truth == source and emitted == target:
                    metrics.FEEDBACK_CONFUSIONS.labels(f"{source}->{target}", model, subgroup).inc()
            results.append(_result(request_id, "recorded", outcome))
    return results


def _result(request_id: str, result: str, detail: str) -> dict[str, Any]:
    return {"request_id": request_id, "result": result, "status": STATUS[result], "detail": detail}


def confusion(conn: sqlite3.Connection, *, subgroup: str | None = None, model: str | None = None,
              since: float | None = None) -> dict[tuple[str, str], int]:
    """(true label, emitted label or 'abstained') -> count, over predictions with feedback."""
    clause, args = where([("p.subgroup = ?", subgroup), ("p.model = ?", model), ("p.ts >= ?", since)])
    sql = (f"SELECT f.label, COALESCE(p.label, 'abstained'), COUNT(*) FROM predictions p JOIN feedback f "
           f"USING (request_id) {clause} GROUP BY 1, 2")
    return {(t, e): n for t, e, n in conn.execute(sql, args)}
