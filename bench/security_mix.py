"""The security finetuning mix, before and after: leak rate on its held-out prompts, utility.

For each model: greedy replies to the security mix's held-out split (twofiles.data.security,
"val": phrasings never trained on, but the same scenes and families as training, so the gain
here overstates the gain on outside attacks: the red-team runner measures those), scored by
`security.outcome` (the secret in the reply, or an injected order obeyed; benign look-alikes
refused or answered), with 95% Wilson intervals; and held-out skill accuracy (train.sft's skill
tasks without the identity questions, so every model answers the same ones), the utility the mix
must not cost. All models in one run, on the same prompts.

    .venv/bin/python bench/security_mix.py MODEL [MODEL ...] [--skill-tasks 10] [--max-tokens 48] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time


def measure(spec: str, skill_tasks: int, max_tokens: int, threads: int) -> dict:
    import torch

    from twofiles.chat import ChatFormat
    from twofiles.data import security
    from twofiles.decoder import generate_batch
    from twofiles.engine import SamplingParams
    from twofiles.formats.resolve import resolve_model
    from twofiles.stats import wilson
    from twofiles.train.sft import heldout_skill_tasks, skill_accuracy

    if threads:
        torch.set_num_threads(threads)
    t0 = time.perf_counter()
    loaded = resolve_model(spec, device="cpu")
    model, tok = loaded.model.eval(), loaded.tokenizer
    fmt = ChatFormat.for_model(loaded)
    examples = security.security_examples("val", 0)
    prompts = [fmt.prompt_ids(list(e.prompt)) for e in examples]
    with torch.no_grad():
        outs = generate_batch(
            model,
            prompts,
            SamplingParams(
                temperature=0.0, max_tokens=max_tokens, stop_token_ids=list(fmt.stop_token_ids)
            ),
            tokenizer=tok,
            max_rows=16,
        )
    stops = set(fmt.stop_token_ids)
    replies = [
        fmt.parse_assistant(tok.decode([i for i in ids if i not in stops])).content for ids in outs
    ]
    by_kind: dict[str, list[str]] = {}
    for e, r in zip(examples, replies):
        by_kind.setdefault(e.kind, []).append(security.outcome(e, r))
    attacks = [o for k, v in by_kind.items() if k != "benign" for o in v]
    bad = sum(o != "safe" for o in attacks)
    refused = sum(o == "refused" for o in by_kind.get("benign", []))
    n_benign = len(by_kind.get("benign", []))
    res = {
        "model": spec,
        "attack_prompts": len(attacks),
        "unsafe_rate": bad / len(attacks),
        "unsafe_ci95": wilson(bad, len(attacks)),
        "leaked": sum(o == "leaked" for o in attacks),
        "obeyed": sum(o == "obeyed" for o in attacks),
        "by_kind": {
            k: sum(o not in ("safe", "answered") for o in v) / len(v) for k, v in by_kind.items()
        },
        "benign_prompts": n_benign,
        "false_refusal_rate": refused / max(n_benign, 1),
        "false_refusal_ci95": wilson(refused, n_benign),
        "examples": [
            {"kind": e.kind, "user": e.prompt[1].content, "reply": r}
            for e, r in list(zip(examples, replies))[::12]
        ],
    }
    if skill_tasks:
        with torch.no_grad():
            # no identity questions: every model answers the same tasks, whatever it says it is
            rep = skill_accuracy(model, tok, fmt, heldout_skill_tasks(skill_tasks, 0, None))
        res["skills"] = rep.accuracy
    res["seconds"] = time.perf_counter() - t0
    return res


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="+")
    p.add_argument("--skill-tasks", type=int, default=10, help="held-out skill tasks per kind")
    p.add_argument("--max-tokens", type=int, default=48)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--out", default="", help="also write the results here (JSON)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    rows = []
    for spec in args.models:
        print(f"measuring {spec}", file=sys.stderr, flush=True)
        rows.append(measure(spec, args.skill_tasks, args.max_tokens, args.threads))
    print(
        "| model | unsafe replies to held-out attacks [95% CI] | leaked | obeyed | "
        "benign refused | skills |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        lo, hi = r["unsafe_ci95"]
        skills = f"{r['skills']:.0%}" if "skills" in r else "-"
        print(
            f"| {r['model']} | {r['unsafe_rate']:.0%} [{lo:.0%}, {hi:.0%}] of {r['attack_prompts']} "
            f"| {r['leaked']} | {r['obeyed']} | {r['false_refusal_rate']:.0%} of "
            f"{r['benign_prompts']} | {skills} |"
        )
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=1)
    if args.json:
        print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
