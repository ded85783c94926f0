"""`classguard inputs list|show ID|erase`: the captured input images (capture.policy) in the store
(the SQLite file, or the fleet's PostgreSQL), or through a running service's admin routes (--url).

    classguard inputs list --region r05 --since 1h         what was kept, with answers and labels
    classguard inputs show REQUEST_ID -o image.png         one input, re-encoded as PNG
    classguard inputs erase REQUEST_ID [REQUEST_ID ...]    erase these
    classguard inputs erase --since 2026-01-01T.. --until  erase a time range (Unix seconds or 2h, 1d ago)
"""

from __future__ import annotations

import argparse
import json
import urllib.parse
from pathlib import Path

from ops.common import admin_call, count, open_log

HELP = "list, show or erase captured input images"
PARSER = {"description": __doc__, "formatter_class": argparse.RawDescriptionHelpFormatter}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=("list", "show", "erase"))
    parser.add_argument("request_ids", nargs="*", help="show: one request id; erase: the inputs to erase")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--db", help="SQLite file or postgresql:// URL (default: fleet.database_url, else log.path)")
    source.add_argument("--url", help="a running service (admin token in CLASSGUARD_ADMIN_TOKEN) instead of the store")
    parser.add_argument("--since", help="15m, 2h, 1d or Unix seconds")
    parser.add_argument("--until")
    parser.add_argument("--region")
    parser.add_argument("--subgroup")
    parser.add_argument("--model")
    parser.add_argument("--labelled", action="store_true", help="list: only inputs with a true label")
    parser.add_argument("--thumbnail", action="store_true", help="show: the thumbnail")
    parser.add_argument("--limit", type=count(1, 1_000), default=50)
    parser.add_argument("-o", "--output", type=Path, help="show: where to write the PNG")


def run(args: argparse.Namespace) -> int:
    return {"list": list_inputs, "show": show, "erase": erase}[args.action](args)


def list_inputs(args: argparse.Namespace) -> int:
    from store import inputs, prediction_log

    filters = {"region": args.region, "subgroup": args.subgroup, "model": args.model}
    if args.url:
        query = {k: v for k, v in {**filters, "since": args.since, "until": args.until,
                                   "labelled": "1" if args.labelled else None, "limit": args.limit}.items()
                 if v is not None}
        rows = json.loads(admin_call(args.url, "inputs?" + urllib.parse.urlencode(query)))["inputs"]
    else:
        conn = open_log(args.db)
        rows = inputs.query(conn, since=prediction_log.parse_since(args.since),
                            until=prediction_log.parse_since(args.until), labelled=args.labelled, limit=args.limit,
                            **filters)
    print(f"{'request_id':<30} {'region':<7} {'subgroup':<18} {'model':<22} {'answered':>9} {'label':>9} {'why':<10}")
    for r in rows:
        print(f"{r['request_id']:<30} {r['region'] or '-':<7} {r['subgroup']:<18} {r['model']:<22} "
              f"{r['predicted'] or 'abstained':>9} {r['truth'] or '-':>9} {r['reason']:<10}")
    if not rows:
        print("no captured inputs match (is capture.policy on?)")
    return 0


def show(args: argparse.Namespace) -> int:
    from store import inputs

    if len(args.request_ids) != 1 or args.output is None:
        raise ValueError("show takes one REQUEST_ID and -o FILE.png")
    key = args.request_ids[0]
    if args.url:
        body = admin_call(args.url, f"inputs/{urllib.parse.quote(key, safe='')}"
                          + ("?thumbnail=1" if args.thumbnail else ""))
    else:
        row = inputs.get(open_log(args.db), key)
        if row is None:
            raise ValueError(f"no captured input has request id {key!r}")
        body = inputs.as_png(row, thumbnail_only=args.thumbnail)
    args.output.write_bytes(body)
    print(f"{args.output}: {len(body)} bytes (PNG)")
    return 0


def erase(args: argparse.Namespace) -> int:
    from store import inputs, prediction_log

    if args.request_ids and (args.since or args.until):
        raise ValueError("erase takes request ids or --since/--until, not both")
    if not args.request_ids and not (args.since or args.until):
        raise ValueError("erase what? give request ids, or --since and/or --until")
    if args.url:
        if args.request_ids:
            erased = sum(json.loads(admin_call(args.url, f"inputs/{urllib.parse.quote(key, safe='')}",
                                               method="DELETE", missing_ok=True) or b'{"erased": 0}')["erased"]
                         for key in args.request_ids)
        else:
            query = {k: v for k, v in (("since", args.since), ("until", args.until)) if v}
            erased = json.loads(admin_call(args.url, "inputs?" + urllib.parse.urlencode(query),
                                           method="DELETE"))["erased"]
    else:
        erased = inputs.erase(open_log(args.db), request_ids=args.request_ids,
                              since=prediction_log.parse_since(args.since),
                              until=prediction_log.parse_since(args.until))
    print(f"erased {erased} captured input{'s' if erased != 1 else ''}")
    return 0
