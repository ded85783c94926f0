"""`classguard drift-report`: fetch the Evidently drift report of recent traffic (GET /admin/drift-report)."""

from __future__ import annotations

import argparse
import sys

from ops.common import admin_call

HELP = "Evidently report of recent traffic vs the reference"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", default="http://127.0.0.1:3000", help="the running service")
    parser.add_argument("--format", choices=("html", "json"), default="json")
    parser.add_argument("--window-seconds", type=float, default=300.0)
    parser.add_argument("--model", help="model name (default: the primary)")
    parser.add_argument("--output", "-o", help="file to write (default: stdout)")


def run(args: argparse.Namespace) -> int:
    import urllib.parse

    query = {"format": args.format, "window_seconds": args.window_seconds, **({"model": args.model} if args.model else {})}
    body = admin_call(args.url, f"drift-report?{urllib.parse.urlencode(query)}")
    if args.output:
        with open(args.output, "wb") as f:
            f.write(body)
    else:
        sys.stdout.buffer.write(body + b"\n")
    return 0
