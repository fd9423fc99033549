"""Run the whole pipeline on the built-in corpus: tokenizer -> data -> pretrain -> samples -> SFT
-> RL -> report."""

from __future__ import annotations

import argparse

from twofiles.cli.common import add_alias, add_device_flag, add_json_flag, emit_json


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--preset",
        default="cpu-5min",
        help="cpu-5min (default), cpu-1h, gpu or tiny; see `twofiles speedrun --list`",
    )
    p.add_argument("--list", action="store_true", help="list the presets and what each expects")
    p.add_argument("--out", default="runs/speedrun", help="run directory (default runs/speedrun)")
    p.add_argument(
        "--time-budget",
        dest="budget",
        type=float,
        default=None,
        help="wall-clock budget in seconds for the base model (default: the preset's)",
    )
    add_alias(p, "--budget", "--time-budget")
    p.add_argument(
        "--max-steps", type=int, default=None, help="fixed number of steps instead of a time budget"
    )
    add_device_flag(p)
    p.add_argument(
        "--seed",
        type=int,
        default=1337,
        help="seed for training, SFT and the samples (default 1337)",
    )
    p.add_argument(
        "--no-sft",
        action="store_true",
        help="stop after the base model (skip the SFT and RL stages)",
    )
    p.add_argument("--no-rl", action="store_true", help="stop after SFT (skip the RL stage)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_json_flag(p)


def run(args: argparse.Namespace) -> int:
    from twofiles.presets import PRESETS, get_preset

    if args.list:
        for name, pr in PRESETS.items():
            print(f"{name:10s} {pr.description}")
        return 0
    from twofiles.speedrun import run_speedrun

    preset = get_preset(args.preset)
    overrides = {}
    budget = args.budget
    if args.max_steps is not None:
        overrides["max_steps"] = args.max_steps
        budget = 0.0
    res = run_speedrun(
        preset,
        args.out,
        budget_s=budget,
        device=args.device,
        seed=args.seed,
        progress=not args.no_progress,
        overrides=overrides,
        started=getattr(args, "_started", None),
        sft_stage=not args.no_sft,
        rl_stage=not args.no_rl,
    )
    print(
        f"val_bpb {res.val_bpb:.4f} bits/byte on the held-out plays (target {preset.expect_bpb or 'n/a'}), "
        f"base model in {res.base_wall_seconds:.1f}s ({res.steps} steps, "
        f"{res.tokens / max(res.train_seconds, 1e-9):,.0f} tokens/s, "
        f"{res.precision.get('dtype', 'fp32')}), model {res.model_path}, report {res.report}"
    )
    if res.sft:
        before, after = res.sft["skills_before"], res.sft["skills_after"]
        skills = (
            f", held-out skills {100 * before['accuracy']:.0f}% -> {100 * after['accuracy']:.0f}%"
            if before and after
            else ""
        )
        print(
            f"sft: held-out loss {res.sft['val_loss_before']:.3f} -> {res.sft['val_loss']:.3f}{skills}"
            + (
                ""
                if res.rl
                else f"; chat model {res.chat_model_path}; whole run {res.wall_seconds:.1f}s"
            )
        )
    if res.rl:
        after = res.rl.get("skills_after")
        print(
            f"rl: {res.rl['steps']} steps, mean reward {res.rl['mean_reward']:.2f}"
            + (f", held-out skills {100 * after['accuracy']:.0f}% after RL" if after else "")
            + f"; chat model {res.chat_model_path}; whole run {res.wall_seconds:.1f}s"
        )
    if args.json:
        emit_json(res.summary())
    return 0
