"""`classguard replay`: what a candidate guardrail chain would have answered on logged traffic.

The log keeps every answer's full probability vector and flags, so answer guardrails
(suppress, abstain, confusion guard) replay exactly without re-running the model. A route to
another model would need the image, which the log does not keep: those requests are
counted as "would route" and left out of the comparison. Rows logged by a version of the
model with other classes than the loaded one (as many probabilities as it had classes) are
counted as "other classes" and left out too: the loaded version's class names do not
describe them. Routes conditioned on monitor alerts are judged with no alert active (the log
does not record alert state). Region conditions read the row's region (the primary's; rows
without one match no region).
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from typing import Any, Mapping, Sequence

import numpy as np

from core.keys import parse_subgroup_key
from guardrails.chain import Chain
from guardrails.core import Answer, Request
from store.prediction_log import where


def replay(conn: Any, chain: Chain, labels_of: Mapping[str, Sequence[str]], *,
           since: float | None = None, until: float | None = None, subgroup: str | None = None,
           region: str | None = None) -> dict[str, Any]:
    clause, args = where([("p.ts >= ?", since), ("p.ts <= ?", until), ("p.subgroup = ?", subgroup),
                          ("p.region = ?", region)])
    rows = conn.execute(
        "SELECT p.request_id, p.subgroup, p.model, p.label, p.flags, p.probs, p.region, f.label FROM predictions p "
        f"LEFT JOIN feedback f USING (request_id) {clause} ORDER BY p.ts", args).fetchall()
    per = defaultdict(Counter)
    changes: Counter = Counter()
    routed: Counter = Counter()
    other_classes: Counter = Counter()
    primary = next(iter(labels_of))  # labels_of lists the configured models, the primary first
    for request_id, key, model, before, flags_json, blob, region, truth in rows:
        flags = json.loads(flags_json)
        request = Request(request_id, parse_subgroup_key(key), key, region=region)
        route = chain.route(request) or chain.route(request, flags)
        answering = route.model if route is not None else primary
        stats = per[key]
        stats["rows"] += 1
        if answering != model or model not in labels_of:
            # another model would answer (or the logged one is no longer loaded): its
            # probabilities need the image, which the log does not keep
            routed[answering] += 1
            stats["would_route"] += 1
            continue
        labels = tuple(labels_of[model])
        probs = np.frombuffer(bytes(blob), dtype=np.float32)
        if len(probs) != len(labels):
            other_classes[model] += 1
            stats["other_classes"] += 1
            continue
        answer = chain.answer(request, Answer.of(model, labels, probs, flags))
        after = labels[answer.label] if answer.label is not None else None
        stats["replayed"] += 1
        stats["abstained_before"] += before is None
        stats["abstained_after"] += after is None
        if after != before:
            stats["changed"] += 1
            changes[f"{before or 'abstained'}->{after or 'abstained'}"] += 1
        if truth is not None:
            stats["with_feedback"] += 1
            stats["right_before"] += before == truth
            stats["right_after"] += after == truth
    return {"profile": chain.profile, "hash": chain.config_hash, "rows": len(rows),
            "would_route": dict(routed), "other_classes": dict(other_classes), "subgroups": {k: dict(v) for k, v in sorted(per.items())},
            "changes": dict(changes.most_common())}


def render(report: Mapping[str, Any]) -> str:
    lines = [f"replay of profile {report['profile']} ({report['hash']}) over {report['rows']} logged predictions"]
    if report["would_route"]:
        lines.append("would be answered by another model (not replayable without the images): " +
                     ", ".join(f"{n} to {m}" for m, n in report["would_route"].items()))
    if report.get("other_classes"):
        lines.append("logged by a version with other classes than the loaded one (not replayed): " +
                     ", ".join(f"{n} of {m}" for m, n in report["other_classes"].items()))
    lines.append(f"{'subgroup':<18} {'replayed':>9} {'changed':>8} {'abstained before':>17} {'after':>6} "
                 f"{'feedback':>9} {'right before':>13} {'after':>6}")
    for key, s in report["subgroups"].items():
        n, fb = s.get("replayed", 0), s.get("with_feedback", 0)
        acc = lambda k: f"{s.get(k, 0) / fb:.1%}" if fb else "-"  # noqa: E731
        lines.append(f"{key:<18} {n:>9} {s.get('changed', 0):>8} {s.get('abstained_before', 0):>17} "
                     f"{s.get('abstained_after', 0):>6} {fb:>9} {acc('right_before'):>13} {acc('right_after'):>6}")
    if report["changes"]:
        lines.append("answers changed (before->after): " +
                     ", ".join(f"{k} x{n}" for k, n in list(report["changes"].items())[:12]))
    return "\n".join(lines)
