"""What the incident page shows, gathered from the prediction log, the captured inputs, the
monitors and the guardrail history of one window (dashboards.incident_page renders it).

    GET /admin/incident?since=30m          classguard incident --since 30m -o incident.html

Per subgroup and per region: live share against the training share, the estimated accuracy
(the confidence monitor's published estimate, one pass over the logged rows) against the realized one
(where true labels arrived); contact sheets of the captured inputs of the worst regions, of
the subgroups doing worse than the whole mix and of the most frequent flags, mistakes first,
each linked to its logged answer.
"""

from __future__ import annotations

import json
import math
from collections import Counter, defaultdict
from typing import Any, Callable, Mapping, Sequence

from store import feedback, inputs, prediction_log, region_report

MAX_ROWS = 100_000  # newest logged answers of the window read for the page
MAX_BUCKETS = 90
SHEET_SIZE = 24  # inputs on one contact sheet
CANDIDATES = inputs.MAX_PAGE  # captured inputs looked at per sheet to pick its most telling SHEET_SIZE
SHEETS = {"region": 3, "subgroup": 2, "flag": 2}  # sheets of each kind, the worst first
TOP_REGIONS = 15  # rows of the regions table: the ranking's first


def read_window(conn: Any, since: float, until: float, limit: int = MAX_ROWS) -> list[tuple]:
    """(request_id, region, subgroup, model, label, probs, truth, ts, flags) of the newest answers."""
    return conn.execute(
        "SELECT p.request_id, p.region, p.subgroup, p.model, p.label, p.probs, f.label, p.ts, p.flags "
        "FROM predictions p LEFT JOIN feedback f USING (request_id) WHERE p.ts >= ? AND p.ts <= ? "
        "ORDER BY p.ts DESC, p.request_id DESC LIMIT ?", (since, until, int(limit))).fetchall()


def gather(read: Callable[..., Any], *, since: float, until: float, now: float, service: str, log_mode: str,
           capture_policy: str, training_shares: Mapping[str, float], estimates: Mapping[str, Any],
           region_names: Sequence[str], region_references: Sequence[Any],
           alarming: Sequence[tuple[str, str, str, str, str]], history: Sequence[Mapping[str, Any]]) -> dict:
    """The page's data. `read(fn, *args)` runs `fn(connection, *args)` on the store."""
    rows = read(read_window, since, until)
    ranked = (region_report.rank([r[:7] for r in rows if r[1] is not None], region_names, region_references,
                                 estimates, exemplars=0) if region_names else [])
    subgroups = _subgroups(rows, training_shares, estimates)
    flag_counts = Counter(f for r in rows for f in json.loads(r[8]))
    wanted = ([("region", r["region"]) for r in ranked[:SHEETS["region"]]]
              + [("subgroup", s["name"]) for s in _worse_than_the_mix(subgroups)]
              + [("flag", f) for f, _ in flag_counts.most_common(SHEETS["flag"])])
    sheets, traces = [], {}
    for kind, value in wanted:
        found = _telling(read(inputs.query, since=since, until=until, limit=CANDIDATES, **{kind: value}))
        if found:
            pictures = read(thumbnails, [item["request_id"] for item in found])
            found = [{**item, "thumbnail": pictures.get(item["request_id"])} for item in found]
            sheets.append({"title": f"{kind} {value}", "inputs": found})
            for item in found:
                traces[item["request_id"]] = None
    for request_id in traces:
        trace = read(prediction_log.get, request_id)
        traces[request_id] = trace if trace is not None else {"request_id": request_id, "note": "no logged answer"}
    counts = read(feedback.confusion, since=since, until=until)
    labels = sorted({t for t, _ in counts} | {e for _, e in counts}, key=_class_order)
    return {
        "title": "classguard incident", "service": service, "generated_at": now, "since": since, "until": until,
        "log_mode": log_mode, "capture_policy": capture_policy,
        "alarms_now": [{"monitor": m, "statistic": s, "where": " ".join(x for x in (model, subgroup or "whole mix",
                                                                                     pair) if x)}
                       for m, s, model, subgroup, pair in alarming],
        "timeline": _timeline(rows, since, until),
        "subgroups": subgroups,
        "regions": [{"name": r["region"], "answers": r["answers"], "live_share": r["live_share"],
                     "training_share": r["training_share"], "estimated_accuracy": r["estimated_accuracy"],
                     "realized_accuracy": r["realized_accuracy"], "labelled": r["labelled"], "score": r["score"]}
                    for r in ranked[:TOP_REGIONS]],
        "sheets": sheets, "traces": traces,
        "confusion": ({"model": "every model answering", "labels": labels,
                       "counts": [[t, e, n] for (t, e), n in sorted(counts.items())]} if counts else None),
        "guardrails": [_change(h) for h in history],
    }


