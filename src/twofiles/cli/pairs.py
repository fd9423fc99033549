"""Preference pairs from a model's own samples: K answers per prompt, labelled by the task's verifier
(or a reward model), written as TRL-form JSONL for `twofiles dpo`."""

from __future__ import annotations

import argparse
from typing import Any

from twofiles.cli.common import add_device_flag, add_json_flag, emit_json

PROMPTS_PER_BATCH = 32  # prompts sampled together (x K rows through the batched decoder)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "model",
        metavar="MODEL",
        help="model.safetensors, .gguf, Hugging Face directory, or an alias (smollm2)",
    )
    p.add_argument(
        "--tasks",
        default="arithmetic",
        help="verifiable tasks: arithmetic, skills[:KIND,...], gsm8k, a task file (default arithmetic)",
    )
    p.add_argument("--samples", type=int, default=8, help="answers sampled per prompt (K)")
    p.add_argument("--out", required=True, help="the pairs JSONL to write")
    p.add_argument(
        "--judge",
        default="verifier",
        help="verifier (the task's checker, default) or reward:PATH (a reward model's scores)",
    )
    p.add_argument(
        "--pairs-per-prompt", type=int, default=1, help="at most this many pairs per prompt"
    )
    p.add_argument("--limit", type=int, default=0, help="at most this many prompts (0: all)")
    p.add_argument("--split", choices=("train", "val"), default="train", help="the tasks' split")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature")
    p.add_argument("--max-tokens", type=int, default=64, help="tokens per reply (per round)")
    p.add_argument(
        "--max-rounds", type=int, default=3, help="replies per sample (calculator call, answer)"
    )
    p.add_argument(
        "--max-prompt-len",
        type=int,
        default=0,
        help="skip prompts longer than this many tokens (0: what leaves --max-tokens in context)",
    )
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    add_device_flag(p)
    add_json_flag(p)


def run(args: argparse.Namespace) -> int:
    import json
    import sys
    import time

    from twofiles import runtime as rt_mod
    from twofiles.artifact import atomic_write_bytes
    from twofiles.chat import ChatFormat
    from twofiles.engine import SamplingParams
    from twofiles.errors import BadInputError, TwofilesError
    from twofiles.formats.resolve import resolve_model
    from twofiles.rollouts import (
        Judge,
        label_pairs,
        load_tasks,
        pass_at_k,
        sample_rollouts,
        verifier_judge,
    )

    for name in ("samples", "pairs_per_prompt", "max_tokens", "max_rounds"):
        if getattr(args, name) < 1:
            raise BadInputError(f"--{name.replace('_', '-')} {getattr(args, name)}: must be >= 1")
    if args.samples < 2:
        raise BadInputError("--samples: a pair needs at least 2 samples per prompt")
    if args.limit < 0 or args.max_prompt_len < 0 or args.temperature < 0:
        raise BadInputError("--limit, --max-prompt-len and --temperature must be >= 0")
    tasks = load_tasks(args.tasks, args.split)
    if args.limit:
        tasks = tasks[: args.limit]
    judge: Judge
    if args.judge == "verifier":
        judge = verifier_judge(tasks)
    elif args.judge.startswith("reward:"):
        import importlib

        # a reward model's scores (twofiles reward); imported only when asked for
        scoring = importlib.import_module("twofiles.scoring")
        judge = scoring.load_reward_scorer(args.judge[len("reward:") :]).score_batch
    else:
        raise BadInputError(f"--judge {args.judge!r}: verifier or reward:PATH")

    rt = rt_mod.setup(args.device, "auto", args.threads or None, purpose="inference")
    try:
        loaded = resolve_model(args.model, device=rt.device)
        model, tok = loaded.model, loaded.tokenizer
        try:  # a model without a chat template gets the task's plain prompt
            fmt: ChatFormat | None = ChatFormat.for_model(loaded)
        except TwofilesError:
            fmt = None
        limit = args.max_prompt_len or model.config.max_seq_len - args.max_tokens
        fits, too_long = [], 0
        for t in tasks:
            ids = fmt.prompt_ids(t.messages()) if fmt else tok.encode(t.plain)
            if len(ids) > limit:
                too_long += 1
            else:
                fits.append(t)
        params = SamplingParams(temperature=args.temperature, max_tokens=args.max_tokens)
        lines: list[dict[str, Any]] = []
        skipped: dict[str, int] = {}
        correct: list[int] = []
        n_tokens, t0 = 0, time.perf_counter()
        for i in range(0, len(fits), PROMPTS_PER_BATCH):
            batch = fits[i : i + PROMPTS_PER_BATCH]
            outs = sample_rollouts(
                model,
                tok,
                fmt,
                batch,
                params,
                group=args.samples,
                max_rounds=args.max_rounds,
                seed=args.seed,
            )
            n_tokens += sum(r.n_model_tokens for r in outs)
            scores = judge(
                [r.task.prompt if fmt else r.task.plain for r in outs], [r.reply for r in outs]
            )
            made, skip = label_pairs(
                outs,
                args.samples,
                scores,
                pairs_per_prompt=args.pairs_per_prompt,
                verifier=args.judge == "verifier",
                conversational=fmt is not None,
            )
            lines += made
            for k, v in skip.items():
                skipped[k] = skipped.get(k, 0) + v
            correct += [
                sum(r.correct for r in outs[j : j + args.samples])
                for j in range(0, len(outs), args.samples)
            ]
            print(
                f"pairs: {i + len(batch)}/{len(fits)} prompts, {len(lines)} pairs",
                file=sys.stderr,
                flush=True,
            )
        seconds = time.perf_counter() - t0
    finally:
        rt_mod.teardown(rt)
    skipped["prompt_too_long"] = skipped.get("prompt_too_long", 0) + too_long
    atomic_write_bytes(
        args.out, "".join(json.dumps(x, ensure_ascii=False) + "\n" for x in lines).encode()
    )
    k = args.samples
    summary = {
        "out": args.out,
        "pairs": len(lines),
        "prompts": len(tasks),
        "samples": len(fits) * k,
        "skipped": skipped,
        # the verifier's view of the samples, whichever judge labelled the pairs
        "accuracy": sum(correct) / max(len(fits) * k, 1),
        "pass@1": sum(pass_at_k(k, c, 1) for c in correct) / max(len(correct), 1),
        f"pass@{k}": sum(pass_at_k(k, c, k) for c in correct) / max(len(correct), 1),
        "seconds": seconds,
        "tokens_per_second": n_tokens / max(seconds, 1e-9),
    }
    reasons = ", ".join(f"{v} {r.replace('_', ' ')}" for r, v in skipped.items() if v)
    print(
        f"{len(lines)} pairs from {len(tasks)} prompts x {k} samples -> {args.out}; "
        f"skipped: {reasons or 'none'}; pass@1 {summary['pass@1']:.1%}, pass@{k} "
        f"{summary[f'pass@{k}']:.1%}"
    )
    if args.json:
        emit_json(summary)
    return 0
