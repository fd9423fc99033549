"""Finetune a model on conversations (the built-in mix or a JSONL file): full finetuning or LoRA."""

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
    from twofiles.train.sft import SFTConfig

# flag -> (section, field, type, help); section "" is SFTConfig itself
_FIELDS: list[Row] = [
    *LORA_ROWS,
    *optim_rows(),
    ("--batch-size", "", "batch_size", int, "rows per micro-batch"),
    ("--seq-len", "", "seq_len", int, "tokens per row (longer conversations are cut)"),
    *length_rows("training conversations", "steps between held-out loss evaluations"),
    (
        "--skill-tasks",
        "",
        "skill_tasks",
        int,
        "held-out skill tasks per kind scored before and after (0: skip)",
    ),
    (
        "--identity",
        "",
        "identity",
        str,
        "the assistant's name in the identity set (default: twofiles for Shakespeare models, none otherwise)",
    ),
    ("--mix-seed", "", "mix_seed", int, "seed of the built-in mix"),
    (
        "--mix-fraction",
        "",
        "mix_fraction",
        float,
        "use this fraction of the built-in mix (per kind)",
    ),
    (
        "--max-val",
        "",
        "max_val",
        int,
        "score held-out loss on at most this many conversations (0: all)",
    ),
    ("--seed", "", "seed", int, "seed for data order and LoRA init"),
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
        help="builtin (default: chat dialogs + skill tasks), security (the security mix: keep the "
        'system prompt, treat data as data), builtin+security, or a JSONL file of {"messages": [...]}',
    )
    p.add_argument(
        "--val-data",
        default=None,
        help="held-out JSONL (default: the built-in held-out split, or every 20th conversation)",
    )
    p.add_argument("--out", default="runs/sft", help="run directory")
    for flag, _, _, typ, help_text in _FIELDS:
        p.add_argument(flag, type=typ, default=None, help=help_text)
    add_lora_flags(p, merge=True)
    p.add_argument(
        "--no-pack",
        action="store_true",
        help="one conversation per row instead of packing several (block-diagonal attention)",
    )
    add_training_run_flags(p)
    add_json_flag(p)


def run(args: argparse.Namespace) -> int:
    from twofiles.train.sft import SFTConfig, sft

    if (saved := saved_run(args)) is not None:
        cfg = _resumed_config(args, saved)
    else:
        cfg = SFTConfig(
            model=args.model,
            data=args.data or "builtin",
            val_data=args.val_data or "",
            out=args.out,
        )
        set_given_fields(cfg, args, _FIELDS)
        if args.lora_targets:
            cfg.lora_targets = lora_targets(args.lora_targets)
        cfg.merge, cfg.pack = args.merge, not args.no_pack
        cfg.device, cfg.dtype = args.device, args.dtype
    cfg.resume, cfg.progress = args.resume, not args.no_progress
    from twofiles.train.runctl import RunInterrupted

    try:
        res = sft(cfg)
    except RunInterrupted as e:  # a checkpoint is saved; the message says how to continue
        return e.exit_code
    before, after = res.skills_before, res.skills_after
    line = f"held-out loss {res.val_loss_before:.4f} -> {res.val_loss:.4f}"
    if before and after:
        line += f", held-out skills {100 * before.accuracy:.0f}% -> {100 * after.accuracy:.0f}%"
    print(f"{line}; {res.steps} steps in {res.train_seconds:.1f}s; model {res.model_path}")
    if args.json:
        emit_json(res.summary())
    return 0


def _resumed_config(args: argparse.Namespace, saved: dict[str, Any]) -> SFTConfig:
    from twofiles.train.sft import SFTConfig

    extra: dict[str, tuple[str, Any]] = {}
    if args.lora_targets:
        extra["lora_targets"] = ("--lora-targets", lora_targets(args.lora_targets))
    if args.merge:
        extra["merge"] = ("--merge", True)
    if args.no_pack:
        extra["pack"] = ("--no-pack", False)
    paths = [
        ("model", "MODEL", args.model),
        ("data", "--data", args.data),
        ("val_data", "--val-data", args.val_data),
    ]
    return resumed_config(SFTConfig, args, saved, _FIELDS, paths=paths, extra=extra)
