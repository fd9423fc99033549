"""Retrieval on the built-in collection: recall@k and MRR@10 for BM25 alone, dense alone, the
old hybrid (RRF k = 60) and the default hybrid, per split and per question kind; the fusion
variants compared on the dev split (how the default was chosen); indexing speed, query latency,
and our MiniLM forward's embedding throughput against sentence-transformers' on the same model
and inputs, alternating within one run.

    python bench/rag_retrieval.py                      # chunk sizes 256 and 64, 3 reps
    python bench/rag_retrieval.py --chunk-tokens 256 --reps 3 --json bench/results/rag.json
    python bench/rag_retrieval.py --chunk-tokens 256 --embedder smollm2   # a causal LM's pooled states

A question counts as found when one of the top k chunks contains its answer (case-insensitive);
each answer is in exactly one article (twofiles.rag.builtin_questions). The questions split by
article into dev (44 articles, 175 questions) and test (76, 301): fusion is chosen on dev, and
test is what the default is judged on.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

MRR_AT = 10


def fusion_grid() -> list:
    """The fusion variants compared on dev: RRF over k, per-method weights and candidate cuts;
    a convex combination of per-query normalised scores over alpha."""
    from twofiles.rag.index import Fusion

    grid = [
        Fusion("rrf", k=k, bm25_weight=1.0, dense_weight=w, top_n=n)
        for k in (1, 5, 10, 20, 60)
        for w in (0.5, 1.0, 2.0)
        for n in (None, 20, 50, 100)
    ]
    grid += [
        Fusion("convex", alpha=a / 10, norm=norm) for norm in ("minmax", "z") for a in range(1, 10)
    ]
    return grid


def ranking(scores, only_positive: bool = False) -> list[int]:
    """Chunk rows best first, ties in chunk order: RagIndex.search's own ranking, uncut."""
    from twofiles.rag.index import _ranked

    return _ranked(scores, None, only_positive).tolist()


def metrics(rankings: list[list[int]], relevant: list[set[int]], kinds: list[str], k: int) -> dict:
    """recall@k (overall and per kind), recall@1 and MRR@10 of one method's rankings."""
    found: dict[str, list[bool]] = {}
    first, rr = [], []
    for order, rel, kind in zip(rankings, relevant, kinds, strict=True):
        found.setdefault(kind, []).append(any(i in rel for i in order[:k]))
        first.append(bool(order) and order[0] in rel)
        rank = next((r for r, i in enumerate(order[:MRR_AT], 1) if i in rel), None)
        rr.append(1.0 / rank if rank else 0.0)
    every = [x for v in found.values() for x in v]
    return {
        f"recall@{k}": sum(every) / len(every),
        **{f"recall@{k} {kind}": sum(v) / len(v) for kind, v in sorted(found.items())},
        "recall@1": sum(first) / len(first),
        f"MRR@{MRR_AT}": sum(rr) / len(rr),
    }


def table(rows: dict[str, dict], extra: str = "mode") -> None:
    cols = list(next(iter(rows.values())))
    print(f"| {extra} | " + " | ".join(cols) + " |")
    print("| --- |" + " --- |" * len(cols))
    for name, r in rows.items():
        print(
            f"| {name} | "
            + " | ".join(f"{r[c]:.3f}" if "ms" not in c else f"{r[c]:.2f}" for c in cols)
            + " |"
        )
    print()


def evaluate(ix, questions: list[dict], k: int) -> dict:
    """Per split: the single methods, the old and the default hybrid; on dev, every variant."""
    from twofiles.rag.index import DEFAULT_FUSION, Fusion, fuse

    old = Fusion("rrf", k=60)
    bm25 = [ix.bm25_scores(q["question"]) for q in questions]
    dense = [ix.dense_scores(q["question"]) for q in questions]
    relevant = [
        {i for i, r in enumerate(ix.rows) if q["answer"].lower() in r[5].lower()} for q in questions
    ]
    # the bench measures what search returns: its default hybrid is this fusion of these scores
    for q, b, d in list(zip(questions, bm25, dense, strict=True))[:20]:
        want = ranking(fuse(b, d))[:k]
        assert [ix.row_of[p.chunk_id] for p in ix.search(q["question"], k=k)] == want, q
    methods = {
        "bm25": lambda b, d: ranking(b, only_positive=True),
        "dense": lambda b, d: ranking(d),
        f"hybrid, old ({old.describe()})": lambda b, d: ranking(fuse(b, d, old)),
        f"hybrid, default ({DEFAULT_FUSION.describe()})": lambda b, d: ranking(fuse(b, d)),
    }
    out: dict = {"splits": {}, "fusion on dev": {}}
    for split in ("dev", "test", "all"):
        idx = [i for i, q in enumerate(questions) if split in ("all", q["split"])]
        kinds = [questions[i]["kind"] for i in idx]
        rel = [relevant[i] for i in idx]
        out["splits"][split] = {
            "questions": len(idx),
            "modes": {
                name: metrics([f(bm25[i], dense[i]) for i in idx], rel, kinds, k)
                for name, f in methods.items()
            },
        }
    dev = [i for i, q in enumerate(questions) if q["split"] == "dev"]
    kinds, rel = [questions[i]["kind"] for i in dev], [relevant[i] for i in dev]
    for fusion in fusion_grid():
        rankings = [ranking(fuse(bm25[i], dense[i], fusion)) for i in dev]
        out["fusion on dev"][fusion.describe()] = metrics(rankings, rel, kinds, k)
    # latency of the real search path, per mode, over every question
    out["query ms (median)"] = {}
    for mode in ("bm25", "dense", "hybrid"):
        times = []
        for q in questions:
            t0 = time.perf_counter()
            ix.search(q["question"], k=k, mode=mode)
            times.append(time.perf_counter() - t0)
        out["query ms (median)"][mode] = statistics.median(times) * 1000
    return out


