"""Train a reward model on preference pairs: a scalar head on a model, Bradley–Terry loss.

    twofiles reward smollm2 --data builtin --lora-rank 8 --out runs/reward
    twofiles reward runs/sft/model.safetensors --data prefs.jsonl --center-rewards 0.01

The result, OUT/reward.safetensors, scores replies wherever a scorer fits:
`chat --think N --scorer reward:PATH`, `arena battle --judge reward:PATH`, `pairs --judge reward:PATH`.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from twofiles.cli.common import (
    Row,
    add_json_flag,
    add_lora_flags,
    add_training_run_flags,
    emit_json,
    length_rows,
    lora_targets,
    optim_rows,
    resumed_config,
    saved_run,
    set_given_fields,
)

if TYPE_CHECKING:
    from twofiles.train.reward import RewardConfig

# flag -> (section, field, type, help); section "" is RewardConfig itself
_FIELDS: list[Row] = [
    ("--lora-rank", "", "lora_rank", int, "train LoRA adapters of this rank (+ the head; 0: every weight)"),
    ("--lora-alpha", "", "lora_alpha", float, "LoRA scale numerator: the update is scaled by alpha / rank"),
    ("--center-rewards", "", "center_rewards", float, "add C * mean((r_chosen + r_rejected)^2) to the loss (TRL's center_rewards_coefficient; 0: off)"),
    *optim_rows(),
    ("--batch-size", "", "batch_size", int, "pairs per micro-batch (2x rows)"),
    ("--max-len", "", "max_len", int, "tokens of prompt + reply (longer replies are cut)"),
    *length_rows("training pairs"),
    ("--max-val", "", "max_val", int, "score at most this many held-out pairs (0: all)"),
    ("--pairs-seed", "", "pairs_seed", int, "seed of the built-in pairs"),
    ("--seed", "", "seed", int, "seed for the pairs' order, the head and LoRA init"),
    ("--threads", "", "threads", int, "CPU threads"),
]  # fmt: skip


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "model",
        metavar="MODEL",
        help="the model under the head: model.safetensors, .gguf, Hugging Face directory, or an alias (smollm2)",
    )
    p.add_argument(
        "--data",
        default=None,
        help="builtin (default: right vs wrong replies to the built-in skill tasks) or a preference "
        'JSONL in TRL\'s forms ({"prompt", "chosen", "rejected"})',
    )
    p.add_argument(
        "--val-data",
        default=None,
        help="held-out pairs (default: the built-in held-out split, or every 20th pair of --data)",
    )
    p.add_argument("--out", default="runs/reward", help="run directory")
    for flag, _, _, typ, help_text in _FIELDS:
        p.add_argument(flag, type=typ, default=None, help=help_text)
    add_lora_flags(p, merge=False)
    add_training_run_flags(p)
    add_json_flag(p)


def run(args: argparse.Namespace) -> int:
    from twofiles.train.reward import RewardConfig, train_reward
    from twofiles.train.runctl import RunInterrupted

    if (saved := saved_run(args)) is not None:
        cfg = _resumed_config(args, saved)
    else:
        cfg = RewardConfig(
            model=args.model,
            data=args.data or "builtin",
            val_data=args.val_data or "",
            out=args.out,
        )
        set_given_fields(cfg, args, _FIELDS)
        if args.lora_targets:
            cfg.lora_targets = lora_targets(args.lora_targets)
        cfg.device, cfg.dtype = args.device, args.dtype
    cfg.resume, cfg.progress = args.resume, not args.no_progress
    try:
        res = train_reward(cfg)
    except RunInterrupted as e:  # a checkpoint is saved; the message says how to continue
        return e.exit_code
    print(
        f"held-out pair accuracy {res.before['val_accuracy']:.1%} -> {res.after['val_accuracy']:.1%}, "
        f"loss {res.before['val_loss']:.4f} -> {res.after['val_loss']:.4f}; "
        f"{res.steps} steps in {res.train_seconds:.1f}s; reward model {res.model_path}"
    )
    if args.json:
        emit_json(res.summary())
    return 0


def _resumed_config(args: argparse.Namespace, saved: dict[str, Any]) -> RewardConfig:
    from twofiles.train.reward import RewardConfig

    extra: dict[str, tuple[str, Any]] = {}
    if args.lora_targets:
        extra["lora_targets"] = ("--lora-targets", lora_targets(args.lora_targets))
    paths = [
        ("model", "MODEL", args.model),
        ("data", "--data", args.data),
        ("val_data", "--val-data", args.val_data),
    ]
    return resumed_config(RewardConfig, args, saved, _FIELDS, paths=paths, extra=extra)
