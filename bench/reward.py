"""The reward model, measured: held-out pair accuracy, and best-of-N with it against majority vote.

(a) Trains a reward model on the built-in pairs (`twofiles reward MODEL --data builtin`, LoRA,
a time budget) and reports its held-out pair accuracy before (the untrained head) and after.
(b) On held-out verifiable prompts (the skills' arithmetic val split: no task shared with the
training pairs) it samples N_max replies per prompt in one batch (system2.sample_texts), scores
every sample with the reward model, and compares, at N = 1, 4, 16:

- best-of-N: the sample the reward model scores highest (ties: the earliest);
- majority vote (self-consistency): the most common final number of the N;
- any correct: at least one of the N right (what a perfect verifier could pick);

each averaged over many random N-subsets of the N_max drawn (exact at N = N_max), correctness by
the task's own checker (skills.check: the reply's last number is the answer).

Per-prompt records (samples, scores) go to OUT/reward_bon.jsonl as they are made; a rerun with
the same OUT skips prompts already there. `--reward PATH` reuses a trained reward model, and
`--rescore` scores the stored samples again with it (two reward models on the same samples).

    python bench/reward.py --model smollm2 --train-seconds 240 --max-val 40 --prompts 12 --n 16 \
        --max-tokens 24 --out bench/results
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path


def train(args: argparse.Namespace, out: Path) -> tuple[str, dict]:
    from twofiles.train.reward import RewardConfig, train_reward

    cfg = RewardConfig(
        model=args.model,
        data="builtin",
        out=str(out / "reward_run"),
        lora_rank=args.lora_rank,
        time_budget_s=args.train_seconds,
        batch_size=args.batch_size,
        max_val=args.max_val,
        threads=args.threads,
        checkpoint_seconds=0,
        progress=False,
    )
    cfg.optim.lr = args.lr
    cfg.optim.warmup_steps = 2  # a CPU budget buys few steps: the default 10 would be all warm-up
    t0 = time.perf_counter()
    res = train_reward(cfg)
    info = {
        "before": res.before,
        "after": res.after,
        "steps": res.steps,
        "pairs_seen": res.steps * args.batch_size,
        "train_seconds": res.train_seconds,
        "wall_seconds": time.perf_counter() - t0,
        "val_pairs": res.val_pairs,
    }
    (out / "reward_train.json").write_text(json.dumps(info, indent=1))
    return res.model_path, info


def sample_and_score(args: argparse.Namespace, reward_path: str, out: Path) -> list[dict]:
    from twofiles.chat import ChatFormat, Message
    from twofiles.data.skills import skill_tasks
    from twofiles.engine import SamplingParams
    from twofiles.formats.resolve import resolve_model
    from twofiles.scoring import load_reward_scorer
    from twofiles.system2 import sample_texts

    path = out / "reward_bon.jsonl"
    done = {}
    if path.exists():
        for line in path.read_text().splitlines():
            r = json.loads(line)
            done[r["prompt"]] = r
    tasks = skill_tasks("arithmetic", "val", args.prompts, seed=0)
    loaded = resolve_model(args.model, device="cpu")
    fmt = ChatFormat.for_model(loaded)
    scorer = load_reward_scorer(reward_path, device="cpu")
    params = SamplingParams(
        temperature=0.7,
        top_p=0.95,
        seed=0,
        max_tokens=args.max_tokens,
        stop_token_ids=list(fmt.stop_token_ids),
    )
    records = []
    for i, t in enumerate(tasks):
        if t.prompt in done:
            rec = done[t.prompt]
            if args.rescore:  # the same samples, scored by another reward model
                t1 = time.perf_counter()
                rec["scores"] = scorer.score_batch(
                    [[Message("user", t.prompt)]] * len(rec["samples"]), rec["samples"]
                )
                rec["score_seconds"] = time.perf_counter() - t1
            records.append(rec)
            continue
        msgs = [Message("user", t.prompt)]
        t0 = time.perf_counter()
        texts = sample_texts(loaded.model, loaded.tokenizer, fmt.prompt_ids(msgs), params, args.n)
        t1 = time.perf_counter()
        scores = scorer.score_batch([msgs] * len(texts), texts)
        rec = {
            "prompt": t.prompt,
            "answer": t.answer,
            "samples": texts,
            "scores": scores,
            "sample_seconds": t1 - t0,
            "score_seconds": time.perf_counter() - t1,
        }
        with path.open("a") as f:
            f.write(json.dumps(rec) + "\n")
        records.append(rec)
        print(
            f"[{i + 1}/{len(tasks)}] {t.prompt!r}: sampled in {t1 - t0:.0f}s, scored in "
            f"{rec['score_seconds']:.0f}s",
            file=sys.stderr,
            flush=True,
        )
    if args.rescore:  # the file holds the scores the report uses
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return records


def accuracies(records: list[dict], ns: list[int], subsets: int) -> dict[str, list[float]]:
    """Mean accuracy over prompts of best-of-k, vote-of-k and any-correct-of-k."""
    from twofiles.answers import majority_vote
    from twofiles.data.skills import SkillTask, check, last_number

    rng = random.Random(0)
    out: dict[str, list[float]] = {"best_of_n": [], "vote": [], "any": []}
    for k in ns:
        best, vote, anyc = [], [], []
        for r in records:
            task = SkillTask("arithmetic", r["prompt"], r["answer"])
            right = [check(task, s) for s in r["samples"]]
            numbers = [last_number(s) for s in r["samples"]]
            idx = list(range(len(r["samples"])))
            draws = [idx] if k >= len(idx) else [sorted(rng.sample(idx, k)) for _ in range(subsets)]
            b = v = a = 0.0
            for d in draws:
                pick = max(d, key=lambda i: (r["scores"][i], -i))
                b += right[pick]
                v += majority_vote([numbers[i] for i in d]) == r["answer"]
                a += any(right[i] for i in d)
            best.append(b / len(draws))
            vote.append(v / len(draws))
            anyc.append(a / len(draws))
        out["best_of_n"].append(statistics.fmean(best))
        out["vote"].append(statistics.fmean(vote))
        out["any"].append(statistics.fmean(anyc))
    return out


def report(info: dict, records: list[dict], ns: list[int], subsets: int) -> str:
    acc = accuracies(records, ns, subsets)
    b, a = info.get("before", {}), info.get("after", {})
    lines = [
        "| reward model (held-out pairs) | before (untrained head) | after |",
        "| --- | ---: | ---: |",
        f"| pair accuracy | {b.get('val_accuracy', float('nan')):.1%} | {a.get('val_accuracy', float('nan')):.1%} |",
        f"| Bradley–Terry loss | {b.get('val_loss', float('nan')):.4f} | {a.get('val_loss', float('nan')):.4f} |",
        "",
        f"| {len(records)} held-out arithmetic prompts | "
        + " | ".join(f"N={k}" for k in ns)
        + " |",
        "| --- |" + " ---: |" * len(ns),
    ]
    for key, label in (
        ("best_of_n", "best-of-N (reward model)"),
        ("vote", "majority vote (self-consistency)"),
        ("any", "any correct (oracle)"),
    ):
        lines.append(f"| {label} | " + " | ".join(f"{x:.1%}" for x in acc[key]) + " |")
    sample_s = sum(r["sample_seconds"] for r in records)
    score_s = sum(r["score_seconds"] for r in records)
    n = sum(len(r["samples"]) for r in records)
    lines += [
        "",
        f"{n} samples drawn in {sample_s:.0f} s, scored in {score_s:.0f} s; reward model: "
        f"{info.get('steps', '?')} steps ({info.get('pairs_seen', '?')} pairs) in "
        f"{info.get('train_seconds', float('nan')):.0f} s.",
    ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--reward", default=None, help="a trained reward.safetensors (skip training)")
    ap.add_argument(
        "--rescore",
        action="store_true",
        help="score the samples already in OUT/reward_bon.jsonl again (with --reward: another model)",
    )
    ap.add_argument("--train-seconds", type=float, default=240.0)
    ap.add_argument("--lora-rank", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--batch-size", type=int, default=8, help="pairs per step")
    ap.add_argument("--max-val", type=int, default=40, help="held-out pairs scored")
    ap.add_argument("--prompts", type=int, default=12)
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=24)
    ap.add_argument("--subsets", type=int, default=200)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--out", default="bench/results")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    if args.reward:
        reward_path = args.reward
        info_path = Path(args.reward).parent.parent / "reward_train.json"
        info = json.loads(info_path.read_text()) if info_path.exists() else {}
    else:
        reward_path, info = train(args, out)
    records = sample_and_score(args, reward_path, out)
    ns = [k for k in (1, 4, 16) if k <= args.n]
    text = report(info, records, ns, args.subsets)
    text += f"\n\nTotal wall time {time.perf_counter() - t0:.0f} s."
    (out / "reward.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
