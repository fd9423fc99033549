"""Export a model to files that run without twofiles.

  twofiles export run MODEL OUT/    OUT/model.safetensors + OUT/run.py (needs only Python + numpy)
  twofiles export hf MODEL OUT/     a Hugging Face directory (transformers' AutoModelForCausalLM loads it)
  twofiles export gguf MODEL OUT.gguf [--type f32|f16|q8_0]   a GGUF file for llama.cpp (default f16)

Then: `python OUT/run.py OUT/model.safetensors --prompt "..."`.
"""

from __future__ import annotations

import argparse
import sys

from twofiles.cli.common import add_json_flag, emit_json

WHAT = ["run", "hf", "gguf"]
GGUF_TYPES = [
    "f32",
    "f16",
    "q8_0",
]  # formats.gguf_export.TYPES (verbs import only the stdlib at top level)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "what",
        choices=WHAT,
        help="run: model.safetensors + a numpy-only run.py; hf: a Hugging Face model directory; gguf: a llama.cpp GGUF file",
    )
    p.add_argument(
        "model",
        metavar="MODEL",
        help="a twofiles model.safetensors, a .gguf file, a Hugging Face directory or an alias",
    )
    p.add_argument(
        "out",
        metavar="OUT",
        help="directory to write the files into (created if missing); for gguf, the .gguf file",
    )
    p.add_argument(
        "--type",
        choices=GGUF_TYPES,
        default="f16",
        help="gguf only: tensor type of the 2-D weights (default f16; norms stay f32)",
    )
    add_json_flag(p)


def run(args: argparse.Namespace) -> int:
    if args.what == "gguf":
        from twofiles.formats.gguf_export import export_gguf
        from twofiles.formats.resolve import resolve_model

        summary = export_gguf(
            resolve_model(args.model, device="cpu", cap_context=False),
            args.out,
            qtype=args.type,
            progress=True,
        )
        print(
            f"wrote {summary['path']} ({summary['architecture']}, {summary['type']}, {summary['bytes'] / 1e6:.2f} MB)",
            file=sys.stderr,
        )
        if args.json:
            emit_json(summary)
        return 0
    if args.what == "hf":
        from twofiles.formats.hf import export_hf
        from twofiles.formats.resolve import resolve_model

        summary = export_hf(resolve_model(args.model, device="cpu", cap_context=False), args.out)
        print(f"wrote a Hugging Face model directory to {args.out}", file=sys.stderr)
        if args.json:
            emit_json({"out": str(args.out), **{k: v for k, v in summary.items() if k != "out"}})
        return 0
    from twofiles.standalone.export import export_run

    summary = export_run(args.model, args.out)
    print(
        f"wrote {summary['model']} and {summary['run_py']} ({summary['bytes'] / 1e6:.2f} MB)",
        file=sys.stderr,
    )
    print(f'run it: python {summary["run_py"]} {summary["model"]} --prompt "..."', file=sys.stderr)
    if args.json:
        emit_json(summary)
    return 0
