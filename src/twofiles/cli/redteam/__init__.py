"""`twofiles redteam`: attack a model and measure what each defence buys.

    twofiles redteam MODEL --suite builtin --guard none,all --out runs/redteam --json
    twofiles redteam poison MODEL --k 0,10,30,100 --out runs/poison
    twofiles redteam gcg MODEL --out suffix.json

`redteam MODEL ...` is `redteam run MODEL ...` (cli.main inserts the default subcommand). Each
subcommand is a module of this package exposing `add_arguments(parser)` and `run(args)`.
"""

from __future__ import annotations

import argparse

from twofiles.cli.common import add_subcommands

# subcommand -> (module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "run": (
        "twofiles.cli.redteam.run",
        "play an attack suite through the chat loop; attack success rate per family",
    ),
    "poison": (
        "twofiles.cli.redteam.poison",
        "plant k triggered examples in the SFT mix, train, and measure the trigger rate",
    ),
    "gcg": (
        "twofiles.cli.redteam.gcg",
        "search a universal adversarial suffix with greedy coordinate gradient (GCG)",
    ),
}
DEFAULT = "run"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    # importing the submodule `run` rebinds this package's `run` to it: cli.main calls the
    # chosen subcommand's module directly (add_subcommands sets it as `_module`)
    add_subcommands(parser, SUBCOMMANDS, "redteam_cmd")


def run(args: argparse.Namespace) -> int:
    return int(args._module.run(args))
