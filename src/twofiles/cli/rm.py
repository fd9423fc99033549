"""Remove registered personas. Only the names go: the model, adapters and Modelfile they name
are the user's files and stay where they are."""

from __future__ import annotations

import argparse
import sys

from twofiles.cli.common import add_json_flag, emit_json


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("names", nargs="+", metavar="NAME", help="registered names (twofiles list)")
    add_json_flag(p)


def run(args: argparse.Namespace) -> int:
    from twofiles.formats import persona

    # one name given twice (mario, Mario:latest) is removed once; errors keep the user's spelling
    given: dict[str, str] = {}
    for n in args.names:
        given.setdefault(persona.canonical_name(n), n)
    names = list(given.values())
    for name in names:  # all exist, or nothing is removed
        if not persona.record_path(name).is_file():
            persona.get(name)  # says so, listing what is registered
    removed = [persona.remove(name) for name in names]
    for name in removed:
        print(f"deleted {name}", file=sys.stderr)
    if args.json:
        emit_json({"removed": removed})
    return 0
