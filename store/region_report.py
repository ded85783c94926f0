"""Which regions of the primary's embedding hurt now: the ranking behind `classguard regions`
and GET /admin/regions, read from the prediction log.

For each region of the primary's codebook (novel and the new regions formed from it included)
among a window's logged answers:
its live share against its training share, the estimated accuracy (the confidence monitor's
estimate, `monitors.estimates.PublishedEstimate`, per region), the realized accuracy where true
labels arrived, the subgroup mix inside it, and its newest request ids. Regions rank by
excess share x estimated error: one that grew and is answered badly comes first; one that
grew but is answered well, or is answered badly at its usual share, after it.

Shares are among logged answers that have a region: answers routed before the primary ran
have none, and with `log.mode` other than `all` the flagged answers are over-represented
(the report says which mode wrote the rows). Region names belong to the primary's codebook:
after a new primary version, read from its roll-out on (`since`).
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from typing import Any, Mapping, Sequence

import numpy as np

from monitors.estimates import PublishedEstimate
from store.prediction_log import where

MAX_ROWS = 100_000  # newest logged answers read for one report
EXEMPLARS = 5
UNKNOWN = PublishedEstimate(temperature=1.0)  # a model not loaded now: its mean confidence


def read_rows(conn: Any, *, since: float | None, until: float | None, limit: int = MAX_ROWS) -> list[tuple]:
    """(request_id, region, subgroup, model, label, probs, true label) of the newest `limit`
    answers with a region in the window."""
    clause, args = where([("p.ts >= ?", since), ("p.ts <= ?", until)])
    clause = clause.replace("WHERE", "AND", 1)
    return conn.execute(
        "SELECT p.request_id, p.region, p.subgroup, p.model, p.label, p.probs, f.label FROM predictions p "
        f"LEFT JOIN feedback f USING (request_id) WHERE p.region IS NOT NULL {clause} "
        "ORDER BY p.ts DESC, p.request_id DESC LIMIT ?",
        (*args, int(limit))).fetchall()


def rank(rows: Sequence[tuple], names: Sequence[str], references: Sequence[Any],
         estimates: Mapping[str, PublishedEstimate], exemplars: int = EXEMPLARS,
         new: Mapping[str, Mapping[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Every region present in `rows` (newest first, as read_rows gives them), ranked. `names`
    and `references` are the codebook's regions in order (RegionReference each); `estimates`
    maps a model name to its published estimate (a model not there: its mean confidence); `new`
    maps a new region formed from novel traffic to why it is one and since when."""
    new = new or {}
    index = {name: i for i, name in enumerate(names)}
    total = len(rows)
    members: dict[str, list[tuple]] = defaultdict(list)
    for row in rows:
        members[row[1]].append(row)
    report = []
    for region, found in members.items():
        estimated = estimated_accuracy(found, estimates)
        answered = [(label, truth) for _, _, _, _, label, _, truth in found if truth is not None and label is not None]
        reference = references[index[region]] if region in index else None
        training_share = _number(reference.share) if reference is not None else None
        live_share = len(found) / total
        excess = live_share - (training_share or 0.0)
        mix = Counter(row[2] for row in found)
        report.append({
            "region": region,
            "score": round(max(excess, 0.0) * (1.0 - estimated), 6),
            "answers": len(found),
            "live_share": round(live_share, 6),
            "training_share": _rounded(training_share),
            "excess_share": round(excess, 6),
            "estimated_accuracy": round(estimated, 6),
            "training_accuracy": _rounded(_number(reference.accuracy)) if reference is not None else None,
            "realized_accuracy": (round(sum(label == truth for label, truth in answered) / len(answered), 6)
                                  if answered else None),
            "labelled": len(answered),
            "subgroups": {key: round(n / len(found), 6) for key, n in mix.most_common()},
            "training_subgroups": ({k: _rounded(_number(v)) for k, v in reference.subgroup_shares.items()}
                                   if reference is not None else {}),
            "exemplars": [row[0] for row in found[:exemplars]],
            **({} if region in index else {"unknown": "not a region of the primary's codebook (an older version's?)"}),
            **({"new": dict(new[region])} if region in new else {}),
        })
    report.sort(key=lambda r: (-r["score"], -r["answers"], r["region"]))
    return report


def estimated_accuracy(rows: Sequence[tuple], estimates: Mapping[str, PublishedEstimate]) -> float:
    """The published estimate over rows laid out as read_rows gives them, in one pass: the
    same credits the confidence monitor counts as it streams."""
    # grouped by model, subgroup and row width: versions of one model may differ in their
    # classes, and one reshape over mixed widths cut rows across answers
    groups: dict[tuple[str, str, int], list[bytes]] = defaultdict(list)
    for row in rows:
        blob = bytes(row[5])
        groups[row[3], row[2], len(blob)].append(blob)
    total = 0.0
    for (model, subgroup, _), blobs in groups.items():
        probs = np.frombuffer(b"".join(blobs), dtype=np.float32).reshape(len(blobs), -1)
        total += float(estimates.get(model, UNKNOWN).credit_probs(probs, subgroup).sum())
    return total / len(rows)



def _number(value: Any) -> float | None:
    value = float(value)
    return None if math.isnan(value) else value


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


def render(report: Mapping[str, Any]) -> str:
    """The ranking as the terminal shows it."""
    lines = [f"{report['answers']} logged answers with a region (log.mode {report['log_mode']}), "
             f"{len(report['regions'])} regions; ranked by excess share x estimated error"]
    lines.append(f"{'region':<7} {'score':>6} {'answers':>8} {'live':>6} {'training':>9} {'est. acc':>9} "
                 f"{'train acc':>10} {'labelled acc':>13}  subgroups / newest requests")
    pct = lambda v: "-" if v is None else f"{v:.1%}"  # noqa: E731
    for r in report["regions"]:
        labelled = f"{pct(r['realized_accuracy'])} ({r['labelled']})" if r["labelled"] else "-"
        mix = ", ".join(f"{k or '(none)'} {v:.0%}" for k, v in list(r["subgroups"].items())[:3])
        lines.append(f"{r['region']:<7} {r['score']:>6.3f} {r['answers']:>8} {pct(r['live_share']):>6} "
                     f"{pct(r['training_share']):>9} {pct(r['estimated_accuracy']):>9} {pct(r['training_accuracy']):>10} "
                     f"{labelled:>13}  {mix}")
        if r.get("new"):
            lines.append(f"{'':<7} {'':>6} new since {r['new']['since']}: {r['new']['why']}")
        if r["exemplars"]:
            lines.append(f"{'':<7} {'':>6} requests: {' '.join(r['exemplars'])}")
    return "\n".join(lines)
