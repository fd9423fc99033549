"""`twofiles sae features DIR`: feature dashboards for a trained SAE, as self-contained pages.

    twofiles sae features runs/sae --tokens 100000 --top 50
    twofiles sae features runs/sae --features 3,17 --data notes.txt

Writes DIR/features/index.html, DIR/features/{i}.html (one per feature) and
DIR/features/features.json. The model is the one the SAE was trained on unless --model names
another; a model whose identity (artifact.weights_sha256: a hash of its weights) differs from
the one the SAE recorded is refused unless --force. The built-in corpus is Shakespeare's held-out
plays (none of them in any training split).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterable
from typing import Any

from twofiles.cli.common import add_device_flag, add_json_flag, emit_json


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("dir", metavar="DIR", help="an SAE directory (sae.safetensors) or file")
    p.add_argument(
        "--model",
        default=None,
        help="the model to read activations from (default: the one the SAE was trained on)",
    )
    p.add_argument(
        "--data",
        nargs="+",
        default=["builtin"],
        metavar="FILES",
        help="builtin (Shakespeare's held-out plays) or text/jsonl/parquet files or directories",
    )
    p.add_argument("--tokens", type=int, default=100_000, help="tokens to read (default 100000)")
    pick = p.add_mutually_exclusive_group()
    pick.add_argument("--features", default=None, help="which features, e.g. 0,5,17")
    pick.add_argument(
        "--top", type=int, default=50, help="the N features first by --sort (default 50)"
    )
    p.add_argument(
        "--sort",
        choices=("density", "max"),
        default="density",
        help="order of the index (and of --top): how often a feature fires, or its max activation",
    )
    p.add_argument(
        "--context",
        type=int,
        default=128,
        help="tokens per window (default 128, capped by the model)",
    )
    p.add_argument("--batch-size", type=int, default=8, help="windows per forward pass (default 8)")
    p.add_argument("--out", default=None, help="where the pages go (default DIR/features)")
    p.add_argument(
        "--force", action="store_true", help="use a model whose identity is not the SAE's"
    )
    add_device_flag(p)
    add_json_flag(p)


def _features(spec: str | None) -> list[int] | None:
    from twofiles.errors import BadInputError

    if spec is None:
        return None
    try:
        return [int(s) for s in spec.split(",") if s.strip()]
    except ValueError:
        raise BadInputError(f"--features {spec!r}: expected indices like 0,5,17") from None


def _texts(data: list[str]) -> Iterable[str]:
    if data == ["builtin"]:
        from twofiles.data.builtin import builtin_documents

        return [w.text for w in builtin_documents("val")]
    from twofiles.data.corpus import Corpus

    return (d.text for d in Corpus(data))


class _Bars:
    """tqdm bars on stderr, one pass at a time: a new pass closes the last one's bar."""

    def __init__(self) -> None:
        self.bar: Any = None

    def __call__(self, label: str, total: int) -> Callable[[int], object]:
        from tqdm.auto import tqdm

        self.close()
        self.bar = tqdm(
            total=total, desc=label, unit="win", file=sys.stderr, dynamic_ncols=True, leave=False
        )
        return self.bar.update

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def run(args: argparse.Namespace) -> int:
    import time
    from pathlib import Path

    from twofiles.errors import BadInputError, TwofilesError
    from twofiles.formats.resolve import resolve_model
    from twofiles.runtime import pick_device
    from twofiles.sae.activations import model_id
    from twofiles.sae.features import build_dashboards, corpus_windows
    from twofiles.sae.model import load_sae
    from twofiles.sae.pages import write_dashboards

    features = _features(args.features)
    for name in ("tokens", "top", "context", "batch_size"):
        if getattr(args, name) < 1:
            raise BadInputError(f"--{name.replace('_', '-')} {getattr(args, name)}: must be >= 1")
    sae = load_sae(args.dir)
    cfg = sae.cfg
    spec = args.model or cfg.model_name
    if not spec:
        raise TwofilesError(
            f"{args.dir}: the SAE does not say which model it was trained on: give --model"
        )
    device, why = pick_device(args.device)
    t0 = time.perf_counter()
    loaded = resolve_model(spec, device=device)
    model = loaded.model.eval()
    identity = model_id(model)
    if cfg.model_id and identity != cfg.model_id:
        msg = (
            f"{spec} is not the model this SAE was trained on: its identity is {identity}, the "
            f"SAE's is {cfg.model_id} (a hash of the weights)"
        )
        if not args.force:
            raise TwofilesError(msg + "; --force reads it anyway")
        print(f"warning: {msg} (--force)", file=sys.stderr)
    sae = sae.to(device).eval()
    print(
        f"model {spec} on {device.type} ({why}), identity {identity}, loaded in "
        f"{time.perf_counter() - t0:.1f}s; SAE {cfg.kind} {cfg.d_in}x{cfg.d_sae} at {cfg.hook_name}",
        file=sys.stderr,
    )
    context = min(args.context, model.config.max_seq_len)
    windows = corpus_windows(loaded.tokenizer, _texts(args.data), args.tokens, context)
    t0 = time.perf_counter()
    bars = _Bars()
    dash = build_dashboards(
        model,
        loaded.tokenizer,
        sae,
        windows,
        features=features,
        top=args.top,
        order=args.sort,
        batch_size=args.batch_size,
        model_name=spec,
        progress=bars,
    )
    bars.close()
    out = write_dashboards(dash, Path(args.out) if args.out else Path(args.dir) / "features")
    seconds = time.perf_counter() - t0
    dead = sum(1 for d in dash.density if d == 0)
    print(
        f"{len(dash.features)} dashboards from {dash.tokens:,} tokens in {seconds:.1f}s "
        f"({dash.tokens / max(seconds, 1e-9):,.0f} tok/s); {dead:,} of {cfg.d_sae:,} features "
        f"never fired; open {out / 'index.html'}",
        file=sys.stderr,
    )
    if args.json:
        emit_json(
            {
                "out": str(out),
                "index": str(out / "index.html"),
                "model": spec,
                "model_identity": identity,
                "identity_matches": not cfg.model_id or identity == cfg.model_id,
                "hook_name": cfg.hook_name,
                "tokens": dash.tokens,
                "windows": dash.windows,
                "context": context,
                "features": [f.index for f in dash.features],
                "dead": dead,
                "d_sae": cfg.d_sae,
                "seconds": round(seconds, 2),
            }
        )
    return 0