def thumbnails(conn: Any, request_ids: Sequence[str]) -> dict[str, bytes]:
    """request id -> its captured input's thumbnail (an input erased meanwhile is left out)."""
    if not request_ids:
        return {}
    marks = ", ".join("?" * len(request_ids))
    rows = conn.execute(f"SELECT request_id, thumbnail FROM inputs WHERE request_id IN ({marks})", list(request_ids))
    return {request_id: bytes(picture) for request_id, picture in rows}


def _telling(candidates: Sequence[dict]) -> list[dict]:
    """A sheet's inputs, most telling first: wrong answers, abstentions, flagged and unlabelled,
    unlabelled, flagged right answers, right answers; newest first within each. Taken as they
    came (oldest first), a region's sheet showed 24 right answers while its mistakes, the newest,
    were left off."""
    def rank(item: dict) -> int:
        if item["truth"] is not None and item["predicted"] is not None:
            return 0 if item["truth"] != item["predicted"] else 4 if item["flags"] else 5
        if item["predicted"] is None:
            return 1
        return 2 if item["flags"] else 3

    return sorted(candidates, key=lambda item: (rank(item), -item["ts"]))[:SHEET_SIZE]


def _worse_than_the_mix(subgroups: Sequence[dict]) -> list[dict]:
    """The subgroups doing worse than the whole mix, worst first. The worst two whatever their
    accuracy gave the scanner group (99% right) a sheet of right answers beside the phone one."""
    answers = sum(s["answers"] for s in subgroups)
    mix = sum(_worst(s) * s["answers"] for s in subgroups) / answers if answers else 1.0
    return sorted((s for s in subgroups if _worst(s) < mix), key=_worst)[:SHEETS["subgroup"]]


def _worst(subgroup: dict) -> float:
    """Lower estimated (or realized, where known) accuracy first."""
    value = subgroup["realized_accuracy"] if subgroup["realized_accuracy"] is not None else subgroup[
        "estimated_accuracy"]
    return 1.0 if value is None else value


def _class_order(label: str) -> tuple:
    return (label == "abstained", int(label) if label.isdigit() else math.inf, label)


def _subgroups(rows: Sequence[tuple], training: Mapping[str, float], estimates: Mapping[str, Any]) -> list[dict]:
    members: dict[str, list[tuple]] = defaultdict(list)
    for row in rows:
        members[row[2]].append(row)
    out = []
    for name, found in sorted(members.items()):
        answered = [(r[4], r[6]) for r in found if r[6] is not None and r[4] is not None]
        out.append({"name": name, "answers": len(found), "live_share": len(found) / len(rows),
                    "training_share": training.get(name), "estimated_accuracy": region_report.estimated_accuracy(found, estimates),
                    "realized_accuracy": (sum(a == t for a, t in answered) / len(answered)) if answered else None,
                    "labelled": len(answered)})
    return out


def _timeline(rows: Sequence[tuple], since: float, until: float) -> dict:
    """Answers and flagged answers per flag, per bucket of a round number of seconds."""
    span = max(until - since, 1.0)
    bucket = next((b for b in (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 21600, 86400)
                   if span / b <= MAX_BUCKETS), span / MAX_BUCKETS)
    n = int(math.ceil(span / bucket))
    answers = [0] * n
    series: dict[str, list[int]] = defaultdict(lambda: [0] * n)
    for row in rows:
        i = min(n - 1, max(0, int((row[7] - since) // bucket)))
        answers[i] += 1
        for flag in json.loads(row[8]):
            series[flag][i] += 1
    return {"start": since, "bucket_seconds": float(bucket), "answers": answers, "series": dict(series)}


def _change(row: Mapping[str, Any]) -> dict:
    """A guardrail change as the page lists it (the fleet's rows and the audit log differ in form)."""
    ts = row.get("ts")
    if ts is None and isinstance(row.get("time"), str):
        import calendar
        import time

        try:
            ts = calendar.timegm(time.strptime(row["time"], "%Y-%m-%dT%H:%M:%SZ"))
        except ValueError:
            ts = None
    return {"ts": ts, "profile": str(row.get("profile", "")), "hash": str(row.get("hash", "")),
            "source": str(row.get("source", "")), "replica": str(row.get("replica") or row.get("pid") or "")}
