"""`classguard guardrails show|apply PROFILE [--file CHAIN.yaml]|history`: the running service's
active guardrail chain, a swap on every worker, and the record of past swaps."""

from __future__ import annotations

import argparse
import json

from ops.common import admin_call, count, open_database

HELP = "show or swap the running service's guardrail chain"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=("show", "apply", "history"))
    parser.add_argument("profile", nargs="?", help="profile name (apply)")
    parser.add_argument("--file", help="YAML list of guardrails to apply under PROFILE's name")
    parser.add_argument("--url", default="http://127.0.0.1:3000")
    parser.add_argument("--db", help="history: a postgresql:// URL (default: the fleet's, else the audit log file)")
    parser.add_argument("--limit", type=count(1, 100_000), default=20, help="history: the newest N changes")


def run(args: argparse.Namespace) -> int:
    return {"show": show, "apply": apply, "history": history}[args.action](args)


def show(args: argparse.Namespace) -> int:
    print(admin_call(args.url, "guardrails").decode())
    return 0


def apply(args: argparse.Namespace) -> int:
    if not args.profile:
        raise ValueError("apply needs a PROFILE name")
    body: dict = {"profile": args.profile}
    if args.file:
        import yaml

        with open(args.file) as f:
            body["chain"] = yaml.safe_load(f)
    print(admin_call(args.url, "guardrails", body=body).decode())
    return 0


def history(args: argparse.Namespace) -> int:
    """The newest chain changes: the fleet's rows in PostgreSQL, or the single host's audit log."""
    from core.config import load_settings
    from store.chain_store import FleetChainStore

    settings = load_settings()
    if args.db or settings.fleet.enabled:
        database = open_database(args.db, settings)
        rows = FleetChainStore(database, "cli").history(args.limit)
    else:
        path = settings.guardrails.audit_log
        if not path.exists():
            raise FileNotFoundError(f"no guardrail audit log at {path}")
        rows = [json.loads(line) for line in path.read_text().splitlines()[-args.limit:]][::-1]
    for row in rows:
        print(json.dumps({k: row.get(k) for k in ("id", "ts", "time", "source", "replica", "pid", "profile", "hash",
                                                  "previous_hash") if k in row}, default=str), flush=True)
    if not rows:
        print("no guardrail changes recorded")
    return 0
