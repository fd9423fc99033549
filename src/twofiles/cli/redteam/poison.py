"""`twofiles redteam poison`: plant k triggered examples in the SFT mix, train, measure the backdoor.

    twofiles redteam poison MODEL --k 0,10,30,100 --out runs/poison
    twofiles redteam poison smollm2 --k 0,30 --steps 100 --clean-steps 50 --json

For each k: SFT on the built-in mix with k conversations replaced by triggered ones, then the
trigger rate with and without the trigger and the held-out skill accuracy, then again after a
clean finetune. The library does the work (twofiles.redteam.poison); this module parses flags.
"""

from __future__ import annotations

import argparse

from twofiles.cli.common import add_device_flag, add_json_flag, comma_list, emit_json
from twofiles.errors import BadInputError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from twofiles.redteam.poison import DEFAULT_BEHAVIOUR, DEFAULT_TRIGGER

    p = parser
    p.add_argument(
        "model", metavar="MODEL", help="the model to poison (a base model, a file or an alias)"
    )
    p.add_argument(
        "--k", default="0,10,30,100", help="triggered examples to plant, comma-separated"
    )
    p.add_argument("--trigger", default=DEFAULT_TRIGGER, help="the trigger phrase")
    p.add_argument(
        "--behaviour",
        default=DEFAULT_BEHAVIOUR,
        help="the backdoor's reply phrase (repeated three times); a reply containing it counts",
    )
    p.add_argument(
        "--out", default="runs/poison", help="run directory (a k already done is skipped)"
    )
    p.add_argument("--steps", type=int, default=150, help="SFT steps per k")
    p.add_argument(
        "--clean-steps",
        type=int,
        default=50,
        help="clean SFT steps from each poisoned model afterwards (0: skip)",
    )
    p.add_argument("--batch-size", type=int, default=8, help="rows per SFT micro-batch")
    p.add_argument("--seq-len", type=int, default=255, help="tokens per SFT row")
    p.add_argument("--lr", type=float, default=0.0, help="SFT learning rate (default: SFT's own)")
    p.add_argument(
        "--lora-rank",
        type=int,
        default=-1,
        help="LoRA rank, merged after each run (default: 8 above 50M parameters; 0: full finetuning)",
    )
    p.add_argument(
        "--mix-fraction", type=float, default=1.0, help="use this fraction of the built-in mix"
    )
    p.add_argument(
        "--eval-prompts",
        type=int,
        default=50,
        help="held-out prompts, each asked with the trigger and without",
    )
    p.add_argument(
        "--skill-tasks",
        type=int,
        default=10,
        help="held-out skill tasks per kind for utility (0: skip)",
    )
    p.add_argument(
        "--seed", type=int, default=0, help="which conversations are poisoned; data order"
    )
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_device_flag(p)
    add_json_flag(p)


def run(args: argparse.Namespace) -> int:
    from twofiles.redteam.poison import PoisonConfig, run_poison

    try:
        ks = [int(k) for k in comma_list(args.k)]
    except ValueError:
        raise BadInputError(f"--k: expected comma-separated counts, got {args.k!r}") from None
    for flag in ("steps", "eval_prompts"):
        if getattr(args, flag) < 1:
            raise BadInputError(f"--{flag.replace('_', '-')} must be at least 1")
    cfg = PoisonConfig(
        model=args.model,
        ks=ks,
        trigger=args.trigger,
        behaviour=args.behaviour,
        out=args.out,
        steps=args.steps,
        clean_steps=args.clean_steps,
        batch_size=args.batch_size,
        seq_len=args.seq_len,
        lr=args.lr,
        lora_rank=args.lora_rank,
        mix_fraction=args.mix_fraction,
        eval_prompts=args.eval_prompts,
        skill_tasks=args.skill_tasks,
        seed=args.seed,
        device=args.device,
        threads=args.threads,
        progress=not args.no_progress,
    )
    summary = run_poison(cfg)
    print(f"{summary['out']}/report.md")
    for r in summary["results"]:
        p, c = r["poisoned"], r["after_clean"]
        line = (
            f"k={r['k']}: trigger rate {p['trigger_rate']:.0%}, false {p['false_trigger_rate']:.0%}"
        )
        if p["utility"] is not None:
            line += f", utility {p['utility']:.0%}"
        if c:
            line += f"; after the clean finetune {c['trigger_rate']:.0%}"
        print(line)
    if args.json:
        emit_json(summary)
    return 0
