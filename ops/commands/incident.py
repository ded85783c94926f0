"""`classguard incident --since 30m -o incident.html`: the incident page of a running service
(GET /admin/incident), saved as one self-contained HTML file that opens with no network."""

from __future__ import annotations

import argparse
import urllib.parse
from pathlib import Path

from ops.common import admin_call

HELP = "save the incident page (alarms, subgroups, regions, captured inputs, confusions) as one HTML file"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", default="http://127.0.0.1:3000", help="the running service")
    parser.add_argument("--since", default="30m", help="15m, 2h, 1d or Unix seconds")
    parser.add_argument("--until")
    parser.add_argument("-o", "--output", type=Path, default=Path("incident.html"))


def run(args: argparse.Namespace) -> int:
    query = urllib.parse.urlencode({k: v for k, v in (("since", args.since), ("until", args.until)) if v})
    body = admin_call(args.url, f"incident?{query}")
    args.output.write_bytes(body)
    print(f"{args.output}: {len(body) / 1024:.0f} KiB; open it in a browser (it needs no network)")
    return 0
