"""`twofiles inspect`: look inside a model, as pictures (PNG + a self-contained HTML page).

    twofiles inspect lens MODEL --prompt TEXT --out DIR
    twofiles inspect patch MODEL --clean TEXT --corrupt TEXT --out DIR

Each subcommand is a module of this package exposing `add_arguments(parser)` and `run(args)`.
"""

from __future__ import annotations

import argparse

from twofiles.cli.common import add_subcommands

# subcommand -> (module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "lens": (
        "twofiles.cli.inspect.lens",
        "the logit lens: the top tokens at every layer and position",
    ),
    "attention": ("twofiles.cli.inspect.attention", "attention patterns per layer and head"),
    "attribute": ("twofiles.cli.inspect.attribute", "direct logit attribution per layer and head"),
    "patch": (
        "twofiles.cli.inspect.patch",
        "activation patching by layer and position: clean vs corrupted prompt",
    ),
    "neurons": (
        "twofiles.cli.inspect.neurons",
        "the contexts that most activate chosen MLP neurons over a corpus",
    ),
    "embeddings": (
        "twofiles.cli.inspect.embeddings",
        "token embeddings: nearest neighbours, vector arithmetic, a 2-D map, a word's vector in context",
    ),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_subcommands(parser, SUBCOMMANDS, "inspect_cmd")


def run(args: argparse.Namespace) -> int:
    return int(args._module.run(args))
