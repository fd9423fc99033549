"""RL rollout generation speed: a group of G samples of one prompt in one batch (rollouts.py,
through the one batched decoder; the shared prompt prefilled once) against the same G samples one
row at a time, alternating, medians over rounds. The token ids must be the same both ways (each
row has its own seeded generator), so the speed-up is for identical output.

    python bench/rollouts.py --model smollm2 --group 8 --prompts 2 --rounds 3 --threads 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--tasks", default="arithmetic")
    ap.add_argument("--group", type=int, default=8, help="samples per prompt (G)")
    ap.add_argument("--prompts", type=int, default=2, help="prompts per round (P)")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", action="store_true", help="print the numbers as one JSON line")
    args = ap.parse_args()

    import torch

    from twofiles.chat import ChatFormat
    from twofiles.engine import SamplingParams
    from twofiles.formats.resolve import resolve_model
    from twofiles.rollouts import load_tasks, sample_rollouts

    torch.set_num_threads(args.threads)
    loaded = resolve_model(args.model, device="cpu")
    model, tok, fmt = loaded.model, loaded.tokenizer, ChatFormat.for_model(loaded)
    tasks = load_tasks(args.tasks, "train")
    params = SamplingParams(temperature=args.temperature, max_tokens=args.max_tokens)

    def batched(ts: list) -> tuple[float, int, list]:
        t0 = time.perf_counter()
        outs = sample_rollouts(model, tok, fmt, ts, params, group=args.group, seed=1)
        return time.perf_counter() - t0, sum(r.n_model_tokens for r in outs), outs

    def one_at_a_time(ts: list) -> tuple[float, int, list]:
        t0 = time.perf_counter()
        # max_rows=1: the decoder runs one row at a time, each prompt prefilled for each sample
        outs = sample_rollouts(model, tok, fmt, ts, params, group=args.group, seed=1, max_rows=1)
        return time.perf_counter() - t0, sum(r.n_model_tokens for r in outs), outs

    batched(tasks[:1])  # warm-up
    rates: dict[str, list[float]] = {"batched": [], "one_at_a_time": []}
    for r in range(args.rounds):
        ts = tasks[r * args.prompts : (r + 1) * args.prompts]
        (tb, nb, ob), (t1, n1, o1) = batched(ts), one_at_a_time(ts)
        assert [x.ids for x in ob] == [x.ids for x in o1], "batched rows differ from single rows"
        rates["batched"].append(nb / tb)
        rates["one_at_a_time"].append(n1 / t1)
        print(f"round {r + 1}: batched {nb / tb:.1f} tok/s, one at a time {n1 / t1:.1f} tok/s")
    med = {k: statistics.median(v) for k, v in rates.items()}
    print(
        f"median over {args.rounds} rounds ({args.prompts} prompts x {args.group} samples, "
        f"{args.max_tokens} tokens, {args.threads} threads): batched {med['batched']:.1f} tok/s, "
        f"one at a time {med['one_at_a_time']:.1f} tok/s, x{med['batched'] / med['one_at_a_time']:.2f}"
    )
    if args.json:
        print(json.dumps({"median_tok_s": med, "rounds": rates, "args": vars(args)}))


if __name__ == "__main__":
    main()
