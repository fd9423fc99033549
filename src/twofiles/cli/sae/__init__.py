"""`twofiles sae`: sparse autoencoders on one layer's activations.

    twofiles sae train MODEL --layer L --data builtin --out DIR
    twofiles sae features DIR

Each subcommand is a module of this package exposing `add_arguments(parser)` and `run(args)`.
"""

from __future__ import annotations

import argparse

from twofiles.cli.common import add_subcommands

# subcommand -> (module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "train": (
        "twofiles.cli.sae.train",
        "train a sparse autoencoder (TopK or ReLU-L1) on a layer's residual stream",
    ),
    "features": (
        "twofiles.cli.sae.features",
        "feature dashboards: top contexts, quantile samples, histograms, promoted tokens",
    ),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_subcommands(parser, SUBCOMMANDS, "sae_cmd")


def run(args: argparse.Namespace) -> int:
    return int(args._module.run(args))
