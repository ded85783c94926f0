"""The evidence an automatic action is gated on, read from the prediction log (the fleet's
when the log is PostgreSQL): how a model does on a subgroup where true labels arrived, and how
often its shadow answers agree with the answers given elsewhere.

A model's answers to a subgroup come from two places: requests it answered (routed to it) and
requests it shadowed (store: `shadow_answers`, written by the shadow guardrail's comparisons).
Abstentions are left out of accuracy, as the incident views leave them out.
"""

from __future__ import annotations

from typing import Any

LABELLED = """
SELECT COUNT(*), COALESCE(SUM(CASE WHEN a.label = f.label THEN 1 ELSE 0 END), 0) FROM (
    SELECT request_id, label FROM predictions
     WHERE model = ? AND subgroup = ? AND ts >= ? AND label IS NOT NULL
    UNION
    SELECT s.request_id, s.label FROM shadow_answers s JOIN predictions p USING (request_id)
     WHERE s.model = ? AND p.subgroup = ? AND s.ts >= ? AND s.label IS NOT NULL
) a JOIN feedback f USING (request_id)
"""
ANSWERED = """
SELECT COUNT(*), COALESCE(SUM(CASE WHEN p.label = f.label THEN 1 ELSE 0 END), 0)
  FROM predictions p JOIN feedback f USING (request_id)
 WHERE p.model = ? AND p.subgroup = ? AND p.ts >= ? AND p.label IS NOT NULL
"""
AGREEMENT_OUTSIDE = """
SELECT COUNT(*), COALESCE(SUM(CASE WHEN s.label = p.label THEN 1 ELSE 0 END), 0)
  FROM shadow_answers s JOIN predictions p USING (request_id)
 WHERE s.model = ? AND p.subgroup <> ? AND s.ts >= ? AND p.label IS NOT NULL
"""


def _ratio(row: tuple) -> tuple[int, float | None]:
    n, hits = int(row[0] or 0), int(row[1] or 0)
    return n, (round(hits / n, 4) if n else None)


def gather(conn: Any, *, model: str, primary: str, subgroup: str, since: float) -> dict[str, Any]:
    """What the gates read, as the audit keeps it: the model's labelled answers on the subgroup
    and their accuracy, the primary's on the same subgroup (what the action would replace), and
    the model's agreement with the answers given outside the subgroup (a model that disagrees
    where the primary is trusted is not one to route to)."""
    labelled, accuracy = _ratio(conn.execute(LABELLED, (model, subgroup, since, model, subgroup, since)).fetchone())
    primary_labelled, primary_accuracy = _ratio(conn.execute(ANSWERED, (primary, subgroup, since)).fetchone())
    compared, agreement = _ratio(conn.execute(AGREEMENT_OUTSIDE, (model, subgroup, since)).fetchone())
    return {"model": model, "subgroup": subgroup, "since": since,
            "labelled": labelled, "accuracy": accuracy,
            "primary": primary, "primary_labelled": primary_labelled, "primary_accuracy": primary_accuracy,
            "compared_outside": compared, "agreement_outside": agreement}


SINCE_ACTION = """
SELECT COUNT(*), COALESCE(SUM(CASE WHEN p.label IS NULL THEN 1 ELSE 0 END), 0),
       COALESCE(SUM(CASE WHEN f.label IS NOT NULL AND p.label = f.label THEN 1 ELSE 0 END), 0),
       COALESCE(SUM(CASE WHEN f.label IS NOT NULL AND p.label IS NOT NULL THEN 1 ELSE 0 END), 0)
  FROM predictions p LEFT JOIN feedback f USING (request_id)
 WHERE p.model = ? AND p.subgroup = ? AND p.ts >= ?
"""


def since_action(conn: Any, *, model: str, subgroup: str, since: float) -> dict[str, Any]:
    """What an action in force is watched on: the routed model's answers to the subgroup since
    `since`, their abstentions and (where labels arrived) accuracy, and the share of the
    subgroup's requests whose route failed (the primary answered instead)."""
    from store.database import dialect_of

    answers, abstained, correct, labelled = conn.execute(
        SINCE_ACTION, (model, subgroup, since)).fetchone()
    requests, fallbacks = conn.execute(
        f"SELECT COUNT(*), COALESCE(SUM(CASE WHEN {dialect_of(conn).HAS_ACTION} THEN 1 ELSE 0 END), 0) "
        "FROM predictions WHERE subgroup = ? AND ts >= ?", ("fallback", subgroup, since)).fetchone()
    answers, abstained, labelled, correct = int(answers), int(abstained), int(labelled or 0), int(correct or 0)
    requests, fallbacks = int(requests), int(fallbacks or 0)
    return {"model": model, "subgroup": subgroup, "since": since, "answers": answers,
            "abstention": round(abstained / answers, 4) if answers else None,
            "labelled": labelled, "accuracy": round(correct / labelled, 4) if labelled else None,
            "requests": requests, "fallback": round(fallbacks / requests, 4) if requests else None}
