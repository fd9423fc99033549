"""What `twofiles export gguf` costs and loses, per tensor type, on a real model.

For each --type (f32, f16, q8_0) the model is exported, read back with our importer, and compared
with the model it came from: file size, export and re-import seconds, the largest logit difference
over prompt + reply positions (relative to the logits' standard deviation), and how many of the
source model's greedy tokens (a reply ends early at an eos) the re-imported model reproduces
before the first difference. Types
are visited in turn within each round (round-robin, so machine load hits them alike); times are the
median over rounds. Quality figures do not depend on the round.

    .venv/bin/python bench/gguf_export.py [--model smollm2] [--types f32 f16 q8_0] [--rounds 2] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from twofiles.engine import SamplingParams, generate
from twofiles.formats.gguf import load_gguf
from twofiles.formats.gguf_export import export_gguf
from twofiles.formats.resolve import resolve_model

PROMPTS = [
    "def fibonacci(n):\n    ",
    "Once upon a time, in a village of 1,234 people,",
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
]


def greedy(loaded, ids: list[int], n: int) -> list[int]:
    params = SamplingParams(
        temperature=0.0, max_tokens=n, stop_token_ids=list(loaded.tokenizer.eos_ids)
    )
    return list(generate(loaded.model, ids, params, tokenizer=loaded.tokenizer))


def agreement(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--types", nargs="+", default=["f32", "f16", "q8_0"])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    src = resolve_model(args.model)
    prompts = [(src.tokenizer.encode(p, allow_special=True), p) for p in PROMPTS]
    replies = [greedy(src, ids, args.new_tokens) for ids, _ in prompts]
    times: dict[str, dict[str, list[float]]] = {t: {"export": [], "load": []} for t in args.types}
    quality: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for qtype in args.types:
                path = Path(tmp) / f"m-{qtype}.gguf"
                t0 = time.perf_counter()
                summary = export_gguf(src, path, qtype=qtype)
                t1 = time.perf_counter()
                back = load_gguf(path)
                t2 = time.perf_counter()
                times[qtype]["export"].append(t1 - t0)
                times[qtype]["load"].append(t2 - t1)
                if r == 0:
                    err, agree = 0.0, []
                    with torch.no_grad():
                        for (ids, _), reply in zip(prompts, replies):
                            full = torch.tensor([ids + reply])
                            expected = src.model(full)
                            err = max(
                                err,
                                ((back.model(full) - expected).abs().max() / expected.std()).item(),
                            )
                            agree.append(agreement(greedy(back, ids, args.new_tokens), reply))
                    quality[qtype] = {
                        "mb": round(summary["bytes"] / 1e6, 1),
                        "max_logit_diff_rel_std": err,
                        "greedy_agree": agree,
                        "reply_tokens": [len(reply) for reply in replies],
                    }
                del back
    rows = []
    for qtype in args.types:
        row = {
            "type": qtype,
            **quality[qtype],
            "export_s": round(statistics.median(times[qtype]["export"]), 2),
            "load_s": round(statistics.median(times[qtype]["load"]), 2),
        }
        rows.append(row)
        print(
            f"{qtype:>5}  {row['mb']:7.1f} MB  export {row['export_s']:6.2f}s  load {row['load_s']:6.2f}s  "
            f"max|dlogit|/std {row['max_logit_diff_rel_std']:.2e}  greedy tokens kept {row['greedy_agree']} of {row['reply_tokens']}"
        )
    if args.json:
        print(json.dumps({"model": args.model, "rounds": args.rounds, "rows": rows}))


if __name__ == "__main__":
    main()
