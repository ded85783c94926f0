"""`classguard`: the command line.

    classguard train [--force]            train the incident's two models into the store
    classguard import-model NAME ...      bring your own torch classifier (see --help)
    classguard profile TAG                print a stored model's reference profile as JSON
    classguard drift-report [--url URL]   fetch the Evidently drift report of recent traffic
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

    report = commands.add_parser("drift-report", help="Evidently report of recent traffic vs the reference")
    report.add_argument("--url", default="http://127.0.0.1:3000", help="the running service")
    report.add_argument("--format", choices=("html", "json"), default="json")
    report.add_argument("--window-seconds", type=float, default=300.0)
    report.add_argument("--model", help="model name (default: the primary)")
    report.add_argument("--output", "-o", help="file to write (default: stdout)")

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
        if args.command == "drift-report":
            return drift_report(args)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f"classguard {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return 1


def drift_report(args: argparse.Namespace) -> int:
    """GET /admin/drift-report with the token from CLASSGUARD_ADMIN_TOKEN."""
    import os
    import urllib.error
    import urllib.parse
    import urllib.request

    token = os.environ.get("CLASSGUARD_ADMIN_TOKEN")
    if not token:
        raise ValueError("set CLASSGUARD_ADMIN_TOKEN to the service's admin token")
    query = {"format": args.format, "window_seconds": args.window_seconds, **({"model": args.model} if args.model else {})}
    request = urllib.request.Request(f"{args.url.rstrip('/')}/admin/drift-report?{urllib.parse.urlencode(query)}",
                                     headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            body = response.read()
    except urllib.error.HTTPError as exc:
        raise RuntimeError(f"{exc.code}: {exc.read().decode(errors='replace')}") from None
    if args.output:
        with open(args.output, "wb") as f:
            f.write(body)
    else:
        sys.stdout.buffer.write(body + b"\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
