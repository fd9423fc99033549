"""Retrieval on the built-in collection: recall@k for BM25 alone, dense alone and hybrid (per
question kind), indexing speed, query latency, and our MiniLM forward's embedding throughput
against sentence-transformers' on the same model and inputs, alternating within one run.

    python bench/rag_retrieval.py                      # chunk sizes 256 and 64, 3 reps
    python bench/rag_retrieval.py --chunk-tokens 256 --reps 3 --json bench/results/rag.json
    python bench/rag_retrieval.py --chunk-tokens 256 --embedder smollm2   # a causal LM's pooled states

A question counts as found when one of the top k chunks contains its answer (case-insensitive);
each answer is in exactly one article (twofiles.rag.builtin_questions).
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


def recall(index, questions: list[dict], mode: str, k: int) -> dict:
    found: dict[str, list[int]] = {}
    rank1: dict[str, list[int]] = {}
    times = []
    for q in questions:
        t0 = time.perf_counter()
        hits = index.search(q["question"], k=k, mode=mode)
        times.append(time.perf_counter() - t0)
        ok = [q["answer"].lower() in h.text.lower() for h in hits]
        found.setdefault(q["kind"], []).append(any(ok))
        rank1.setdefault(q["kind"], []).append(bool(ok and ok[0]))
    every = [x for v in found.values() for x in v]
    return {
        f"recall@{k}": sum(every) / len(every),
        **{f"recall@{k} {kind}": sum(v) / len(v) for kind, v in sorted(found.items())},
        "recall@1": sum(x for v in rank1.values() for x in v) / len(every),
        "query ms (median)": statistics.median(times) * 1000,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--chunk-tokens", type=int, nargs="+", default=[256, 64])
    ap.add_argument("--overlap", type=int, default=None, help="default: chunk tokens / 8")
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--reps", type=int, default=3, help="throughput repetitions per side")
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
                "modes": {},
            }
            with open_index(db) as ix:
                if not chunk_texts:
                    chunk_texts = [r[5] for r in ix.rows]
                for mode in ("bm25", "dense", "hybrid"):
                    run["modes"][mode] = recall(ix, questions, mode, args.k)
            results["runs"].append(run)
            print(
                f"### chunk tokens {ct}, overlap {overlap}: {s['chunks']} chunks, indexed at {s['chunks_per_s']:.1f} chunks/s\n"
            )
            cols = list(run["modes"]["bm25"])
            print("| mode | " + " | ".join(cols) + " |")
            print("| --- |" + " --- |" * len(cols))
            for mode, r in run["modes"].items():
                print(
                    f"| {mode} | "
                    + " | ".join(f"{r[c]:.3f}" if "recall" in c else f"{r[c]:.2f}" for c in cols)
                    + " |"
                )
            print()

    if args.embedder != "minilm":
        if args.json:
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
