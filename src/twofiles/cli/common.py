"""Helpers shared by the verb modules (not a verb itself)."""

from __future__ import annotations

import argparse
import json
import secrets
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from twofiles.engine import SamplingParams


def add_json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--json",
        action="store_true",
        help="print a one-line JSON summary as the last line of stdout",
    )


def emit_json(summary: dict[str, Any]) -> None:
    """The scripting contract: one JSON object, alone on the last line of stdout."""
    sys.stdout.flush()
    print(json.dumps(summary, default=str), flush=True)


def add_sampling_flags(
    parser: argparse.ArgumentParser, *, temperature: float, top_p: float, max_tokens: int, what: str
) -> None:
    """The die's settings, shared by the verbs that sample (defaults differ: a chat wants a
    sharper die than a free continuation). `what` names one generation in the help ("reply")."""
    parser.add_argument(
        "--temperature",
        type=float,
        default=temperature,
        help=f"0 = greedy; <1 sharper, >1 flatter (default {temperature:g})",
    )
    parser.add_argument(
        "--top-k", type=int, default=0, help="sample among the K most likely tokens only (0 = off)"
    )
    parser.add_argument(
        "--top-p",
        type=float,
        default=top_p,
        help=f"sample among the most likely tokens covering probability P (default {top_p:g}; 1 = off)",
    )
    parser.add_argument(
        "--min-p",
        type=float,
        default=0.0,
        help="drop tokens less likely than M x the top token (0 = off)",
    )
    parser.add_argument(
        "--repetition-penalty",
        type=float,
        default=1.0,
        help="> 1 discourages repeating tokens (1 = off)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=None,
        help="seed for sampling (default: random, printed to stderr)",
    )
    parser.add_argument(
        "--max-tokens",
        type=int,
        default=max_tokens,
        help=f"most new tokens per {what} (default {max_tokens})",
    )


def sampling_params(args: argparse.Namespace, **extra: Any) -> SamplingParams:
    """SamplingParams from add_sampling_flags' flags, validated (before any model load: a typo
    should not cost one); a missing --seed becomes a random one, so the run can be repeated."""
    from twofiles.engine import SamplingParams

    seed = args.seed if args.seed is not None else secrets.randbelow(2**31)
    return SamplingParams(
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        min_p=args.min_p,
        repetition_penalty=args.repetition_penalty,
        seed=seed,
        max_tokens=args.max_tokens,
        **extra,
    ).validate()


def add_device_flag(parser: argparse.ArgumentParser) -> None:
    """--device, for every verb that runs a model (runtime.pick_device reads it)."""
    parser.add_argument(
        "--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda, cuda:N or mps"
    )


def add_training_run_flags(parser: argparse.ArgumentParser) -> None:
    """The run-control flags of the training verbs (pretrain, sft): where, in what precision,
    whether to resume, whether to show progress. Resuming restores everything else from the run."""
    add_device_flag(parser)
    parser.add_argument(
        "--dtype", default="auto", help="auto (bf16 autocast on CUDA, fp32 elsewhere), fp32, bf16"
    )
    parser.add_argument(
        "--resume", action="store_true", help="continue exactly from the newest checkpoint in --out"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
