"""Ground truth arrives late: join true labels with the logged predictions.

Each item is answered on its own: `recorded` (201), `duplicate` (the same label again, 200:
idempotent), `conflict` (a different label for a request that already has one, 409: never
overwritten silently), `unknown_request` (404: not in the log, or no longer), `unknown_label`
(422: not a class of the model that answered), `invalid_request_id` (400: not an id at all),
`ambiguous_request_id` (409: a client correlation id that names several answers), `held`
(202: no answer with this id is written yet, or it was answered by a model this replica does
not load, so the label waits, see below), `hold_full` (503: too many labels wait already;
send it again later), `model_not_here` (409: answered by a model this replica does not load,
with holding off).

Answers reach the log a flush after they are served (and in a fleet, through another
replica), so a label can arrive first. A key that could still be written (a service id minted
within `hold.seconds`, or a client correlation id) with a label some loaded model knows is
held in `held_feedback`; every log flush with new rows (and every few seconds without) joins
the held labels whose answers have arrived and drops those older than `hold.seconds`, each
counted (`classguard_feedback_held_total`). Holding is on only when every answer is logged
(`log.mode: all`): with sampling an answer may never be written, and its label would wait
for nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence, TypeVar

import numpy as np

from core import metrics
from core.ids import is_lookup_id, minted_at
from core.keys import pair_name
from monitors.estimates import PublishedEstimate
from store import sql_postgres
from store.clock import store_now
from store.prediction_log import find_rows, where

STATUS = {"recorded": 201, "duplicate": 200, "conflict": 409, "unknown_request": 404, "unknown_label": 422,
          "invalid_request_id": 400, "ambiguous_request_id": 409, "held": 202, "hold_full": 503,
          "model_not_here": 409}
JOIN_BATCH = 1_000  # held labels joined per flush at most
HELD_LOCAL = "model_not_here"  # an answer of a model this replica does not load (a rolling update)
FEEDBACK_LOCK = 0x6665656462  # pg_advisory_xact_lock key of feedback writes (shared; alone for a retry)
T = TypeVar("T")


@dataclass(frozen=True)
class Hold:
    seconds: float = 120.0  # 0 (or most=0): no holding, an id not in the log is a 404 at once
    most: int = 10_000

    @property
    def enabled(self) -> bool:
        return self.seconds > 0 and self.most > 0


def record(conn: Any, items: Sequence[tuple[str, str]], labels_of: Mapping[str, Sequence[str]],
           pairs: Sequence[tuple[str, str]], hold: Hold = Hold(), now: float | None = None,
           estimates: Mapping[str, PublishedEstimate] | None = None) -> list[dict[str, Any]]:
    """Store (request id or correlation id, true label) pairs in one transaction; once it has
    committed, update the realized-accuracy metrics for the new ones (a batch that fails
    part-way is rolled back, and so must its counts be), and, with the loaded models'
    `estimates`, what the published estimate said of the same answers. Results come in the
    items' order."""
    results, new, newly_held = _serialized(conn, _record_all, items, labels_of, hold, now)
    _count(new, pairs, estimates)
    if newly_held:
        metrics.FEEDBACK_HELD.labels("held").inc(newly_held)
    if full := sum(r["result"] == "hold_full" for r in results):
        metrics.FEEDBACK_HELD.labels("full").inc(full)
    return results


def _record_all(conn: Any, items: Sequence[tuple[str, str]], labels_of: Mapping[str, Sequence[str]],
                hold: Hold, now: float | None) -> tuple[list[dict[str, Any]], list[tuple], int]:
    """(results in the items' order, newly recorded answers, labels newly held), inside the
    caller's transaction. On PostgreSQL items are written in key order: two posts for the same
    answers in opposite orders then lock their rows in one order and queue instead of
    deadlocking (SQLite's write lock already queues them: there, the items' order)."""
    results: list[dict[str, Any]] = [{}] * len(items)
    new, newly_held = [], 0
    waiting: list[int] = []  # labels held now, counted once per batch when first needed
    # the store's clock: the ids were minted, and other replicas expire held labels, by it
    now = store_now(conn) if now is None else now
    every_label = {label for labels in labels_of.values() for label in labels}
    order = range(len(items))
    if isinstance(conn, sql_postgres.Connection):
        order = sorted(order, key=lambda i: items[i][0])
    for i in order:
        key, truth = items[i]
        result, joined = _record_one(conn, key, truth, labels_of, now)
        early = result["result"] == "unknown_request" and _may_arrive(key, hold, now)
        if early and truth not in every_label:  # judged now: a typo never waits to be dropped
            result = _result(key, "unknown_label", f"{truth[:64]!r} is not a class of any loaded model")
        elif early or (result["result"] == HELD_LOCAL and hold.enabled):
            result, inserted = _hold(conn, key, truth, hold, now, waiting)
            newly_held += inserted
        results[i] = result
        if joined is not None:
            new.append(joined)
    return results, new, newly_held


