"""The ledger of automatic actions: a row per decision on an alert Alertmanager posted, in the
store every replica shares (SQLite on one host, PostgreSQL in a fleet).

Each row's `key` names the notification it answers (rule, the alert's fingerprint and start,
firing or resolved) and is unique: Alertmanager repeats notifications and may post them to any
replica, and the first writer of a key is the only one to act on it. Rows are written while
the guardrail chain's lock is held (runtime/automation.py), so the checks a decision makes
(rate limits, actions in force) see every earlier decision of the fleet. Times are the store's
clock, never a replica's.

Which automatic actions are in force follows from the chain: the active chain's hash names the
`applied` row that installed it, whose `base_hash` names the chain it was put in front of, and
so on down to a chain no automatic action installed (a person's, or the start-up one). A swap
by a person therefore ends every automatic action at once.
"""

from __future__ import annotations

import json
from typing import Any

COLUMNS = ("id", "ts", "key", "rule", "alertname", "subgroup", "status", "outcome", "reason", "evidence",
           "chain_hash", "base_hash", "base_profile", "guardrails", "replica")
JSON_COLUMNS = frozenset({"evidence", "guardrails"})
MAX_PAGE = 1_000


def seen(conn: Any, *keys: str) -> bool:
    """Whether a decision on any of `keys` is recorded."""
    marks = ", ".join("?" * len(keys))
    return conn.execute(f"SELECT 1 FROM alert_actions WHERE key IN ({marks}) LIMIT 1", keys).fetchone() is not None


def record(conn: Any, row: dict[str, Any]) -> bool:
    """Write a decision; False when its key was recorded already (another replica decided)."""
    names = [c for c in COLUMNS if c != "id"]
    values = [json.dumps(row.get(c)) if c in JSON_COLUMNS else row.get(c) for c in names]
    return conn.execute(f"INSERT INTO alert_actions ({', '.join(names)}) VALUES ({', '.join('?' * len(names))}) "
                        "ON CONFLICT (key) DO NOTHING", values).rowcount == 1


def last_applied(conn: Any, rule: str) -> float | None:
    row = conn.execute("SELECT MAX(ts) FROM alert_actions WHERE rule = ? AND outcome = 'applied'", (rule,)).fetchone()
    return row[0] if row else None


def in_force(conn: Any, chain_hash: str, depth: int = 32) -> list[dict[str, Any]]:
    """The automatic actions the chain with this hash carries, the newest first."""
    found: list[dict[str, Any]] = []
    while len(found) < depth:
        row = conn.execute(f"SELECT {', '.join(COLUMNS)} FROM alert_actions WHERE outcome = 'applied' AND chain_hash = ? "
                           "ORDER BY id DESC LIMIT 1", (chain_hash,)).fetchone()
        if row is None:
            break
        found.append(_row(row))
        chain_hash = row[COLUMNS.index("base_hash")]
    return found


def recent(conn: Any, limit: int = 100) -> list[dict[str, Any]]:
    """The newest `limit` decisions, newest first."""
    rows = conn.execute(f"SELECT {', '.join(COLUMNS)} FROM alert_actions ORDER BY id DESC LIMIT ?",
                        (min(int(limit), MAX_PAGE),)).fetchall()
    return [_row(r) for r in rows]


def applied_since(conn: Any, since: float) -> list[dict[str, Any]]:
    """Actions applied since `since`, oldest first (few: each rule acts at most once per its
    `every_seconds`)."""
    rows = conn.execute(f"SELECT {', '.join(COLUMNS)} FROM alert_actions WHERE outcome = 'applied' AND ts >= ? "
                        "ORDER BY id", (since,)).fetchall()
    return [_row(r) for r in rows]


def _row(row: tuple) -> dict[str, Any]:
    out = dict(zip(COLUMNS, row))
    for column in JSON_COLUMNS:
        out[column] = json.loads(out[column]) if out[column] is not None else None
    return out
