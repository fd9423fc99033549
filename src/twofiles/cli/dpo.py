"""Tune a model on preference pairs with DPO (or IPO, hinge, robust, DPO+NLL): full or LoRA.

twofiles dpo MODEL --data pairs.jsonl --out runs/dpo
twofiles dpo MODEL --data feedback --out runs/dpo     (the web UI's thumbs, corrections and
                                                       arena votes, exported and trained on)
twofiles dpo MODEL --data security --out runs/dpo     (the built-in security mix's pairs)
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from twofiles.cli.common import (
    LORA_ROWS,
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
    from twofiles.train.dpo import DPOConfig

LORA_LR = 1e-4  # the default --lr with --lora-rank (measured on SmolLM2-135M: train/dpo.py)

# flag -> (section, field, type, help); section "" is DPOConfig itself
_FIELDS: list[Row] = [
    ("--beta", "", "beta", float, "how far the policy may move from the reference (default 0.1)"),
    ("--loss", "", "loss", str, "sigmoid (DPO, default), ipo, hinge or robust"),
    (
        "--label-smoothing",
        "",
        "label_smoothing",
        float,
        "assumed label noise: conservative DPO (sigmoid) or rDPO (robust)",
    ),
    (
        "--nll-weight",
        "",
        "nll_weight",
        float,
        "DPO+NLL: add this times the chosen replies' NLL per token (0: off)",
    ),
    (
        "--reference",
        "",
        "reference",
        str,
        "auto (LoRA: the base with adapters off; full: log-probs precomputed once), "
        "adapters-off or precomputed",
    ),
    *LORA_ROWS,
    *optim_rows("peak learning rate (default 1e-5; with --lora-rank 1e-4)"),
    ("--batch-size", "", "batch_size", int, "pairs per micro-batch (default 4)"),
    ("--max-len", "", "max_len", int, "prompt + reply tokens; longer replies are cut"),
    (
        "--max-prompt-len",
        "",
        "max_prompt_len",
        int,
        "pairs with a longer prompt are skipped (default: max-len - 1)",
    ),
    *length_rows("training pairs"),
    (
        "--skill-tasks",
        "",
        "skill_tasks",
        int,
        "held-out skill tasks per kind scored before and after (default 0: skip)",
    ),
    ("--max-val", "", "max_val", int, "evaluate at most this many held-out pairs (0: all)"),
    ("--seed", "", "seed", int, "seed for the pair order and LoRA init"),
    ("--threads", "", "threads", int, "CPU threads"),
]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "model",
        metavar="MODEL",
        help="model.safetensors, .gguf, Hugging Face directory, or an alias (smollm2)",
    )
    p.add_argument(
        "--data",
        default=None,
        help="preference JSONL (TRL's forms: prompt/chosen/rejected, text or messages), or "
        "`feedback`: the web UI's thumbs, corrections and arena votes (written to OUT/pairs.jsonl), "
        "or `security`: the security mix's pairs (safe reply over the leaking one)",
    )
    p.add_argument(
        "--val-data", default=None, help="held-out preference JSONL (default: every 20th pair)"
    )
    p.add_argument(
        "--feedback-db",
        default=None,
        metavar="PATH",
        help="--data feedback: the feedback database (default: the one the web UI writes)",
    )
    p.add_argument(
        "--arena-db",
        default=None,
        metavar="PATH",
        help="--data feedback: the arena database (default: the one the web UI writes, if any)",
    )
    p.add_argument("--out", default="runs/dpo", help="run directory")
    for flag, _, _, typ, help_text in _FIELDS:
        p.add_argument(flag, type=typ, default=None, help=help_text)
    add_lora_flags(p, merge=True)
    add_training_run_flags(p)
    add_json_flag(p)


def run(args: argparse.Namespace) -> int:
    from twofiles.errors import BadInputError
    from twofiles.train.dpo import DPOConfig, dpo

    if (saved := saved_run(args)) is not None:
        cfg = _resumed_config(args, saved)
    else:
        if not args.data:
            raise BadInputError("--data: give a preference JSONL file, `feedback` or `security`")
        cfg = DPOConfig(
            model=args.model,
            data=args.data,
            val_data=args.val_data or "",
            feedback_db=args.feedback_db or "",
            arena_db=args.arena_db or "",
            out=args.out,
        )
        set_given_fields(cfg, args, _FIELDS)
        if cfg.lora_rank and args.lr is None:  # adapters need ~10x the full LR (train/dpo.py)
            cfg.optim.lr = LORA_LR
        if args.lora_targets:
            cfg.lora_targets = lora_targets(args.lora_targets)
        cfg.merge = args.merge
        cfg.device, cfg.dtype = args.device, args.dtype
    cfg.resume, cfg.progress = args.resume, not args.no_progress
    from twofiles.train.runctl import RunInterrupted

    try:
        res = dpo(cfg)
    except RunInterrupted as e:  # a checkpoint is saved; the message says how to continue
        return e.exit_code
    b, a = res.before, res.after
    print(
        f"held-out pairs: loss {b.get('eval_loss', float('nan')):.4f} -> "
        f"{a.get('eval_loss', float('nan')):.4f}, reward accuracy "
        f"{a.get('eval_rewards/accuracies', float('nan')):.0%}, margin "
        f"{a.get('eval_rewards/margins', float('nan')):.4f}; {res.steps} steps in "
        f"{res.train_seconds:.1f}s; model {res.model_path}"
    )
    if args.json:
        emit_json(res.summary())
    return 0


def _resumed_config(args: argparse.Namespace, saved: dict[str, Any]) -> DPOConfig:
    from twofiles.train.dpo import DPOConfig

    extra: dict[str, tuple[str, Any]] = {}
    if args.lora_targets:
        extra["lora_targets"] = ("--lora-targets", lora_targets(args.lora_targets))
    if args.merge:
        extra["merge"] = ("--merge", True)
    paths = [
        ("model", "MODEL", args.model),
        ("data", "--data", args.data),
        ("val_data", "--val-data", args.val_data),
        ("feedback_db", "--feedback-db", args.feedback_db),
        ("arena_db", "--arena-db", args.arena_db),
    ]
    return resumed_config(DPOConfig, args, saved, _FIELDS, paths=paths, extra=extra)
