"""Train a byte-level BPE tokenizer, or show how a text is tokenized.

twofiles tokenizer train [INPUT ...] --vocab-size 4096 --out tokenizer.json
twofiles tokenizer show "To be, or not to be" [--tokenizer tokenizer.json|model.safetensors]
"""

from __future__ import annotations

import argparse
import sys
import time

from twofiles.cli.common import add_json_flag, emit_json

DEFAULT_INPUT = "builtin:shakespeare"
DEFAULT_VOCAB = 4096
MEASURE_BYTES = 16 * 2**20  # bytes/token is measured on (at most) this much of the training text


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    t = sub.add_parser(
        "train",
        help="learn BPE merges from text",
        description="Learn BPE merges from the training split of INPUTs.",
    )
    t.add_argument(
        "inputs",
        nargs="*",
        metavar="INPUT",
        help=f"text/md/jsonl/parquet files or directories (default: {DEFAULT_INPUT}, training plays only)",
    )
    t.add_argument(
        "--vocab-size",
        type=int,
        default=DEFAULT_VOCAB,
        help=f"vocabulary size including the special tokens (default {DEFAULT_VOCAB})",
    )
    t.add_argument(
        "--out",
        default="tokenizer.json",
        help="where to write the tokenizer (default tokenizer.json)",
    )
    t.add_argument(
        "--min-frequency",
        type=int,
        default=2,
        help="merge only pairs seen at least this often (default 2)",
    )
    t.add_argument(
        "--text-field",
        default="text",
        help="JSONL field / Parquet column holding the text (default text)",
    )
    t.add_argument(
        "--skip-bad", action="store_true", help="skip bad input (counted) instead of stopping"
    )
    add_json_flag(t)
    s = sub.add_parser(
        "show",
        help="show the tokens of a text",
        description="Show the tokens of TEXT, with ids and bytes per token.",
    )
    s.add_argument("text", help="the text to tokenize")
    s.add_argument(
        "--tokenizer",
        metavar="PATH",
        help="tokenizer.json or model.safetensors (default: train a small one on the built-in corpus)",
    )
    s.add_argument(
        "--corpus",
        nargs="+",
        metavar="FILE",
        help="also report the compression (bytes per token) on these inputs",
    )
    add_json_flag(s)


def run(args: argparse.Namespace) -> int:
    return _train(args) if args.action == "train" else _show(args)


def _train(args: argparse.Namespace) -> int:
    from twofiles.data.prepare import split_documents
    from twofiles.tokenizer import Tokenizer

    inputs = args.inputs or [DEFAULT_INPUT]
    stats: dict = {}
    texts: list[str] = []  # a sample kept to measure bytes/token afterwards
    seen = {"documents": 0, "bytes": 0}

    def train_split():
        for p in split_documents(
            inputs, text_field=args.text_field, skip_bad=args.skip_bad, stats=stats
        ):
            if p.split == "train":
                n = len(p.text.encode("utf-8"))
                if seen["bytes"] < MEASURE_BYTES:
                    texts.append(p.text)
                seen["documents"] += 1
                seen["bytes"] += n
                yield p.text

    t0 = time.perf_counter()
    tok = Tokenizer.train(
        train_split(),
        args.vocab_size,
        min_frequency=args.min_frequency,
        show_progress=sys.stderr.isatty() and not args.json,
    )
    seconds = time.perf_counter() - t0
    tok.save(args.out)
    sample_bytes = sum(len(t.encode("utf-8")) for t in texts)
    sample_tokens = sum(len(ids) for ids in tok.encode_batch(texts))
    bpt = sample_bytes / max(sample_tokens, 1)
    n_docs, n_bytes = seen["documents"], seen["bytes"]
    sampled = "" if sample_bytes == n_bytes else f" (first {sample_bytes:,} bytes)"
    print(f"tokenizer: {args.out}")
    print(
        f"  vocab size      {tok.vocab_size:,} ({len(tok.special_ids)} special, 256 bytes, {tok.vocab_size - len(tok.special_ids) - 256:,} merges)"
    )
    print(
        f"  trained on      {n_docs:,} documents, {n_bytes:,} bytes ({stats.get('method')} split: training part only)"
    )
    print(f"  time            {seconds:.1f} s")
    print(f"  bytes / token   {bpt:.3f} on the training text{sampled}")
    if stats.get("skipped"):
        print(f"  skipped         {stats['skipped']} bad inputs {stats['skipped_by_reason']}")
    if args.json:
        emit_json({"out": args.out, "vocab_size": tok.vocab_size, "documents": n_docs, "bytes": n_bytes,
                   "bytes_per_token": round(bpt, 4), "seconds": round(seconds, 3), "skipped": stats.get("skipped", 0)})  # fmt: skip
    return 0


def _show(args: argparse.Namespace) -> int:
    from twofiles.tokenizer import Tokenizer

    if args.tokenizer:
        tok = Tokenizer.load(args.tokenizer)
        source = args.tokenizer
    else:
        from twofiles.data.builtin import builtin_documents

        print(
            f"no --tokenizer: training a {DEFAULT_VOCAB}-token tokenizer on the built-in corpus (a few seconds)",
            file=sys.stderr,
        )
        tok = Tokenizer.train((w.text for w in builtin_documents("train")), DEFAULT_VOCAB)
        source = f"trained on {DEFAULT_INPUT} (vocab {DEFAULT_VOCAB})"
    pieces = tok.pieces(args.text)
    specials = set(tok.special_ids.values())
    n_bytes = len(args.text.encode("utf-8"))
    width = max([len(str(i)) for i, _ in pieces] + [2])
    print(f"tokenizer: {source} (vocab {tok.vocab_size:,})")
    print(f"{'id':>{width}}  piece")
    for i, piece in pieces:
        mark = "  (special)" if i in specials else ""
        print(f"{i:>{width}}  {_quote(piece)}{mark}")
    bpt = n_bytes / max(len(pieces), 1)
    print(f"{len(pieces)} tokens, {n_bytes} bytes, {bpt:.2f} bytes/token")
    summary = {"tokenizer": source, "vocab_size": tok.vocab_size, "ids": [i for i, _ in pieces], "pieces": [p for _, p in pieces],
               "tokens": len(pieces), "bytes": n_bytes, "bytes_per_token": round(bpt, 4)}  # fmt: skip
    if args.corpus:
        from twofiles.data.corpus import Corpus

        c_bytes = c_tokens = 0
        batch: list[str] = []
        for doc in Corpus(args.corpus):
            batch.append(doc.text)
            if len(batch) >= 256:
                c_tokens += sum(map(len, tok.encode_batch(batch)))
                c_bytes += sum(len(t.encode("utf-8")) for t in batch)
                batch.clear()
        c_tokens += sum(map(len, tok.encode_batch(batch)))
        c_bytes += sum(len(t.encode("utf-8")) for t in batch)
        c_bpt = c_bytes / max(c_tokens, 1)
        print(f"corpus: {c_tokens:,} tokens, {c_bytes:,} bytes, {c_bpt:.3f} bytes/token")
        summary["corpus"] = {
            "tokens": c_tokens,
            "bytes": c_bytes,
            "bytes_per_token": round(c_bpt, 4),
        }
    if args.json:
        emit_json(summary)
    return 0


def _quote(piece: str) -> str:
    """A piece between quotes with whitespace made visible ('\\xf0'-style byte escapes kept as is)."""
    return "'" + piece.replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r") + "'"
