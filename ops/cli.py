"""`classguard`: the command line.

    classguard train [--force]            train the incident's two models into the store
    classguard import-model NAME ...      bring your own torch classifier (see --help)
    classguard init TAG -o DIR            a starting configuration for a stored model (its subgroups,
                                          suggested known confusions, guardrail examples)
    classguard profile TAG                print a stored model's reference profile as JSON
    classguard drift-report [--url URL]   fetch the Evidently drift report of recent traffic
    classguard guardrails show            the running service's active guardrail chain
    classguard guardrails apply PROFILE [--file CHAIN.yaml]   swap the chain on every worker
    classguard log list|show ID|summary|confusion   look up the prediction log (reads the SQLite file)
    classguard replay PROFILE [--file CHAIN.yaml] [--since 1h]   what a chain would have answered
    classguard regions [--since 15m] [--url URL]   the embedding's regions, ranked by excess share x error
    classguard db migrate [--database-url URL]   create or upgrade the fleet database's schema (owner role)
    classguard inputs list|show ID|erase   captured input images (capture.policy)
    classguard dataset export --region r05 -o DIR   captured inputs and their labels as a training set
    classguard incident --since 30m -o incident.html   the incident page as one HTML file
"""

from __future__ import annotations

import argparse
import sys

from ops import import_model
from ops.commands import (dataset, db, drift_report, guardrails, incident, init, inputs, log, profile, regions, replay,
                          train)
from ops.common import is_store_error

# name -> module with HELP, add_arguments(parser) and run(args); optional PARSER: add_parser's keywords
COMMANDS = {"train": train, "import-model": import_model, "init": init, "profile": profile, "drift-report": drift_report,
            "guardrails": guardrails, "log": log, "replay": replay, "regions": regions, "db": db,
            "inputs": inputs, "dataset": dataset, "incident": incident}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="classguard", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    for name, command in COMMANDS.items():
        command.add_arguments(commands.add_parser(name, help=command.HELP, **getattr(command, "PARSER", {})))
    args = parser.parse_args(argv)
    return run(COMMANDS[args.command], args)


def run(command, args: argparse.Namespace) -> int:
    """The command's exit status; an operator's mistake or a store's refusal is one line, status 2."""
    try:
        return command.run(args)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f"classguard {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        if not is_store_error(exc):
            raise
        # a refused grant or a broken query: the database's own first line, not a traceback
        print(f"classguard {args.command}: error: {type(exc).__name__}: {str(exc).splitlines()[0]}",
              file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
