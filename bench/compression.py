"""Pretraining is compression: bits per byte on the held-out plays, models against classic
compressors, with compression and decompression speed.

The text is the built-in corpus's validation split (four whole plays; `builtin_text("val")`, the
same text the speedrun's val_bpb is measured on; works joined by a blank line), or its first
--prefix bytes. Each model compresses it with `twofiles compress` and restores it with
`twofiles decompress`, each in its own process (the round trip is checked byte for byte), and
its size is cross-checked against the model's own cross-entropy on the very same blocks
(`eval.bpb.evaluate_bpb`, one parallel forward per block): the difference is the coder's overhead
(frequency quantisation, the final bits) plus the header. gzip -9, bzip2 -9, xz -9e and zstd -19
run in-process on the same bytes, best of --repeat timings.

    python bench/compression.py --threads 1 --models speedrun=/work/models/speedrun/model.safetensors \\
        --models smollm2=smollm2 --bf16 smollm2 --prefix 50000 --out bench/results/compression

Writes OUT.json, OUT.md (the table) and OUT.png (a bar chart); prints the table and, with --json,
one JSON line last. --merge A.json B.json joins the rows of runs on the same text.
"""

from __future__ import annotations

import argparse
import bz2
import gzip
import json
import lzma
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from twofiles.runtime import cpu_identity


def classic(data: bytes, repeat: int) -> list[dict[str, Any]]:
    """gzip, bzip2, xz and zstd at their strongest common settings: size and speeds."""
    import zstandard

    codecs = [
        ("gzip -9", lambda d: gzip.compress(d, 9, mtime=0), gzip.decompress),
        ("bzip2 -9", lambda d: bz2.compress(d, 9), bz2.decompress),
        (
            "xz -9e",
            lambda d: lzma.compress(d, preset=9 | lzma.PRESET_EXTREME),
            lzma.decompress,
        ),
        (
            "zstd -19",
            lambda d: zstandard.ZstdCompressor(level=19).compress(d),
            lambda d: zstandard.ZstdDecompressor().decompress(d),
        ),
    ]
    rows = []
    for name, comp, decomp in codecs:
        tc, td = math.inf, math.inf
        for _ in range(repeat):
            t0 = time.perf_counter()
            blob = comp(data)
            t1 = time.perf_counter()
            back = decomp(blob)
            t2 = time.perf_counter()
            tc, td = min(tc, t1 - t0), min(td, t2 - t1)
        assert back == data, name
        rows.append(
            {
                "name": name,
                "bytes": len(blob),
                "bits_per_byte": 8 * len(blob) / len(data),
                "compress_kb_s": len(data) / 1000 / tc,
                "decompress_kb_s": len(data) / 1000 / td,
            }
        )
    return rows


def twofiles(*argv: str) -> dict[str, Any]:
    """Run a twofiles verb in its own process; its --json summary."""
    cmd = [sys.executable, "-m", "twofiles", *argv, "--json", "--no-progress"]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{res.stderr[-2000:]}")
    print(res.stderr.strip(), file=sys.stderr)
    return json.loads(res.stdout.strip().splitlines()[-1])


def cross_entropy(spec: str, data: bytes, block_len: int, threads: int) -> dict[str, float]:
    """The model's own bits per byte on the blocks `twofiles compress` codes: the stream of
    [bos] + block for every block, scored in windows of block_len, so each window is one block
    (its last target is the next block's bos, which has no bytes and is not counted)."""
    import numpy as np
    import torch

    from twofiles.compression.codec import exact_tokens
    from twofiles.eval.bpb import evaluate_bpb
    from twofiles.formats.resolve import resolve_model
    from twofiles.runtime import setup

    rt = setup("cpu", "fp32", threads)
    loaded = resolve_model(spec)
    tok = loaded.tokenizer
    ids = exact_tokens(tok, data, "held-out plays")
    per = block_len - 1
    stream: list[int] = []
    for s in range(0, len(ids), per):
        stream += [tok.bos_id, *ids[s : s + per]]
    arr = np.array(stream, dtype=np.int64)

    class Tokens:
        def __len__(self) -> int:
            return len(arr)

        def get(self, start: int, length: int) -> np.ndarray:
            return arr[start : start + length]

    token_bytes = torch.from_numpy(tok.token_bytes().astype(np.int64))
    nbytes = int(token_bytes[torch.from_numpy(np.array(ids, dtype=np.int64))].sum())
    assert nbytes == len(data), (nbytes, len(data))
    loss, bpb = evaluate_bpb(loaded.model, Tokens(), token_bytes, rt, block_len, 4, None)
    return {"loss_nats_per_token": loss, "bits_per_byte": bpb, "tokens": len(ids)}


