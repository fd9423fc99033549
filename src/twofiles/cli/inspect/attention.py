"""`twofiles inspect attention`: not built yet (placeholder)."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    del parser


def run(args: argparse.Namespace) -> int:
    from twofiles.errors import TwofilesError

    raise TwofilesError("twofiles inspect attention is not built yet")
