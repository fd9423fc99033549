"""Generative evaluation: ragged batched greedy decoding against one prompt at a time.

The same prompts (a built-in generative task's, as `twofiles eval` renders them) answered by
`twofiles.eval.backends.greedy_batch` in batches of B prompts of different lengths, and by the
engine's `generate` one prompt at a time. Rounds alternate (batched, one-at-a-time, batched, ...) after one warm-up
round each; the table gives the median seconds per round, tokens per second and the ratio, and
checks that both produce the same replies.

    .venv/bin/python bench/eval_generate.py MODEL [--task arithmetic] [--n 16] [--batch 8] [--max-tokens 32] [--rounds 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--task", default="arithmetic")
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    import torch

    from twofiles.engine import SamplingParams, generate
    from twofiles.eval.backends import LocalBackend, greedy_batch
    from twofiles.eval.tasks import fill, load_examples, load_spec
    from twofiles.formats.resolve import resolve_model

    loaded = resolve_model(args.model)
    backend = LocalBackend(loaded, name=args.model, chat=False)
    spec = load_spec(args.task)
    prompts = [
        backend.prompt_ids_for_text(fill(spec.prompt, e.fields, e.where))
        for e in load_examples(spec)[: args.n]
    ]
    tok, model, ends = loaded.tokenizer, loaded.model, backend.end_ids()

    def batched() -> list[str]:
        out = []
        for i in range(0, len(prompts), args.batch):
            out += greedy_batch(
                model, tok, prompts[i : i + args.batch], max_tokens=args.max_tokens, end_ids=ends
            )
        return out

    def one_at_a_time() -> list[str]:
        params = SamplingParams(temperature=0, max_tokens=args.max_tokens)
        return [
            tok.decode([t for t in generate(model, p, params, tokenizer=tok) if t not in ends])
            for p in prompts
        ]

    contenders = {"batched": batched, "one_at_a_time": one_at_a_time}
    times: dict[str, list[float]] = {k: [] for k in contenders}
    replies: dict[str, list[str]] = {}
    for r in range(args.rounds + 1):
        for name, fn in contenders.items():
            t0 = time.perf_counter()
            replies[name] = fn()
            if r > 0:  # round 0 warms up
                times[name].append(time.perf_counter() - t0)
    n_tokens = sum(len(tok.encode(x)) for x in replies["batched"])
    med = {k: statistics.median(v) for k, v in times.items()}
    same = replies["batched"] == replies["one_at_a_time"]
    print(
        f"{args.model}: {len(prompts)} prompts of {args.task} ({min(map(len, prompts))}-{max(map(len, prompts))} tokens), "
        f"<= {args.max_tokens} new tokens, batch {args.batch}, {torch.get_num_threads()} threads, {args.rounds} rounds"
    )
    print("| contender | median s/round | tokens/s |\n| --- | ---: | ---: |")
    for k, v in med.items():
        print(f"| {k} | {v:.2f} | {n_tokens / v:.1f} |")
    print(f"batched is {med['one_at_a_time'] / med['batched']:.2f}x faster; same replies: {same}")
    if args.json:
        print(
            json.dumps(
                {
                    "median_s": med,
                    "times": times,
                    "tokens": n_tokens,
                    "speedup": med["one_at_a_time"] / med["batched"],
                    "same": same,
                }
            )
        )


if __name__ == "__main__":
    main()