def _serialized(conn: Any, fn: Callable[..., T], *args: Any) -> T:
    """`fn(conn, *args)` in one write transaction that cannot fail because another feedback
    write ran at the same moment. SQLite: the write lock, taken first, queues writers.
    PostgreSQL: writers run side by side (each holding the feedback lock shared), writing in
    key order; when two still deadlock (a request id in one and its correlation id in the
    other), the one PostgreSQL aborted runs again holding the lock alone, so nothing can
    deadlock with it. Two posts of the same 400 answers in opposite orders had deadlocked in
    every round and answered 503 `store_unavailable`, as if the store were away."""
    if not isinstance(conn, sql_postgres.Connection):
        with conn.transaction(exclusive=True):
            return fn(conn, *args)
    try:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock_shared(?)", (FEEDBACK_LOCK,))
            return fn(conn, *args)
    except sql_postgres.write_conflicts():
        metrics.FEEDBACK_RETRIES.inc()
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(?)", (FEEDBACK_LOCK,))
        return fn(conn, *args)


def _count(new: Sequence[tuple], pairs: Sequence[tuple[str, str]],
           estimates: Mapping[str, PublishedEstimate] | None = None) -> None:
    for model, subgroup, emitted, truth, outcome, probs in new:
        metrics.FEEDBACK.labels(model, subgroup, outcome).inc()
        if estimates is not None and model in estimates and outcome != "abstained":
            # the estimate's credit for an answer whose truth is now known, beside
            # classguard_feedback_total: their ratio over a window is realized vs estimated
            credit = _credit(estimates[model], probs, subgroup)
            if credit is not None:
                metrics.FEEDBACK_ESTIMATED.labels(model, subgroup).inc(credit)
        for source, target in pairs:
            if truth == source and emitted == target:
                metrics.FEEDBACK_CONFUSIONS.labels(pair_name(source, target), model, subgroup).inc()


def _credit(estimate: PublishedEstimate, probs: bytes | None, subgroup: str) -> float | None:
    """The published estimate's credit for one logged answer; None for a row without usable
    probabilities (the service always writes them; a hand-made row must not fail a label
    already committed)."""
    blob = bytes(probs or b"")
    if not blob or len(blob) % 4:
        return None
    return float(estimate.credit_probs(np.frombuffer(blob, dtype=np.float32)[None], subgroup)[0])


def _may_arrive(key: str, hold: Hold, now: float) -> bool:
    """Could an answer with this key still be written? A service id tells when it was minted;
    a client correlation id does not, so it is given the benefit of the doubt."""
    if not hold.enabled:
        return False
    minted = minted_at(key)
    return minted is None or now - minted <= hold.seconds


def _hold(conn: Any, key: str, truth: str, hold: Hold, now: float, waiting: list[int]) -> tuple[dict[str, Any], bool]:
    """(the item's result, whether this call added the held row). `waiting` carries the number
    of held labels through a batch: read once, then kept up to date here."""
    held = _result(key, "held", f"no answer with this id is logged yet (or its model is not loaded here); the "
                                f"label is held for {hold.seconds:g} s and joined when the answer is written")
    if not waiting:
        waiting.append(conn.execute("SELECT COUNT(*) FROM held_feedback").fetchone()[0])
    if waiting[0] >= hold.most:
        known = conn.execute("SELECT label FROM held_feedback WHERE key = ?", (key,)).fetchone()
        if known is None:
            return _result(key, "hold_full", f"{hold.most} labels already wait for their answers; send it again "
                                             "later"), False
    inserted = conn.execute("INSERT INTO held_feedback (key, label, ts) VALUES (?, ?, ?) ON CONFLICT (key) DO NOTHING",
                            (key, truth, now)).rowcount == 1
    waiting[0] += inserted
    if not inserted:  # held already (by this post, an earlier one, or another replica's just now)
        known = conn.execute("SELECT label FROM held_feedback WHERE key = ?", (key,)).fetchone()
        if known is not None and known[0] != truth:
            return _result(key, "conflict", f"already held as {known[0]!r}"), False
    return held, inserted


# held labels whose answers are written (by request id, or by a correlation id), in key order
_ARRIVED = """SELECT h.key, h.label FROM held_feedback h
              WHERE EXISTS (SELECT 1 FROM predictions p WHERE p.request_id = h.key)
                 OR EXISTS (SELECT 1 FROM predictions p WHERE p.correlation_id = h.key)
              ORDER BY h.key LIMIT ?"""


