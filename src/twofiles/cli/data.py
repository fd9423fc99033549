"""Turn text/JSONL/Parquet (or the built-in corpus) into token shards for pretraining.

twofiles data prepare builtin:shakespeare --out data/shakespeare
twofiles data prepare notes/ books.jsonl --out data/mine --vocab-size 8192 --val held_out.txt
"""

from __future__ import annotations

import argparse
import sys

from twofiles.cli.common import add_json_flag, emit_json

DEFAULT_VOCAB = 4096


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = sub.add_parser(
        "prepare",
        help="tokenize documents into shards + manifest",
        description="Tokenize INPUTs into DIR: token shards, tokenizer.json, manifest.json.",
    )
    p.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="txt/md/jsonl/parquet files, directories, or builtin:shakespeare",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    tok = p.add_mutually_exclusive_group()
    tok.add_argument(
        "--tokenizer", metavar="PATH", help="tokenizer.json or model.safetensors to use"
    )
    tok.add_argument(
        "--vocab-size",
        type=int,
        help=f"train a tokenizer of this size on the training split first (default {DEFAULT_VOCAB})",
    )
    p.add_argument(
        "--val",
        nargs="+",
        metavar="FILE",
        help="validation inputs (instead of splitting the inputs)",
    )
    p.add_argument(
        "--val-fraction",
        type=float,
        default=0.1,
        help="share of documents (or of the text, for tail) for validation (default 0.1)",
    )
    p.add_argument("--split", choices=("auto", "documents", "tail"), default="auto",
                   help="auto: held-out plays for builtin, tail for a single document, else by document")  # fmt: skip
    p.add_argument(
        "--seed",
        type=int,
        default=1337,
        help="key of the document hash that decides the split (default 1337)",
    )
    p.add_argument(
        "--text-field",
        default="text",
        help="JSONL field / Parquet column holding the text (default text)",
    )
    p.add_argument(
        "--skip-bad",
        action="store_true",
        help="skip bad input (counted by reason) instead of stopping",
    )
    p.add_argument(
        "--shard-tokens", type=int, default=2**24, help="tokens per shard file (default 16777216)"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_json_flag(p)


def run(args: argparse.Namespace) -> int:
    import time

    from twofiles.data.prepare import prepare, train_texts
    from twofiles.tokenizer import Tokenizer

    options = dict(val_inputs=args.val, val_fraction=args.val_fraction, split=args.split, seed=args.seed,
                   text_field=args.text_field, skip_bad=args.skip_bad)  # fmt: skip
    t0 = time.perf_counter()
    if args.tokenizer:
        tok = Tokenizer.load(args.tokenizer)
    else:
        vocab = args.vocab_size or DEFAULT_VOCAB
        print(f"training a {vocab}-token tokenizer on the training split...", file=sys.stderr)
        tok = Tokenizer.train(train_texts(args.inputs, **options), vocab)
    m = prepare(
        args.inputs,
        args.out,
        tok,
        shard_tokens=args.shard_tokens,
        progress=not args.no_progress and not args.json,
        **options,
    )
    seconds = time.perf_counter() - t0

    st = m["stats"]
    print(
        f"prepared {args.out}  (vocab {m['vocab_size']:,}, {m['dtype']}, split: {m['split']['method']})"
    )
    print(
        f"  {'split':<6} {'documents':>10} {'tokens':>14} {'bytes':>14} {'bytes/token':>12} {'shards':>7}"
    )
    for name, sp in m["splits"].items():
        bpt = sp["bytes"] / max(sp["tokens"] - sp["documents"], 1)  # bos tokens carry no bytes
        print(
            f"  {name:<6} {sp['documents']:>10,} {sp['tokens']:>14,} {sp['bytes']:>14,} {bpt:>12.3f} {len(sp['shards']):>7}"
        )
    print(f"  read {st['documents_read']:,} documents, {st['duplicates']:,} duplicates dropped, {st['skipped']:,} skipped"
          + (f" {st['skipped_by_reason']}" if st["skipped"] else ""))  # fmt: skip
    if m["splits"]["val"]["documents"] == 0:
        print(
            "  warning: the validation split is empty (give --val, or more documents)",
            file=sys.stderr,
        )
    print(f"  {seconds:.1f} s")
    if args.json:
        emit_json({"out": args.out, "vocab_size": m["vocab_size"], "dtype": m["dtype"], "split": m["split"]["method"],
                   "train_tokens": m["splits"]["train"]["tokens"], "val_tokens": m["splits"]["val"]["tokens"],
                   "train_documents": m["splits"]["train"]["documents"], "val_documents": m["splits"]["val"]["documents"],
                   "duplicates": st["duplicates"], "skipped": st["skipped"], "seconds": round(seconds, 3)})  # fmt: skip
    return 0
