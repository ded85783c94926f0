"""`classguard profile TAG`: print a stored model's reference profile as JSON."""

from __future__ import annotations

import argparse
import json

HELP = "print a stored model's reference profile"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("tag")


def run(args: argparse.Namespace) -> int:
    from runtime.models import find_stored
    from store.model_store import PROFILE_KEY

    print(json.dumps(find_stored(args.tag).info.metadata[PROFILE_KEY], indent=2))
    return 0
