"""`classguard replay PROFILE [--file CHAIN.yaml] [--since 1h]`: what a chain would have answered
on the logged predictions."""

from __future__ import annotations

import argparse
import json

from ops.common import open_log

HELP = "re-apply a guardrail profile to logged predictions"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("profile", help="a profile of the guardrails file, or the name for --file")
    parser.add_argument("--file", help="YAML list of guardrails to replay instead of the named profile")
    parser.add_argument("--db", help="SQLite file or postgresql:// URL (default: fleet.database_url, else log.path)")
    parser.add_argument("--since", default="1h", help="15m, 2h, 1d or Unix seconds")
    parser.add_argument("--until")
    parser.add_argument("--subgroup")
    parser.add_argument("--region", help="only rows the primary placed in this region (r07, novel)")
    parser.add_argument("--format", choices=("table", "json"), default="table")


def run(args: argparse.Namespace) -> int:
    from core.config import load_settings
    from store import prediction_log
    from store import replay as replaying

    settings = load_settings()
    conn = open_log(args.db, settings)
    chain, labels_of = compiled_chain(args, settings)
    report = replaying.replay(conn, chain, labels_of, since=prediction_log.parse_since(args.since),
                              until=prediction_log.parse_since(args.until), subgroup=args.subgroup,
                              region=args.region)
    print(json.dumps(report, indent=2) if args.format == "json" else replaying.render(report))
    return 0


def compiled_chain(args: argparse.Namespace, settings):
    """The chain to replay, compiled against the stored models' labels and regions, and each
    model's labels by name."""
    import yaml

    from runtime.active_chain import chain_context
    from runtime.chain_config import compile_chain, load_profiles
    from runtime.models import find_stored, stored_regions
    from store.model_store import PROFILE_KEY, split_tag

    if args.file:
        with open(args.file) as f:
            specs = yaml.safe_load(f)
    else:
        specs = load_profiles(settings.guardrails.profiles_path).chain(args.profile)
    labels_of = {split_tag(tag)[0]: find_stored(tag).info.metadata[PROFILE_KEY]["labels"]
                 for tag in settings.models.tags()}
    chain = compile_chain(specs, args.profile,
                          chain_context(settings, {label for labels in labels_of.values() for label in labels},
                                        stored_regions(find_stored(settings.models.tags()[0]))))
    return chain, labels_of
