"""Answers with and without retrieval: a model's accuracy on the built-in RAG questions, and how
often the passages it cites hold the answer.

For each question of twofiles.rag.builtin_questions() (invented towns, people, species and
inventions: no model knows them from training) the model answers twice, greedily:
  - closed book: the question alone, as `twofiles chat MODEL` sends it;
  - grounded: the same prompt `twofiles chat MODEL --rag DB --rag-k K` sends
    (twofiles.rag.grounding.ground over RagIndex.search of the question).
A reply is right when it contains the reference answer (case-insensitive; the answers are names
and short phrases found verbatim in exactly one article). Reported per question kind ("named":
the question names the subject; "described": it describes it in other words) and overall:
accuracy both ways, retrieval recall@k (the answer's article among the k passages), and for each
citation method of grounding.cite ("model": only the [n] the reply wrote; "overlap": each sentence
attributed to the passage holding most of its content words; "constrained": the model picks a
number in 1..k after " [" appended to its reply; the model's own [n] win in all three):
citation precision (of all citations, the fraction whose passage contains the answer) and
coverage (of the right answers, the fraction carrying at least one citation).

All replies of one condition run through decoder.decode_batch. Per-question records go to
OUT/rag_answers{TAG}.jsonl; the summary to OUT/rag_answers{TAG}.json.

    python bench/rag_answers.py --model smollm2 --questions 90 --k 1 --tag _k1 --out bench/results
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path


def pick_questions(n: int, seed: int) -> list[dict]:
    """n questions, half of each kind where there are enough, in a seeded order (the file lists
    them grouped, so a prefix would be one kind or one topic)."""
    from twofiles.rag import builtin_questions

    qs = builtin_questions()
    if n <= 0 or n >= len(qs):
        return qs
    rng = random.Random(seed)
    by_kind: dict[str, list[dict]] = {}
    for q in qs:
        by_kind.setdefault(q["kind"], []).append(q)
    for group in by_kind.values():
        rng.shuffle(group)
    picked: list[dict] = []
    kinds = sorted(by_kind)
    while len(picked) < n:
        for kind in kinds:
            if by_kind[kind] and len(picked) < n:
                picked.append(by_kind[kind].pop())
    return picked


def contains(text: str, answer: str) -> bool:
    return answer.lower() in text.lower()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", default="smollm2")
    ap.add_argument(
        "--db", default=None, help="an index of the built-in collection (default: OUT/builtin.db)"
    )
    ap.add_argument(
        "--questions", type=int, default=40, help="how many (0 = all 356); half of each kind"
    )
    ap.add_argument("--seed", type=int, default=0, help="which questions")
    ap.add_argument("--k", type=int, default=5, help="passages per grounded prompt")
    ap.add_argument("--mode", default="hybrid", choices=("hybrid", "bm25", "dense"))
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--batch-size", type=int, default=8, help="rows decoded together")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument(
        "--no-closed", action="store_true", help="grounded replies only (another k, same questions)"
    )
    ap.add_argument("--out", default="bench/results")
    ap.add_argument("--tag", default="", help="suffix of the result files' names (e.g. _k1)")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import torch

    from twofiles.chat import ChatFormat, Message
    from twofiles.decoder import decode_batch
    from twofiles.engine import SamplingParams
    from twofiles.formats.resolve import resolve_model
    from twofiles.quant import prepare_for_inference
    from twofiles.rag import build_index, open_index
    from twofiles.rag.grounding import CITE_METHODS, choose_citation, cite, ground

    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    db = Path(args.db) if args.db else out / "builtin.db"
    if not db.exists():
        build_index(["builtin"], db, progress=False)
    questions = pick_questions(args.questions, args.seed)

    t0 = time.perf_counter()
    with open_index(db) as index:
        found = [index.search(q["question"], args.k, args.mode) for q in questions]
        info = index.info
    search_s = time.perf_counter() - t0

    loaded = resolve_model(args.model)
    setup = prepare_for_inference(loaded, threads=args.threads)
    fmt = ChatFormat.for_model(loaded)
    params = SamplingParams(
        temperature=0.0, max_tokens=args.max_tokens, stop_token_ids=list(fmt.stop_token_ids)
    )
    conditions = {
        "closed": []
        if args.no_closed
        else [fmt.prompt_ids([Message("user", q["question"])]) for q in questions],
        "grounded": [
            fmt.prompt_ids(ground([Message("user", q["question"])], passages))
            for q, passages in zip(questions, found)
        ],
    }
    replies: dict[str, list[str]] = {}
    timing: dict[str, dict] = {}
    for name, prompts in conditions.items():
        if not prompts:
            replies[name] = [""] * len(questions)
            continue
        t1 = time.perf_counter()
        rows = decode_batch(
            loaded.model,
            prompts,
            params,
            tokenizer=loaded.tokenizer,
            max_rows=args.batch_size,
        )
        replies[name] = [r.text.strip() for r in rows]
        timing[name] = {
            "seconds": round(time.perf_counter() - t1, 1),
            "prompt_tokens": sum(len(p) for p in prompts),
            "new_tokens": sum(len(r.tokens) for r in rows),
        }
        print(f"{name}: {timing[name]}", file=sys.stderr, flush=True)

    t2 = time.perf_counter()
    records = []
    for i, q in enumerate(questions):
        passages = found[i]
        grounded = replies["grounded"][i]
        prompt = conditions["grounded"][i]
        by_method = {}
        for method in CITE_METHODS:
            cites = cite(
                grounded,
                passages,
                method,
                choose=lambda: choose_citation(
                    loaded.model, loaded.tokenizer, prompt, grounded, len(passages)
                ),
            )
            by_method[method] = {
                "citations": [c.to_json() for c in cites],
                "cited_right": [contains(passages[c.n - 1].text, q["answer"]) for c in cites],
            }
        records.append(
            {
                "question": q["question"],
                "answer": q["answer"],
                "kind": q["kind"],
                "source": q["source"],
                "closed": replies["closed"][i],
                "closed_right": contains(replies["closed"][i], q["answer"]),
                "grounded": grounded,
                "grounded_right": contains(grounded, q["answer"]),
                "retrieved": [p.source for p in passages],
                "recall": q["source"] in [p.source for p in passages],
                "answer_in_passages": any(contains(p.text, q["answer"]) for p in passages),
                "cite": by_method,
            }
        )
    timing["citing"] = {"seconds": round(time.perf_counter() - t2, 1)}
    with open(out / f"rag_answers{args.tag}.jsonl", "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")

    def summarize(rs: list[dict]) -> dict:
        right = [r for r in rs if r["grounded_right"]]
        methods = {}
        for m in CITE_METHODS:
            cited = [c for r in rs for c in r["cite"][m]["cited_right"]]
            methods[m] = {
                "replies_citing": sum(bool(r["cite"][m]["citations"]) for r in rs) / len(rs),
                "citations": len(cited),
                "citation_precision": sum(cited) / len(cited) if cited else None,
                "coverage": sum(bool(r["cite"][m]["citations"]) for r in right) / len(right)
                if right
                else None,
            }
        return {
            "questions": len(rs),
            "closed_accuracy": sum(r["closed_right"] for r in rs) / len(rs)
            if not args.no_closed
            else None,
            "grounded_accuracy": sum(r["grounded_right"] for r in rs) / len(rs),
            "recall_at_k": sum(r["recall"] for r in rs) / len(rs),
            "cite": methods,
        }

    groups = {"all": records}
    for kind in sorted({r["kind"] for r in records}):
        groups[kind] = [r for r in records if r["kind"] == kind]
    summary = {
        "model": args.model,
        "inference": setup.reasons,
        "threads": torch.get_num_threads(),
        "k": args.k,
        "mode": args.mode,
        "max_tokens": args.max_tokens,
        "closed_book_run": not args.no_closed,
        "seed": args.seed,
        "index": {key: info[key] for key in ("files", "chunks", "embedder", "chunk_tokens")},
        "search_seconds": round(search_s, 2),
        "timing": timing,
        "results": {name: summarize(rs) for name, rs in groups.items()},
    }
    (out / f"rag_answers{args.tag}.json").write_text(json.dumps(summary, indent=2) + "\n")

    print(
        f"| questions | n | closed book | grounded (k={args.k}) | recall@k | citations by | "
        "replies citing | citations | citation precision | coverage |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")

    def pct(x: float | None) -> str:
        return "n/a" if x is None else f"{100 * x:.1f}%"

    for name, s in summary["results"].items():
        closed = pct(s["closed_accuracy"]) if not args.no_closed else "not run"
        for m, c in s["cite"].items():
            print(
                f"| {name} | {s['questions']} | {closed} | {pct(s['grounded_accuracy'])} | "
                f"{pct(s['recall_at_k'])} | {m} | {pct(c['replies_citing'])} | {c['citations']} | "
                f"{pct(c['citation_precision'])} | {pct(c['coverage'])} |"
            )


if __name__ == "__main__":
    main()
