"""Copy a registered persona to a new name (`twofiles cp mario mario:v2`); the files it names
are shared, not copied."""

from __future__ import annotations

import argparse
import sys

from twofiles.cli.common import add_json_flag, emit_json


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", metavar="SRC", help="a registered name")
    p.add_argument("dest", metavar="DST", help="the new name (replaced if it exists)")
    add_json_flag(p)


def run(args: argparse.Namespace) -> int:
    from twofiles.formats import persona

    record = persona.copy(args.source, args.dest)
    print(f"copied {persona.canonical_name(args.source)} to {record['name']}", file=sys.stderr)
    if args.json:
        emit_json({"source": persona.canonical_name(args.source), "name": record["name"]})
    return 0