def report(run: dict, k: int, top: int) -> None:
    for split in ("dev", "test", "all"):
        s = run["splits"][split]
        print(f"{split} split ({s['questions']} questions):\n")
        table(s["modes"])
    print(
        f"fusion variants on dev, the {top} best by recall@{k} then MRR@{MRR_AT}"
        f" (of {len(run['fusion on dev'])}):\n"
    )
    best = sorted(
        run["fusion on dev"].items(),
        key=lambda kv: (-round(kv[1][f"recall@{k}"], 9), -kv[1][f"MRR@{MRR_AT}"]),
    )
    table(dict(best[:top]), extra="fusion")
    print(
        "query ms (median): "
        + ", ".join(f"{m} {t:.2f}" for m, t in run["query ms (median)"].items())
    )
    print()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--chunk-tokens", type=int, nargs="+", default=[256, 64])
    ap.add_argument("--overlap", type=int, default=None, help="default: chunk tokens / 8")
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--top", type=int, default=15, help="fusion variants to print (all in --json)")
    ap.add_argument("--reps", type=int, default=3, help="throughput repetitions per side (0: none)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument(
        "--embedder",
        default="minilm",
        help="minilm, or a twofiles MODEL (e.g. smollm2): its pooled states; no throughput race then",
    )
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args()

    import numpy as np
    import torch

    from twofiles.rag import build_index, builtin_questions, open_index
    from twofiles.rag.index import get_embedder

    questions = builtin_questions()
    print(
        f"{len(questions)} questions; torch {torch.__version__}, {torch.get_num_threads()} threads\n"
    )
    results: dict = {"questions": len(questions), "threads": torch.get_num_threads(), "runs": []}
    get_embedder(args.embedder)  # loaded once, outside every timing
    results["embedder"] = args.embedder
    chunk_texts: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        for ct in args.chunk_tokens:
            overlap = args.overlap if args.overlap is not None else ct // 8
            db = Path(tmp) / f"builtin-{ct}.db"
            s = build_index(
                ["builtin"],
                db,
                embedder=args.embedder,
                chunk_tokens=ct,
                overlap=overlap,
                progress=False,
            )
            run = {
                "chunk_tokens": ct,
                "overlap": overlap,
                "chunks": s["chunks"],
                "index chunks/s": s["chunks_per_s"],
            }
            with open_index(db) as ix:
                if not chunk_texts:
                    chunk_texts = [r[5] for r in ix.rows]
                run.update(evaluate(ix, questions, args.k))
            results["runs"].append(run)
            print(
                f"### chunk tokens {ct}, overlap {overlap}: {s['chunks']} chunks, indexed at {s['chunks_per_s']:.1f} chunks/s\n"
            )
            report(run, args.k, args.top)

    if args.embedder != "minilm" or args.reps == 0:  # no throughput race
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(results, indent=1) + "\n")
        return
    # embedding throughput: the same texts, batch size and threads for both, alternating
    from sentence_transformers import SentenceTransformer

    from twofiles.rag.embed import minilm_dir

    ours = get_embedder("minilm")
    theirs = SentenceTransformer(str(minilm_dir()), device="cpu")
    texts = chunk_texts * max(1, 512 // len(chunk_texts))
    a = ours.embed(texts[:64], batch_size=args.batch_size)
    b = theirs.encode(texts[:64], batch_size=args.batch_size, normalize_embeddings=True)
    agree = float(np.min((a * b).sum(1)))
    t_ours, t_st = [], []
    for rep in range(args.reps):
        for side in ("ours", "st") if rep % 2 == 0 else ("st", "ours"):
            t0 = time.perf_counter()
            if side == "ours":
                ours.embed(texts, batch_size=args.batch_size)
                t_ours.append(time.perf_counter() - t0)
            else:
                theirs.encode(texts, batch_size=args.batch_size, normalize_embeddings=True)
                t_st.append(time.perf_counter() - t0)
    ours_tps, st_tps = len(texts) / statistics.median(t_ours), len(texts) / statistics.median(t_st)
    results["throughput"] = {
        "texts": len(texts),
        "batch_size": args.batch_size,
        "ours texts/s": ours_tps,
        "sentence-transformers texts/s": st_tps,
        "ratio": ours_tps / st_tps,
        "min cosine": agree,
    }
    print(
        f"### Embedding throughput: {len(texts)} chunks, batch {args.batch_size}, medians of {args.reps}\n"
    )
    print("| embedder | texts/s | ratio |")
    print("| --- | --- | --- |")
    print(f"| twofiles MiniLM (torch forward) | {ours_tps:.1f} | {ours_tps / st_tps:.2f} |")
    print(f"| sentence-transformers 'all-MiniLM-L6-v2' | {st_tps:.1f} | 1.00 |")
    print(f"\nlowest cosine between the two on 64 chunks: {agree:.7f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
