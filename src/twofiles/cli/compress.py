"""`twofiles compress MODEL FILE OUT` and `twofiles decompress MODEL OUT FILE`: lossless
compression by arithmetic coding driven by a model's next-token probabilities (one module for
both verbs; `args.verb` says which).

    twofiles compress model.safetensors hamlet.txt hamlet.tfac --threads 1
    twofiles decompress model.safetensors hamlet.tfac hamlet.txt

The compressed file records the model's identity (sha256 of its weights and tokenizer) and the
settings that move floating point; decompression repeats them and refuses another model, other
settings, or a damaged file, before writing anything. The summary goes to stderr; --json prints
one JSON object as the last stdout line.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

from twofiles.cli.common import add_json_flag, emit_json

SETTING_FLAGS = ("block_len", "batch_size", "threads", "dtype")


def add_arguments(p: argparse.ArgumentParser) -> None:
    compressing = p.prog.split()[-1] == "compress"
    p.add_argument(
        "model",
        metavar="MODEL",
        help="a twofiles model.safetensors, a .gguf file, a Hugging Face model directory or an "
        "alias (smollm2)"
        + ("" if compressing else ": the very model the file was compressed with"),
    )
    if compressing:
        p.add_argument("file", metavar="FILE", help="the file to compress (UTF-8 text)")
        p.add_argument("out", metavar="OUT", help="the compressed file to write")
    else:
        p.add_argument("out", metavar="OUT", help="the file `twofiles compress` wrote")
        p.add_argument("file", metavar="FILE", help="where to write the restored file")

    def default(value: str) -> str:
        return f"(default {value})" if compressing else "(default: as recorded; another is refused)"

    p.add_argument(
        "--block-len",
        type=int,
        default=None,
        metavar="N",
        help="tokens per block, its <bos> included: each block is coded from a fresh context "
        + default("the model's context, at most 512"),
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=None,
        metavar="N",
        help="blocks decoded together in lockstep, the speed lever " + default("32"),
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        metavar="N",
        help="CPU threads for torch " + default("torch's choice"),
    )
    p.add_argument(
        "--dtype",
        choices=("fp32", "bf16"),
        default=None,
        help="the weights' precision while coding " + default("fp32"),
    )
    p.add_argument(
        "--device",
        default=None,
        help="cpu, cuda, cuda:N or mps " + default("cpu"),
    )
    if not compressing:
        p.add_argument(
            "--force",
            action="store_true",
            help="decompress even if the torch build or CPU differs from compression's (the "
            "sha256 check still refuses a wrong result)",
        )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_json_flag(p)


def _load(spec: str, device: str) -> tuple[Any, float]:
    from twofiles.formats.resolve import resolve_model
    from twofiles.runtime import pick_device

    dev, _ = pick_device(device)
    t0 = time.perf_counter()
    return resolve_model(spec, device=dev), time.perf_counter() - t0


def _read(path: str, what: str) -> bytes:
    from twofiles.errors import BadInputError

    if not os.path.isfile(path):
        raise BadInputError(f"no such {what}", path=path)
    with open(path, "rb") as f:
        return f.read()


def _rate(n_bytes: int, seconds: float) -> float:
    return n_bytes / 1000 / seconds if seconds > 0 else 0.0


def _compress(args: argparse.Namespace) -> dict[str, Any]:
    from twofiles.compression.codec import compress, default_settings
    from twofiles.paths import atomic_write_bytes

    data = _read(args.file, "file to compress")
    loaded, load_s = _load(args.model, args.device or "cpu")
    settings = default_settings(
        loaded.model,
        block_len=args.block_len,
        batch_size=args.batch_size,
        threads=args.threads,
        dtype=args.dtype or "fp32",
    )
    print(
        f"model {args.model}: loaded in {load_s:.1f}s; {settings.block_len}-token blocks, "
        f"{settings.batch_size} per batch, {settings.threads} threads, {settings.dtype}, "
        f"{settings.device}",
        file=sys.stderr,
    )
    res = compress(
        loaded,
        data,
        settings,
        path=args.file,
        name=os.path.basename(os.path.normpath(args.model)),
        progress=not args.no_progress,
    )
    atomic_write_bytes(args.out, res.data)
    n, m = len(data), len(res.data)
    payload = res.header["payload"]["bytes"]
    bpb = 8 * m / n if n else 0.0
    print(
        f"{args.file}: {n:,} bytes -> {args.out}: {m:,} bytes ({bpb:.4f} bits per byte; "
        f"{res.tokens:,} tokens in {res.blocks} blocks) in {res.seconds:.1f}s "
        f"({_rate(n, res.seconds):.2f} KB/s)",
        file=sys.stderr,
    )
    return {
        "file": args.file,
        "out": args.out,
        "bytes": n,
        "compressed_bytes": m,
        "header_bytes": m - payload,
        "payload_bytes": payload,
        "bits_per_byte": round(bpb, 6),
        "payload_bits_per_byte": round(8 * payload / n, 6) if n else 0.0,
        "ideal_bits_per_byte": round(res.ideal_bits / n, 6) if n else 0.0,
        "tokens": res.tokens,
        "blocks": res.blocks,
        "seconds": round(res.seconds, 3),
        "load_seconds": round(load_s, 3),
        "kb_per_second": round(_rate(n, res.seconds), 3),
        "settings": settings.to_dict(),
        "model_sha256": res.header["model"]["weights_sha256"],
    }


def _decompress(args: argparse.Namespace) -> dict[str, Any]:
    from twofiles.compression.codec import (
        check_environment,
        check_settings,
        decompress,
        read_header,
    )
    from twofiles.errors import BadInputError
    from twofiles.paths import atomic_write_bytes

    blob = _read(args.out, "compressed file")
    header, settings, payload = read_header(blob, args.out)
    given = {k: getattr(args, k) for k in SETTING_FLAGS}
    if args.device is not None:
        given["device"] = args.device.split(":")[0]
    check_settings(settings, given, args.out)
    differences = check_environment(header, settings, args.out)
    if differences and not args.force:
        raise BadInputError(
            "compressed elsewhere: "
            + "; ".join(differences)
            + ". The logits may differ in their last bits, and then every token after: pass "
            "--force to try anyway (the sha256 check refuses a wrong result)",
            path=args.out,
        )
    if differences:
        print(f"warning: {'; '.join(differences)} (--force)", file=sys.stderr)
    loaded, load_s = _load(args.model, args.device or settings.device)
    print(f"model {args.model}: loaded in {load_s:.1f}s", file=sys.stderr)
    data, seconds = decompress(
        loaded, header, settings, payload, path=args.out, progress=not args.no_progress
    )
    atomic_write_bytes(args.file, data)
    n = len(data)
    print(
        f"{args.out}: {len(blob):,} bytes -> {args.file}: {n:,} bytes, sha256 checked, in "
        f"{seconds:.1f}s ({_rate(n, seconds):.2f} KB/s)",
        file=sys.stderr,
    )
    return {
        "file": args.file,
        "out": args.out,
        "bytes": n,
        "compressed_bytes": len(blob),
        "sha256": header["original"]["sha256"],
        "tokens": header["original"]["tokens"],
        "seconds": round(seconds, 3),
        "load_seconds": round(load_s, 3),
        "kb_per_second": round(_rate(n, seconds), 3),
        "settings": settings.to_dict(),
    }


def run(args: argparse.Namespace) -> int:
    summary = _compress(args) if args.verb == "compress" else _decompress(args)
    if args.json:
        emit_json({"verb": args.verb, "model": args.model, **summary})
    return 0
