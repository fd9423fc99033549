"""`twofiles experiment`: reproduce a published result end to end on any model.

    twofiles experiment reversal MODEL --out runs/reversal --facts 30 --epochs 10 --json
    twofiles experiment reversal --write-data DIR      (the facts as JSONL, no model needed)

`reversal`: the reversal curse (Berglund et al. 2023): finetune on fictitious facts stated one way
round, test both ways, with and without reverse training (Golovneva et al. 2024). The library does
the work (twofiles.experiments); this module parses flags.
"""

from __future__ import annotations

import argparse

from twofiles.cli.common import add_device_flag, add_json_flag, emit_json
from twofiles.errors import BadInputError

# experiment -> one-line help
EXPERIMENTS: dict[str, str] = {
    "reversal": "the reversal curse: finetune on 'A is B', test 'B is A' (+ reverse training)",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="experiment", metavar="EXPERIMENT", required=True)
    p = sub.add_parser(
        "reversal", help=EXPERIMENTS["reversal"], description=EXPERIMENTS["reversal"]
    )
    p.add_argument(
        "model",
        metavar="MODEL",
        nargs="?",
        help="the model to finetune as a text model (file, GGUF, HF directory or alias)",
    )
    p.add_argument("--out", default="runs/reversal", help="run directory (parts done are kept)")
    p.add_argument("--facts", type=int, default=30, help="facts per subset (three subsets)")
    p.add_argument("--seed", type=int, default=0, help="the facts, candidates and data order")
    p.add_argument("--epochs", type=float, default=10.0, help="passes over the training documents")
    p.add_argument(
        "--mitigation",
        choices=["none", "reverse", "both"],
        default="both",
        help="none: the paper's setting; reverse: add entity-preserving reversed documents; "
        "both: run both and compare (default)",
    )
    p.add_argument(
        "--lr",
        type=float,
        default=0.0,
        help="peak learning rate (default 1e-3; 1e-4 for full finetuning above 50M parameters)",
    )
    p.add_argument("--batch-size", type=int, default=8, help="packed rows per step")
    p.add_argument("--seq-len", type=int, default=256, help="tokens per packed row")
    p.add_argument(
        "--lora-rank",
        type=int,
        default=-1,
        help="LoRA rank (default: 16 above 50M parameters, full finetuning below; 0: full)",
    )
    p.add_argument(
        "--eval-templates",
        type=int,
        default=3,
        help="held-out paraphrases per fact and direction scored by exact match (1-3)",
    )
    p.add_argument(
        "--logprob-templates",
        type=int,
        default=1,
        help="of which this many also take the log-probability test",
    )
    p.add_argument(
        "--candidates", type=int, default=10, help="other answers the right one is compared with"
    )
    p.add_argument("--max-tokens", type=int, default=24, help="greedy tokens per completion")
    p.add_argument(
        "--write-data",
        metavar="DIR",
        default="",
        help="write the facts, training documents and test prompts as JSONL to DIR "
        "(without MODEL: only that)",
    )
    p.add_argument(
        "--dtype", default="auto", help="training precision: auto, fp32, bf16 (scoring is fp32)"
    )
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_device_flag(p)
    add_json_flag(p)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from twofiles.experiments import facts as F
    from twofiles.experiments.reversal import ReversalConfig, run_reversal

    if args.write_data:
        if not 1 <= args.eval_templates <= len(F.HELD_OUT_TEMPLATES["name_to_description"]):
            raise BadInputError("--eval-templates must be between 1 and 3")
        paths = F.write_data(
            Path(args.write_data), F.make_facts(args.facts, args.seed), args.eval_templates
        )
        for name, path in paths.items():
            print(f"{name}: {path}")
        if not args.model:
            if args.json:
                emit_json({"data": paths, "facts_per_subset": args.facts, "seed": args.seed})
            return 0
    if not args.model:
        raise BadInputError("MODEL is required (or --write-data DIR alone to write the data)")
    cfg = ReversalConfig(
        model=args.model,
        out=args.out,
        facts=args.facts,
        seed=args.seed,
        epochs=args.epochs,
        mitigation=args.mitigation,
        lr=args.lr,
        batch_size=args.batch_size,
        seq_len=args.seq_len,
        lora_rank=args.lora_rank,
        eval_templates=args.eval_templates,
        logprob_templates=args.logprob_templates,
        candidates=args.candidates,
        max_tokens=args.max_tokens,
        device=args.device,
        dtype=args.dtype,
        threads=args.threads,
        progress=not args.no_progress,
    )
    summary = run_reversal(cfg)
    print(f"{summary['out']}/report.md")
    for stage, h in summary["headline"].items():
        lp = h["reverse_logprob_diff"]
        test = (
            f" (log-prob test {lp:+.2f} nats, top-1 {h['reverse_top1']}/{h['reverse_lp_n']})"
            if lp is not None
            else ""
        )
        print(
            f"{stage}: forward exact match {h['forward_accuracy']:.0%}, reverse "
            f"{h['reverse_accuracy']:.0%}{test}; both-subset {h['both_accuracy']:.0%}"
        )
    if args.json:
        emit_json(summary)
    return 0
