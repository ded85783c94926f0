"""`classguard log list|show ID|summary|confusion`: look up the prediction log (the SQLite file,
or the fleet's PostgreSQL)."""

from __future__ import annotations

import argparse
import json
import sys

from ops.common import count, open_log

HELP = "look up logged predictions (the SQLite file, or the fleet's PostgreSQL)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=("list", "show", "summary", "confusion"))
    parser.add_argument("request_id", nargs="?", help="with show: a request id, or a correlation id naming one answer")
    parser.add_argument("--db", help="SQLite file or postgresql:// URL (default: fleet.database_url, else log.path)")
    parser.add_argument("--since", help="15m, 2h, 1d or Unix seconds")
    parser.add_argument("--until")
    parser.add_argument("--subgroup")
    parser.add_argument("--region", help="the primary's region of the image: r07, novel")
    parser.add_argument("--flag", help="e.g. low_confidence or known_confusion:6->0")
    parser.add_argument("--action-taken", dest="guardrail_action", help="a guardrail action, e.g. abstain")
    parser.add_argument("--model")
    parser.add_argument("--correlation-id", help="the client's X-Request-ID")
    parser.add_argument("--flagged", action="store_true", help="only flagged predictions")
    parser.add_argument("--limit", type=count(1, 100_000), default=50, help="the newest N rows (list)")
    parser.add_argument("--format", choices=("table", "json", "jsonl", "csv"), default="table")


def run(args: argparse.Namespace) -> int:
    conn = open_log(args.db)
    {"list": list_rows, "show": show, "summary": summary, "confusion": confusion}[args.action](conn, args)
    return 0


def show(conn, args: argparse.Namespace) -> None:
    from store import prediction_log

    if not args.request_id:
        raise ValueError("show needs a REQUEST_ID")
    found = prediction_log.find(conn, args.request_id)
    if not found:
        raise ValueError(f"no logged prediction has request id or correlation id {args.request_id!r}")
    if len(found) > 1:
        raise ValueError(f"correlation id {args.request_id!r} names several answers; show one of: "
                         f"{', '.join(r['request_id'] for r in found)}")
    record = found[0]
    # one field a line, values compact: the trace reads at a glance and is still valid JSON
    print("{\n" + ",\n".join(f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in record.items()) + "\n}")


def confusion(conn, args: argparse.Namespace) -> None:
    from store import feedback, prediction_log

    counts = feedback.confusion(conn, subgroup=args.subgroup, model=args.model,
                                since=prediction_log.parse_since(args.since),
                                until=prediction_log.parse_since(args.until), region=args.region)
    truths = sorted({t for t, _ in counts})
    emitted = sorted({e for _, e in counts})
    print("true \\ answered " + " ".join(f"{e:>9}" for e in emitted))
    for t in truths:
        print(f"{t:<16} " + " ".join(f"{counts.get((t, e), 0):>9}" for e in emitted))
    total = sum(counts.values())
    right = sum(n for (t, e), n in counts.items() if t == e)
    print(f"\n{total} answers with feedback, {right} right ({right / max(total, 1):.1%})")


def summary(conn, args: argparse.Namespace) -> None:
    from store import prediction_log

    since = prediction_log.parse_since(args.since or "1h")
    for row in prediction_log.summary(conn, since):
        print(f"{row['subgroup']:<20} {row['flag']:<28} {row['count']:>8}")


def list_rows(conn, args: argparse.Namespace) -> None:
    from store import prediction_log

    records = prediction_log.query(
        conn, since=prediction_log.parse_since(args.since), until=prediction_log.parse_since(args.until),
        subgroup=args.subgroup, flag=args.flag, action=args.guardrail_action, model=args.model,
        correlation_id=args.correlation_id, flagged_only=args.flagged, limit=args.limit, region=args.region)
    if args.format == "json":
        print(json.dumps(records, indent=2))
    elif args.format in ("jsonl", "csv"):
        sys.stdout.write(prediction_log.export(records, args.format))
    else:
        print_table(records)


def print_table(records: list[dict]) -> None:
    import time

    for r in records:
        when = time.strftime("%H:%M:%S", time.localtime(r["ts"]))
        actions = ",".join(d["action"] for d in r["guardrails"]) or "-"
        print(f"{when} {r['request_id']:<36} {r['subgroup']:<18} {r['region'] or '-':<6} {r['model']:<22} "
              f"{str(r['label']):<5} {r['confidence']:.3f} {','.join(r['flags']) or '-':<28} {actions}")
