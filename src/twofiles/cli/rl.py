"""RL against a verifiable reward: sample groups of replies, let a program check them, train."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from twofiles.cli.common import (
    Row,
    add_json_flag,
    add_training_run_flags,
    emit_json,
    resumed_config,
    saved_run,
    set_given_fields,
)

if TYPE_CHECKING:
    from twofiles.train.rl import RLConfig

# flag -> (section, field, type, help); section "" is RLConfig itself
_FIELDS: list[Row] = [
    (
        "--tasks",
        "",
        "tasks",
        str,
        "verifiable tasks: arithmetic, skills[:KIND,...], gsm8k, a task file",
    ),
    ("--prompts", "", "prompts", int, "prompts per rollout batch (P)"),
    (
        "--group",
        "",
        "group",
        int,
        "rollouts per prompt (G), one batch; the group mean is the baseline",
    ),
    ("--max-tokens", "", "max_tokens", int, "tokens per reply (per round)"),
    (
        "--max-rounds",
        "",
        "max_rounds",
        int,
        "replies per rollout (a calculator call, its result, the answer)",
    ),
    ("--temperature", "", "temperature", float, "sampling temperature of the rollouts"),
    ("--reward", "", "reward", str, "verifier (default), or random: a seeded coin (the control)"),
    (
        "--ppo-epochs",
        "",
        "ppo_epochs",
        int,
        "optimizer steps per rollout batch (> 1: clipped ratio)",
    ),
    ("--clip-eps", "", "clip_eps", float, "the ratio is clipped to [1 - eps, 1 + eps]"),
    ("--kl-coef", "", "kl_coef", float, "weight of the KL to the reference (0: off, the default)"),
    ("--eval-tasks", "", "eval_tasks", int, "held-out tasks scored (greedy pass@1)"),
    ("--max-rows", "", "max_rows", int, "rows the decoder runs at once"),
    ("--lora-rank", "", "lora_rank", int, "train LoRA adapters of this rank (0: every weight)"),
    ("--lora-alpha", "", "lora_alpha", float, "LoRA scale numerator: the update is alpha / rank"),
    ("--lr", "optim", "lr", float, "learning rate"),
    ("--warmup-steps", "optim", "warmup_steps", int, "linear warm-up steps"),
    ("--grad-clip", "optim", "grad_clip", float, "global gradient-norm clip (0: off)"),
    ("--grad-accum", "", "grad_accum", int, "micro-batches each rollout batch is split into"),
    ("--max-steps", "", "max_steps", int, "optimizer steps"),
    ("--time-budget", "", "time_budget_s", float, "train for this many seconds"),
    ("--eval-interval", "", "eval_interval", int, "steps between held-out evaluations"),
    ("--checkpoint-interval", "", "checkpoint_interval", int, "steps between checkpoints"),
    (
        "--checkpoint-seconds",
        "",
        "checkpoint_seconds",
        float,
        "seconds between checkpoints (0: off)",
    ),
    ("--seed", "", "seed", int, "seed for prompt order, rollouts, the coin and LoRA init"),
    ("--threads", "", "threads", int, "CPU threads"),
]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "model",
        metavar="MODEL",
        help="model.safetensors, .gguf, Hugging Face directory, or an alias (smollm2)",
    )
    p.add_argument("--out", default="runs/rl", help="run directory")
    for flag, _, _, typ, help_text in _FIELDS:
        names = [flag, "--time-budget-s"] if flag == "--time-budget" else [flag]
        p.add_argument(
            *names, dest=flag[2:].replace("-", "_"), type=typ, default=None, help=help_text
        )
    p.add_argument(
        "--compare", default=None, help="another RL run directory to draw on rl.png (the control)"
    )
    p.add_argument(
        "--merge", action="store_true", help="LoRA: merge the adapters and write model.safetensors"
    )
    add_training_run_flags(p)
    add_json_flag(p)


def run(args: argparse.Namespace) -> int:
    from twofiles.train.rl import RLConfig, rl
    from twofiles.train.runctl import RunInterrupted

    if (saved := saved_run(args)) is not None:
        cfg = _resumed_config(args, saved)
    else:
        cfg = RLConfig(model=args.model, out=args.out)
        set_given_fields(cfg, args, _FIELDS)
        cfg.compare, cfg.merge = args.compare or "", args.merge
        cfg.device, cfg.dtype = args.device, args.dtype
    cfg.resume, cfg.progress = args.resume, not args.no_progress
    try:
        res = rl(cfg)
    except RunInterrupted as e:
        return e.exit_code
    heldout = (
        f"held-out pass@1 {100 * res.pass1_before:.0f}% -> {100 * res.pass1_after:.0f}% "
        f"({res.eval_tasks} tasks, {res.reward} reward)"
        if res.eval_tasks
        else f"no held-out evaluation ({res.reward} reward)"
    )
    print(
        f"{heldout}; {res.steps} steps in "
        f"{res.train_seconds:.0f}s; mean reward {res.mean_reward:.3f}, "
        f"{100 * res.frac_zero_std:.0f}% of groups without signal; model {res.model_path}"
    )
    if args.json:
        emit_json(res.summary())
    return 0


def _resumed_config(args: argparse.Namespace, saved: dict[str, Any]) -> RLConfig:
    from twofiles.train.rl import RLConfig

    return resumed_config(RLConfig, args, saved, _FIELDS)
