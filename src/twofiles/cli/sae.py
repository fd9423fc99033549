"""`twofiles sae`: not built yet (placeholder; the module keeps the verb registered)."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    del parser


def run(args: argparse.Namespace) -> int:
    from twofiles.errors import TwofilesError

    raise TwofilesError(f"twofiles {args.verb} is not built yet")