def join_held(conn: Any, labels_of: Mapping[str, Sequence[str]], pairs: Sequence[tuple[str, str]],
              hold: Hold = Hold(), now: float | None = None,
              estimates: Mapping[str, PublishedEstimate] | None = None) -> dict[str, int]:
    """Join held labels whose answers are now written; drop those held longer than
    `hold.seconds` (by the store's clock, which held them). Replicas may run this at once: a
    label is joined by whoever deletes it (rows taken in key order, so two joiners lock them in
    the same order). An answer of a model this replica does not load is left for a replica
    that does."""
    if conn.execute("SELECT 1 FROM held_feedback LIMIT 1").fetchone() is None:
        return {}
    new, outcome = _serialized(conn, _join_all, labels_of, hold, now)
    _count(new, pairs, estimates)
    for name, n in outcome.items():
        if n:
            metrics.FEEDBACK_HELD.labels(name).inc(n)
    return outcome


def _join_all(conn: Any, labels_of: Mapping[str, Sequence[str]], hold: Hold,
              now: float | None) -> tuple[list[tuple], dict[str, int]]:
    now = store_now(conn) if now is None else now
    new, outcome = [], {"joined": 0, "expired": 0, "rejected": 0}
    outcome["expired"] = conn.execute("DELETE FROM held_feedback WHERE ts < ?", (now - hold.seconds,)).rowcount
    for key, truth in conn.execute(_ARRIVED, (JOIN_BATCH,)).fetchall():
        rows = find_rows(conn, key, ("model",))
        if len(rows) == 1 and rows[0][0] not in labels_of:
            continue
        if not conn.execute("DELETE FROM held_feedback WHERE key = ?", (key,)).rowcount:
            continue  # another replica joined it first
        result, joined = _record_one(conn, key, truth, labels_of, now)
        if joined is not None:
            new.append(joined)
        outcome["joined" if result["result"] in ("recorded", "duplicate") else "rejected"] += 1
    return new, outcome


def _record_one(conn: Any, key: str, truth: str, labels_of: Mapping[str, Sequence[str]], now: float):
    """(the item's result, (model, subgroup, emitted, truth, outcome, probs) when newly recorded, else None)."""
    if not is_lookup_id(key):
        return _result(None, "invalid_request_id", "request_id must be 1-80 of A-Z a-z 0-9 . _ : -"), None
    rows = find_rows(conn, key, ("request_id", "model", "subgroup", "label", "probs"))  # a correlation id must name one
    if not rows:
        return _result(key, "unknown_request", "no logged prediction has this request id"), None
    if len(rows) > 1:
        return _result(key, "ambiguous_request_id",
                       f"this correlation id names several answers; send one of their request ids: "
                       f"{', '.join(r[0] for r in rows)}"), None
    request_id, model, subgroup, emitted, probs = rows[0]
    if model not in labels_of:  # another replica loads it: the label waits for one that can judge it
        return _result(key, HELD_LOCAL, f"answered by {model}, which this replica does not load"), None
    if truth not in labels_of[model]:
        return _result(key, "unknown_label", f"{truth[:64]!r} is not a class of {model}"), None
    inserted = conn.execute("INSERT INTO feedback (request_id, label, ts) VALUES (?, ?, ?) "
                            "ON CONFLICT (request_id) DO NOTHING", (request_id, truth, now)).rowcount
    if not inserted:
        known = conn.execute("SELECT label FROM feedback WHERE request_id = ?", (request_id,)).fetchone()[0]
        same = known == truth
        return _result(key, "duplicate" if same else "conflict",
                       "already recorded" if same else f"already recorded as {known!r}", request_id), None
    outcome = "abstained" if emitted is None else "correct" if emitted == truth else "wrong"
    return _result(key, "recorded", outcome, request_id), (model, subgroup, emitted, truth, outcome, probs)


def _result(key: str | None, result: str, detail: str, request_id: str | None = None) -> dict[str, Any]:
    out = {"request_id": request_id or key, "result": result, "status": STATUS[result], "detail": detail}
    if request_id is not None and request_id != key:
        out["correlation_id"] = key  # the item named its answer by the client's id
    return out


def confusion(conn: Any, *, subgroup: str | None = None, model: str | None = None, since: float | None = None,
              until: float | None = None, region: str | None = None) -> dict[tuple[str, str], int]:
    """(true label, emitted label or 'abstained') -> count, over predictions with feedback."""
    clause, args = where([("p.subgroup = ?", subgroup), ("p.model = ?", model), ("p.ts >= ?", since),
                          ("p.ts <= ?", until), ("p.region = ?", region)])
    sql = (f"SELECT f.label, COALESCE(p.label, 'abstained'), COUNT(*) FROM predictions p JOIN feedback f "
           f"USING (request_id) {clause} GROUP BY 1, 2")
    return {(t, e): n for t, e, n in conn.execute(sql, args)}
