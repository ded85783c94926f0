"""`classguard`: the command line.

    classguard train [--force]            train the incident's two models into the store
    classguard import-model NAME ...      bring your own torch classifier (see --help)
    classguard profile TAG                print a stored model's reference profile as JSON
"""

from __future__ import annotations

import argparse
import json
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="classguard", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train baseline and retrained models")
    train.add_argument("--force", action="store_true")
    train.add_argument("--epochs", type=int, default=40)

    from training import byom

    imp = commands.add_parser("import-model", help="import your own classifier and profile it",
                              description=byom.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    byom.add_arguments(imp)

    profile = commands.add_parser("profile", help="print a stored model's reference profile")
    profile.add_argument("tag")

    args = parser.parse_args(argv)
    try:
        if args.command == "train":
            from training.train import main as train_main

            return train_main([*(["--force"] if args.force else []), "--epochs", str(args.epochs)])
        if args.command == "import-model":
            return byom.run(args)
        if args.command == "profile":
            from service.models import find_stored
            from training.package import PROFILE_KEY

            print(json.dumps(find_stored(args.tag).info.metadata[PROFILE_KEY], indent=2))
            return 0
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f"classguard {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