def model_row(
    name: str, spec: str, path: Path, work: Path, args: argparse.Namespace
) -> dict[str, Any]:
    flags = ["--threads", str(args.threads), "--batch-size", str(args.batch_size)]
    if args.block_len:
        flags += ["--block-len", str(args.block_len)]
    if args.dtype or name in args.bf16:
        flags += ["--dtype", "bf16" if name in args.bf16 else args.dtype]
    packed, restored = work / f"{name}.tfac", work / f"{name}.txt"
    c = twofiles("compress", spec, str(path), str(packed), *flags)
    d = twofiles("decompress", spec, str(packed), str(restored))
    data = path.read_bytes()
    assert restored.read_bytes() == data, f"{name}: the round trip differs"
    ce = cross_entropy(spec, data, c["settings"]["block_len"], args.threads)
    return {
        "name": name,
        "model": spec,
        "bytes": c["compressed_bytes"],
        "header_bytes": c["header_bytes"],
        "bits_per_byte": c["bits_per_byte"],
        "payload_bits_per_byte": c["payload_bits_per_byte"],
        "ideal_bits_per_byte": c["ideal_bits_per_byte"],
        "model_bits_per_byte": ce["bits_per_byte"],
        "coder_overhead": c["payload_bits_per_byte"] / ce["bits_per_byte"] - 1,
        "tokens": c["tokens"],
        "compress_kb_s": c["kb_per_second"],
        "decompress_kb_s": d["kb_per_second"],
        "compress_s": c["seconds"],
        "decompress_s": d["seconds"],
        "settings": c["settings"],
    }


def table(rows: list[dict[str, Any]]) -> str:
    out = [
        "| compressor | bytes | bits/byte | payload bits/byte | the model's cross-entropy, "
        "bits/byte | coder overhead | compress KB/s | decompress KB/s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        model = "model_bits_per_byte" in r
        payload = f"{r['payload_bits_per_byte']:.4f}" if model else ""
        own = f"{r['model_bits_per_byte']:.4f}" if model else ""
        over = f"{100 * r['coder_overhead']:+.4f}%" if model else ""
        out.append(
            f"| {r['name']} | {r['bytes']:,} | {r['bits_per_byte']:.4f} | {payload} | {own} | "
            f"{over} | {r['compress_kb_s']:,.2f} | {r['decompress_kb_s']:,.2f} |"
        )
    return "\n".join(out)


def plot(doc: dict[str, Any], png: Path) -> None:
    """Bits per byte per compressor, best first (the models' own cross-entropy marked)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from twofiles.plots import save_png

    rows = sorted(doc["rows"], key=lambda r: r["bits_per_byte"])
    fig, ax = plt.subplots(figsize=(7, 0.5 * len(rows) + 1.2))
    names = [r["name"] for r in rows]
    colors = ["tab:blue" if "model_bits_per_byte" in r else "tab:gray" for r in rows]
    ax.barh(names, [r["bits_per_byte"] for r in rows], color=colors)
    for i, r in enumerate(rows):
        ax.text(r["bits_per_byte"], i, f" {r['bits_per_byte']:.3f}", va="center")
    ax.invert_yaxis()
    ax.set_xlabel("bits per byte (lower is better; the model files are not counted)")
    ax.set_title(f"{doc['text']}, {doc['bytes']:,} bytes ({doc['cpu']})", fontsize=9)
    ax.set_xlim(0, max(r["bits_per_byte"] for r in rows) * 1.2)
    save_png(fig, png)


def report(doc: dict[str, Any], out: Path) -> str:
    """OUT.json, OUT.md (the table) and OUT.png; returns the markdown."""
    md = (
        f"{doc['text']}: {doc['bytes']:,} bytes; {doc['cpu']}, {doc['threads']} thread(s), "
        f"torch {doc['torch']}\n\n{table(doc['rows'])}\n"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(doc, indent=1) + "\n")
    out.with_suffix(".md").write_text(md)
    plot(doc, out.with_suffix(".png"))
    return md


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--models",
        action="append",
        default=[],
        metavar="NAME=SPEC",
        help="a model to compress with (repeatable); none: the classic compressors only",
    )
    ap.add_argument("--prefix", type=int, default=None, help="only the first N bytes (characters)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--block-len", type=int, default=None)
    ap.add_argument("--dtype", choices=("fp32", "bf16"), default=None)
    ap.add_argument(
        "--bf16", action="append", default=[], metavar="NAME", help="this model codes in bf16"
    )
    ap.add_argument("--repeat", type=int, default=3, help="timings of the classic compressors")
    ap.add_argument("--out", default="bench/results/compression")
    ap.add_argument("--json", action="store_true")
    ap.add_argument(
        "--merge",
        nargs="+",
        metavar="JSON",
        help="no runs: merge the rows of earlier results on the same text into --out",
    )
    args = ap.parse_args()
    if args.merge:
        docs = [json.loads(Path(p).read_text()) for p in args.merge]
        if len({(d["text"], d["bytes"]) for d in docs}) != 1:
            raise SystemExit("--merge: the results are not on the same text")
        names: dict[str, dict[str, Any]] = {}
        for d in docs:
            names.update({r["name"]: r for r in d["rows"]})
        print(report({**docs[0], "rows": list(names.values())}, Path(args.out)))
        return 0

    from twofiles.data.builtin import builtin_text

    text = builtin_text("val")
    if args.prefix is not None:
        text = text[: args.prefix]
    data = text.encode("utf-8")
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        path = work / "heldout.txt"
        path.write_bytes(data)
        for item in args.models:
            name, _, spec = item.partition("=")
            rows.append(model_row(name, spec or name, path, work, args))
    rows += classic(data, args.repeat)
    doc = {
        "text": f"held-out plays{'' if args.prefix is None else f', first {args.prefix:,} characters'}",
        "bytes": len(data),
        "cpu": cpu_identity()[0],
        "threads": args.threads,
        "torch": __import__("torch").__version__,
        "rows": rows,
    }
    md = report(doc, Path(args.out))
    print(md)
    if args.json:
        print(json.dumps(doc))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
