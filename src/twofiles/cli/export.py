"""Export a model to files that run without twofiles.

  twofiles export run MODEL OUT/    OUT/model.safetensors + OUT/run.py (needs only Python + numpy)

Then: `python OUT/run.py OUT/model.safetensors --prompt "..."`.
"""

from __future__ import annotations

import argparse
import sys

from twofiles.cli.common import add_json_flag, emit_json

WHAT = ["run"]  # more export targets (gguf, hf) plug in here


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("what", choices=WHAT, help="run: model.safetensors + a numpy-only run.py")
    p.add_argument("model", metavar="MODEL", help="a twofiles model.safetensors")
    p.add_argument("out", metavar="OUT", help="directory to write the files into (created if missing)")
    add_json_flag(p)


def run(args: argparse.Namespace) -> int:
    from twofiles.standalone.export import export_run

    summary = export_run(args.model, args.out)
    print(f"wrote {summary['model']} and {summary['run_py']} ({summary['bytes'] / 1e6:.2f} MB)", file=sys.stderr)
    print(f"run it: python {summary['run_py']} {summary['model']} --prompt \"...\"", file=sys.stderr)
    if args.json:
        emit_json(summary)
    return 0
