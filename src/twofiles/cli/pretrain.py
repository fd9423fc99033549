"""Pretrain a Llama-style base model on prepared token shards (single process or under torchrun)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from twofiles.cli.common import (
    CHECKPOINT_ROWS,
    Row,
    add_json_flag,
    add_training_run_flags,
    emit_json,
    resumed_config,
    saved_run,
    set_given_fields,
)

if TYPE_CHECKING:
    from twofiles.train.pretrain import PretrainConfig

# flag -> (section, field, type); section "" is PretrainConfig itself
_FIELDS: list[Row] = [
    ("--dim", "model", "dim", int, "residual width"),
    ("--n-layers", "model", "n_layers", int, "transformer blocks"),
    ("--n-heads", "model", "n_heads", int, "query heads"),
    (
        "--n-kv-heads",
        "model",
        "n_kv_heads",
        int,
        "key/value heads (< n-heads: grouped-query attention)",
    ),
    ("--hidden-dim", "model", "hidden_dim", int, "SwiGLU inner width"),
    ("--rope-theta", "model", "rope_theta", float, "RoPE base"),
    ("--optimizer", "optim", "optimizer", str, "muon (Muon for matrices + AdamW) or adamw"),
    ("--lr", "optim", "lr", float, "AdamW peak learning rate"),
    ("--matrix-lr", "optim", "matrix_lr", float, "Muon peak learning rate"),
    ("--weight-decay", "optim", "weight_decay", float, "decoupled weight decay on matrices"),
    ("--schedule", "optim", "schedule", str, "wsd, cosine or constant"),
    ("--warmup-steps", "optim", "warmup_steps", int, "linear warm-up steps"),
    ("--decay-frac", "optim", "decay_frac", float, "WSD: fraction of steps spent decaying"),
    ("--grad-clip", "optim", "grad_clip", float, "global gradient-norm clip (0: off)"),
    ("--batch-size", "", "batch_size", int, "sequences per micro-batch per process"),
    ("--seq-len", "", "seq_len", int, "context length in tokens"),
    ("--grad-accum", "", "grad_accum", int, "micro-batches per optimizer step"),
    ("--max-steps", "", "max_steps", int, "optimizer steps"),
    (
        "--time-budget",
        "",
        "time_budget_s",
        float,
        "train for this many seconds instead of --max-steps",
    ),
    ("--eval-interval", "", "eval_interval", int, "steps between validation evaluations"),
    ("--eval-tokens", "", "eval_tokens", int, "validation tokens per periodic evaluation"),
    ("--sample-interval", "", "sample_interval", int, "steps between printed samples"),
    *CHECKPOINT_ROWS,
    ("--seed", "", "seed", int, "seed for init and data order"),
    ("--threads", "", "threads", int, "CPU threads"),
]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="prepared data directory (twofiles data prepare)")
    p.add_argument("--out", default="runs/pretrain", help="run directory")
    p.add_argument(
        "--preset",
        default=None,
        help="start from a preset's model/optimizer/batch (cpu-5min (default), cpu-1h, gpu, tiny)",
    )
    for flag, _, _, typ, help_text in _FIELDS:
        p.add_argument(flag, type=typ, default=None, help=help_text)
    p.add_argument(
        "--tie-embeddings",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="share input and output embeddings",
    )
    p.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="torch.compile the model",
    )
    add_training_run_flags(p)
    add_json_flag(p)


def run(args: argparse.Namespace) -> int:
    from twofiles.presets import get_preset
    from twofiles.train.pretrain import PretrainConfig, pretrain

    if (saved := saved_run(args)) is not None:
        cfg = _resumed_config(args, saved)
    else:
        preset = get_preset(args.preset or "cpu-5min")
        cfg = PretrainConfig(
            data=args.data, out=args.out, model=preset.model_config(), optim=preset.optim_config()
        )
        for k, v in preset.train.items():
            setattr(cfg, k, v)
        set_given_fields(cfg, args, _FIELDS)
        if args.time_budget is None and args.max_steps is not None:
            cfg.time_budget_s = 0.0
        if args.tie_embeddings is not None:
            cfg.model.tie_embeddings = args.tie_embeddings
        if args.compile is not None:
            cfg.compile = args.compile
        cfg.device, cfg.dtype, cfg.resume, cfg.progress = (
            args.device,
            args.dtype,
            args.resume,
            not args.no_progress,
        )
        cfg.provenance = {"preset": preset.name}
    from twofiles.train.runctl import RunInterrupted

    try:
        res = pretrain(cfg)
    except RunInterrupted as e:  # a checkpoint is saved; the message says how to continue
        return e.exit_code
    import os

    if int(os.environ.get("RANK", "0")) == 0:
        print(
            f"val_bpb {res.val_bpb:.4f}, val_loss {res.val_loss:.4f}, {res.steps} steps in {res.train_seconds:.1f}s; model {res.model_path}"
        )
        if args.json:
            emit_json(
                {
                    "val_bpb": res.val_bpb,
                    "val_loss": res.val_loss,
                    "steps": res.steps,
                    "tokens": res.tokens,
                    "train_seconds": res.train_seconds,
                    "tokens_per_second": res.tokens_per_second,
                    "mfu": res.mfu,
                    "params": res.params,
                    "model_path": res.model_path,
                    "out": res.out,
                }
            )
    return 0


def _resumed_config(args: argparse.Namespace, saved: dict[str, Any]) -> PretrainConfig:
    from pathlib import Path

    from twofiles.train.pretrain import PretrainConfig

    extra: dict[str, tuple[str, Any]] = {}
    if args.tie_embeddings is not None:
        extra["model.tie_embeddings"] = ("--tie-embeddings", args.tie_embeddings)
    if args.compile is not None:
        extra["compile"] = ("--compile", args.compile)
    if args.preset is not None:
        extra["provenance.preset"] = ("--preset", args.preset)
    same_data = Path(args.data).resolve() == Path(saved.get("data", "")).resolve()
    extra["data"] = ("--data", saved.get("data") if same_data else args.data)
    cfg = resumed_config(PretrainConfig, args, saved, _FIELDS, extra=extra)
    cfg.resume, cfg.progress = True, not args.no_progress
    return cfg
