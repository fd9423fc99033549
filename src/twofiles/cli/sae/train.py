"""`twofiles sae train MODEL --layer L --data builtin|FILES --out DIR`: a sparse autoencoder on one
layer's residual stream (TopK or ReLU-L1), resumable, with L0, explained variance, CE-loss
recovered and the dead fraction on held-out text.

DIR holds sae.safetensors (what `twofiles sae features`, `generate --steer` and the web UI read),
metrics.json, metrics.jsonl, loss.png, report.md, config.json and checkpoints/. --json prints the
metrics as one JSON object on the last line of stdout.
"""

from __future__ import annotations

import argparse
from typing import Any

from twofiles.cli.common import add_device_flag, add_json_flag, emit_json

# flag -> config field, for the flags that define what the run is (refused when --resume differs)
_RUN_FIELDS: dict[str, str] = {
    "layer": "layer",
    "hook": "hook",
    "kind": "kind",
    "expansion": "expansion",
    "k": "k",
    "l1": "l1_coefficient",
    "batch_tokens": "batch_tokens",
    "context": "context",
    "buffer_contexts": "buffer_contexts",
    "reuse": "reuse",
    "eval_tokens": "eval_tokens",
    "dead_tokens": "dead_tokens",
    "seed": "seed",
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    from twofiles.sae.train import HOOKS

    p.add_argument("model", metavar="MODEL", help="model.safetensors, .gguf, HF directory or alias")
    p.add_argument("--layer", type=int, default=None, help="the block to read (0-based)")
    p.add_argument(
        "--hook", default=None, choices=HOOKS, help="which activation (default resid_post)"
    )
    p.add_argument(
        "--data",
        nargs="+",
        default=None,
        metavar="builtin|FILE",
        help="builtin (Shakespeare; held-out plays are the test text) or text/JSONL/Parquet files",
    )
    p.add_argument("--out", required=True, help="run directory (sae.safetensors, metrics, report)")
    p.add_argument(
        "--kind", default=None, choices=("topk", "relu"), help="topk (default) or relu (L1)"
    )
    p.add_argument("--expansion", type=int, default=None, help="features per dimension (8)")
    p.add_argument("--k", type=int, default=None, help="topk: features active per token (32)")
    p.add_argument("--l1", type=float, default=None, help="relu: L1 coefficient (5)")
    p.add_argument("--tokens", type=int, default=None, help="training tokens (200000)")
    p.add_argument("--batch-tokens", type=int, default=None, help="activations per step (4096)")
    p.add_argument("--context", type=int, default=None, help="tokens per window (256)")
    p.add_argument(
        "--buffer-contexts",
        type=int,
        default=None,
        help="windows whose activations are shuffled together (64)",
    )
    p.add_argument(
        "--reuse",
        type=int,
        default=None,
        help="serve each buffer of activations this many times, reshuffled (1: fresh text only)",
    )
    p.add_argument("--eval-tokens", type=int, default=None, help="held-out tokens (8192)")
    p.add_argument(
        "--dead-tokens",
        type=int,
        default=None,
        help="a feature is dead after firing on none of this many tokens (100000)",
    )
    p.add_argument("--lr", type=float, default=None, help="Adam peak learning rate (4e-4)")
    p.add_argument("--time-budget", type=float, default=None, help="train for this many seconds")
    p.add_argument("--eval-interval", type=int, default=None, help="steps between evaluations")
    p.add_argument(
        "--checkpoint-interval", type=int, default=None, help="steps between checkpoints"
    )
    p.add_argument("--seed", type=int, default=None, help="initialisation and data order (1337)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads")
    add_device_flag(p)
    p.add_argument(
        "--resume", action="store_true", help="continue exactly from the newest checkpoint in --out"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_json_flag(p)


def _config(args: argparse.Namespace) -> Any:
    import json
    from pathlib import Path

    from twofiles.errors import BadInputError
    from twofiles.sae.train import SAETrainConfig

    saved_path = Path(args.out) / "config.json"
    if args.resume and saved_path.is_file():
        cfg = SAETrainConfig.from_dict(json.loads(saved_path.read_text()))
        for flag, name in _RUN_FIELDS.items():
            given = getattr(args, flag)
            if given is not None and given != getattr(cfg, name):
                raise BadInputError(
                    f"--{flag.replace('_', '-')} {given}: the run in {args.out} has "
                    f"{getattr(cfg, name)}; --resume continues that run"
                )
        if args.data is not None and args.data != cfg.data:
            raise BadInputError(f"--data: the run in {args.out} trains on {' '.join(cfg.data)}")
        cfg.out, cfg.resume = args.out, True
    else:
        if args.layer is None:
            raise BadInputError("--layer is required (the block whose activations to read)")
        cfg = SAETrainConfig(model=args.model, out=args.out, resume=args.resume)
        for flag, name in _RUN_FIELDS.items():
            if getattr(args, flag) is not None:
                setattr(cfg, name, getattr(args, flag))
        if args.data is not None:
            cfg.data = list(args.data)
        if args.lr is not None:
            cfg.optim.lr = args.lr
    cfg.model = args.model
    if args.tokens is not None:
        cfg.tokens = args.tokens
    if args.time_budget is not None:
        cfg.time_budget_s = args.time_budget
    if args.eval_interval is not None:
        cfg.eval_interval = args.eval_interval
    if args.checkpoint_interval is not None:
        cfg.checkpoint_interval = args.checkpoint_interval
    if args.threads is not None:
        cfg.threads = args.threads
    cfg.device, cfg.progress = args.device, not args.no_progress
    cfg.validate()
    return cfg


def run(args: argparse.Namespace) -> int:
    from twofiles.sae.train import train_sae
    from twofiles.train.runctl import RunInterrupted

    cfg = _config(args)
    try:
        res = train_sae(cfg)
    except RunInterrupted as e:  # a checkpoint is saved; the message says how to continue
        return e.exit_code
    m = res.metrics
    print(
        f"L0 {m.get('l0', float('nan')):.1f}, explained variance "
        f"{m.get('explained_variance', float('nan')):.4f}, CE-loss recovered "
        f"{m.get('ce_loss_recovered', float('nan')):.4f}, dead "
        f"{m.get('dead_fraction', float('nan')):.4f}; {res.tokens:,} tokens in "
        f"{res.train_seconds:.1f}s; saved {res.sae_path}"
    )
    if args.json:
        emit_json(
            {
                "sae": res.sae_path,
                "out": res.out,
                "steps": res.steps,
                "tokens": res.tokens,
                "train_seconds": res.train_seconds,
                **m,
            }
        )
    return 0
