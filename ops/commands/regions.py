"""`classguard regions`: the embedding's regions in recent traffic, ranked by excess share x error
(GET /admin/regions, as a table or JSON); `--retire n03` frees a new region's slot for the fleet
(DELETE /admin/regions/n03)."""

from __future__ import annotations

import argparse
import json

from ops.common import admin_call, count

HELP = "the primary's embedding regions in recent traffic, worst first"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", default="http://127.0.0.1:3000", help="the running service")
    parser.add_argument("--since", default="15m", help="15m, 2h, 1d or Unix seconds")
    parser.add_argument("--until")
    parser.add_argument("--top", type=count(1, 73), default=10,
                        help="the N highest-ranked regions (at most 64 of the codebook, novel, 8 new)")
    parser.add_argument("--exemplars", type=count(0, 50), default=5, help="newest request ids shown per region")
    parser.add_argument("--format", choices=("table", "json"), default="table")
    parser.add_argument("--retire", metavar="NAME",
                        help="retire new region NAME (n00..n07) for every replica: its slot is free for the next "
                             "group (a group still arriving forms again)")


def run(args: argparse.Namespace) -> int:
    import urllib.parse

    from store import region_report

    if args.retire:
        retired = json.loads(admin_call(args.url, f"regions/{args.retire}", method="DELETE"))
        print(f"retired {retired['retired']}: {retired['why']}, new since {retired['since']}")
        return 0
    query = {"since": args.since, "top": args.top, "exemplars": args.exemplars,
             **({"until": args.until} if args.until else {})}
    body = admin_call(args.url, f"regions?{urllib.parse.urlencode(query)}")
    print(body.decode() if args.format == "json" else region_report.render(json.loads(body)))
    return 0
