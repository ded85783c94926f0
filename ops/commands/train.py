"""`classguard train`: train the incident's two models into the store."""

from __future__ import annotations

import argparse

from ops.common import count

HELP = "train baseline and retrained models"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--force", action="store_true")
    parser.add_argument("--epochs", type=count(1, 10_000), default=40)


def run(args: argparse.Namespace) -> int:
    from training.train import main as train_main

    return train_main([*(["--force"] if args.force else []), "--epochs", str(args.epochs)])
