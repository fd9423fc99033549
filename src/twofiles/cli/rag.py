"""`twofiles rag`: index your documents, then search them (the "R" of RAG).

    twofiles rag index notes/ paper.pdf faq.jsonl --db docs.db
    twofiles rag index builtin --db wiki.db                 (the built-in collection)
    twofiles rag query docs.db "when was the bridge rebuilt?" --k 5 --mode hybrid

Indexing is incremental: run it again and only changed files are read again; files deleted from
disk (or from a folder being indexed) leave the index. Text, Markdown, HTML, PDF and JSONL
(`--field`, default "text"); folders recursively, hidden files and binaries skipped.
"""

from __future__ import annotations

import argparse
import os
import sys

from twofiles.cli.common import add_device_flag, add_json_flag, emit_json
from twofiles.errors import BadInputError

SNIPPET = 70  # characters of each passage in the human table


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="rag_cmd", metavar="CMD", required=True)
    p = sub.add_parser(
        "index",
        help="index files and folders (or builtin) into a retrieval database",
        description="Index text, Markdown, HTML, PDF and JSONL files, and folders of them, into DB "
        "(SQLite, with its vectors beside it). Run again to update: unchanged files are skipped.",
    )
    p.add_argument(
        "paths",
        nargs="+",
        metavar="PATH",
        help="files, folders, or `builtin` (the shipped collection; ./builtin for a folder of that name)",
    )
    p.add_argument("--db", required=True, help="the index database (created if absent)")
    p.add_argument(
        "--embedder",
        default="minilm",
        metavar="MODEL",
        help="minilm (all-MiniLM-L6-v2, default) or any twofiles MODEL (its mean-pooled hidden states)",
    )
    p.add_argument(
        "--chunk-tokens",
        type=int,
        default=256,
        help="tokens per chunk at most (default 256; never more than the embedder reads: 254 for "
        "minilm)",
    )
    p.add_argument(
        "--overlap",
        type=int,
        default=32,
        help="tokens of whole sentences a chunk repeats from the one before (default 32)",
    )
    p.add_argument(
        "--field", default="text", help="the JSONL field holding the text (default text)"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_device_flag(p)
    add_json_flag(p)

    q = sub.add_parser(
        "query",
        help="search an index: ranked chunks with scores",
        description="The best chunks of DB for QUERY: rank, score, source:location, snippet.",
    )
    q.add_argument("db", metavar="DB", help="an index built by `twofiles rag index`")
    q.add_argument("query", metavar="QUERY", help="what to look for, in your own words")
    q.add_argument("--k", type=int, default=5, help="how many chunks (default 5)")
    q.add_argument(
        "--mode",
        choices=["hybrid", "bm25", "dense"],
        default="hybrid",
        help="hybrid (the top 50 of BM25 and of dense fused by reciprocal rank, k = 1; default), "
        "bm25 or dense",
    )
    add_device_flag(q)
    add_json_flag(q)


def _device(args: argparse.Namespace) -> str | None:
    return None if args.device == "auto" else args.device


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # every weight is local; never wait on a network
    if args.rag_cmd == "index":
        from twofiles.rag import build_index

        s = build_index(
            args.paths,
            args.db,
            embedder=args.embedder,
            chunk_tokens=args.chunk_tokens,
            overlap=args.overlap,
            progress=not args.no_progress,
            field=args.field,
            device=_device(args),
        )
        skipped = s["skipped"]
        for why in s["unreadable"]:
            print(f"skipped {why}", file=sys.stderr)
        print(
            f"{s['db']}: {s['files']} files, {s['chunks']} chunks ({s['embedder']}): "
            f"{s['added']} added, {s['updated']} updated, {s['removed']} removed, "
            f"{s['unchanged']} unchanged"
            + (" (settings changed: rebuilt)" if s["rebuilt"] else "")
            + (
                f"; skipped {skipped['hidden']} hidden, {skipped['binary']} binary, "
                f"{skipped['unreadable']} unreadable"
                if any(skipped.values())
                else ""
            )
            + f"; {s['new_chunks']} chunks embedded in {s['seconds']:.1f}s"
        )
        if args.json:
            emit_json(s)
        return 0

    from twofiles.rag import open_index

    if not args.query.strip():
        raise BadInputError("QUERY is empty: say what to look for")
    with open_index(args.db, device=_device(args)) as index:
        hits = index.search(args.query, k=args.k, mode=args.mode)
    if not hits:
        print("no matching chunks", file=sys.stderr)
    width = max([len(f"{h.source}:{h.location}") for h in hits] + [6])
    width = min(width, 48)
    print(f"{'rank':>4}  {'score':>8}  {'source':<{width}}  snippet")
    for r, h in enumerate(hits, 1):
        where = f"{h.source}:{h.location}" if h.location else h.source
        if len(where) > width:
            where = "…" + where[-(width - 1) :]
        snippet = " ".join(h.text.split())
        snippet = snippet if len(snippet) <= SNIPPET else snippet[: SNIPPET - 1] + "…"
        print(f"{r:>4}  {h.score:>8.4f}  {where:<{width}}  {snippet}")
    if args.json:
        emit_json(
            {
                "db": args.db,
                "query": args.query,
                "mode": args.mode,
                "passages": [h.to_dict() for h in hits],
            }
        )
    return 0
