"""Chat rendering speed: twofiles' ChatFormat.render (ids + loss mask) against transformers'
apply_chat_template (ids only), on SmolLM2's own template and tokenizer.

Both render the same conversations (system + N user/assistant exchanges). Contenders alternate
within each round (A B A B ...); the table gives the median per-conversation time over rounds and
the ratio. Ours does more work: it renders each assistant turn's prefix to place the loss mask
(transformers can only mask templates with `{% generation %}` markers, which SmolLM2's lacks).
Needs `twofiles pull smollm2`.

    .venv/bin/python bench/chat_render.py [--turns 1 5 20] [--rounds 7] [--reps 50] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time


def conversation(turns: int) -> list[dict[str, str]]:
    conv = [{"role": "system", "content": "You are a helpful assistant. Answer briefly."}]
    for i in range(turns):
        conv.append(
            {
                "role": "user",
                "content": f"What is {i} plus {i}? Please explain the steps, then give the answer.",
            }
        )
        conv.append(
            {
                "role": "assistant",
                "content": f"Adding {i} to itself doubles it: {i} + {i} = {2 * i}. The answer is {2 * i}.",
            }
        )
    return conv


def per_call(fn, reps: int) -> float:
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t) / reps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--turns", type=int, nargs="+", default=[1, 5, 20])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--reps", type=int, default=50)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    from transformers import AutoTokenizer

    from twofiles.chat import ChatFormat
    from twofiles.formats import alias_path
    from twofiles.formats.resolve import resolve_model

    path = alias_path("smollm2")
    loaded = resolve_model("smollm2")
    ours = ChatFormat.for_model(loaded)
    theirs = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    rows = []
    for turns in args.turns:
        conv = conversation(turns)
        ref = theirs.apply_chat_template(conv, tokenize=True)
        assert ours.render(conv)[0] == list(ref["input_ids"] if hasattr(ref, "keys") else ref), (
            "token ids differ"
        )
        a, b = [], []
        for _ in range(args.rounds):
            a.append(per_call(lambda: ours.render(conv), args.reps))
            b.append(per_call(lambda: theirs.apply_chat_template(conv, tokenize=True), args.reps))
        ma, mb = statistics.median(a), statistics.median(b)
        rows.append(
            {
                "turns": turns,
                "tokens": len(ours.render(conv)[0]),
                "ours_ms": round(ma * 1e3, 3),
                "transformers_ms": round(mb * 1e3, 3),
                "ratio": round(ma / mb, 2),
            }
        )
    print(f"{'turns':>5} {'tokens':>6} {'twofiles ms':>12} {'transformers ms':>16} {'ratio':>6}")
    for r in rows:
        print(
            f"{r['turns']:>5} {r['tokens']:>6} {r['ours_ms']:>12.3f} {r['transformers_ms']:>16.3f} {r['ratio']:>6.2f}"
        )
    if args.json:
        print(json.dumps({"rows": rows, "rounds": args.rounds, "reps": args.reps}))


if __name__ == "__main__":
    main()
