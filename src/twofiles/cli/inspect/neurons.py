"""`twofiles inspect neurons`: the contexts of a corpus that most activate chosen neurons.

    twofiles inspect neurons MODEL --layer 3 --top 8 --data builtin --tokens 50000 --out DIR
    twofiles inspect neurons MODEL --layer 3 --neurons 0,5,17 --data notes.txt --out DIR

Writes DIR/neurons.png (each neuron's activation histogram) and DIR/neurons.html (each neuron's
top contexts, the activating token outlined and every token shaded by the neuron's value),
prints a table, and with --json a summary as the last line.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from twofiles.cli.common import (
    add_device_flag,
    add_inference_flags,
    add_json_flag,
    comma_list,
    emit_json,
    prepare_model,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="model.safetensors, .gguf, Hugging Face dir or alias")
    parser.add_argument("--layer", type=int, required=True, help="the block to read (0-based)")
    pick = parser.add_mutually_exclusive_group()
    pick.add_argument("--neurons", help="comma-separated neuron indices, e.g. 0,5,17")
    pick.add_argument(
        "--top",
        type=int,
        default=8,
        metavar="N",
        help="show the N neurons with the largest maximum activation (default 8)",
    )
    parser.add_argument(
        "--hook",
        default="mlp.hook_post",
        help="the hook point at --layer whose last axis are the neurons: mlp.hook_post "
        "(default), mlp.hook_pre, resid_post, attn_out, ...",
    )
    parser.add_argument(
        "--data",
        nargs="+",
        default=["builtin"],
        metavar="FILES",
        help="'builtin' (the held-out plays of the built-in Shakespeare) or text/jsonl/parquet "
        "files or directories",
    )
    parser.add_argument(
        "--tokens", type=int, default=50_000, help="corpus tokens to scan (default 50000)"
    )
    parser.add_argument(
        "--window", type=int, default=128, help="tokens per forward pass (default 128)"
    )
    parser.add_argument("--k", type=int, default=10, help="top contexts kept per neuron")
    parser.add_argument("--batch-size", type=int, default=16, help="windows per forward pass")
    parser.add_argument("--out", required=True, help="directory for neurons.png and neurons.html")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_device_flag(parser)
    add_inference_flags(parser)
    add_json_flag(parser)


def _corpus_text(data: list[str], chars: int) -> str:
    """About `chars` characters of the corpus (enough for the tokens asked, without tokenizing
    a whole large corpus)."""
    if data == ["builtin"]:
        from twofiles.data.builtin import builtin_text

        return builtin_text("val")[:chars]
    from twofiles.data.corpus import Corpus

    parts, n = [], 0
    for doc in Corpus(data):
        parts.append(doc.text)
        n += len(doc.text) + 2
        if n >= chars:
            break
    return "\n\n".join(parts)[:chars]


def _histograms(scan: Any) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from twofiles.plots import png_bytes

    n = len(scan.neurons)
    cols = min(4, n)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.4 * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.axis("off")
    for ax, neuron in zip(axes.flat, scan.neurons, strict=False):
        edges = neuron.edges
        ax.stairs(neuron.histogram, edges, fill=True, color="#e6550d")
        ax.set_yscale("symlog")
        ax.set_title(f"neuron {neuron.index}: max {neuron.max:.3g}", fontsize=9)
        ax.tick_params(labelsize=7)
    fig.suptitle(f"{scan.hook}: activations over {scan.tokens:,} tokens", fontsize=10)
    return png_bytes(fig)


def _page(scan: Any, tokenizer: Any, png: bytes, model: str) -> str:
    from twofiles.inspect.render import esc, html_page, img_tag, token_strip

    intro = (
        f"<p>{esc(model)}, {esc(scan.hook)} ({scan.width} neurons), {scan.tokens:,} tokens in "
        f"{scan.windows} windows. Shown: {esc(scan.selection)}. Each context is coloured by the "
        "neuron's activation, relative to its maximum; the activating token is outlined.</p>"
        + img_tag(png, "activation histograms")
    )
    sections = [("Overview", intro)]
    for n in scan.neurons:
        rows = []
        for c in n.contexts:
            toks = [tokenizer.decode([i]) for i in c.ids]
            strip = token_strip(
                toks, [v / n.max if n.max > 0 else 0.0 for v in c.values], mark=c.position
            )
            rows.append(f"<tr><td>{c.activation:.4g}</td><td>{strip}</td></tr>")
        body = (
            f"<p class='note'>max {n.max:.4g}, mean {n.mean:.4g}, positive on "
            f"{n.positive:.1%} of tokens</p><table><tr><th>activation</th><th>context</th></tr>"
            + "".join(rows)
            + "</table>"
        )
        sections.append((f"Neuron {n.index}", body))
    return html_page(f"Neurons of {scan.hook}", sections, data=scan.summary(tokenizer))


def _table(scan: Any, tokenizer: Any) -> str:
    from twofiles.inspect.render import show_token

    lines = [f"{'neuron':>7} {'max':>9} {'mean':>9} {'>0':>6}  top context [activating token]"]
    for n in scan.neurons:
        ctx = ""
        if n.contexts:
            c = n.contexts[0]
            left = tokenizer.decode(c.ids[max(0, c.position - 8) : c.position])
            tok = tokenizer.decode([c.ids[c.position]])
            right = tokenizer.decode(c.ids[c.position + 1 : c.position + 3])
            ctx = show_token(f"{left}[{tok}]{right}")
        lines.append(f"{n.index:>7} {n.max:>9.4g} {n.mean:>9.3g} {n.positive:>6.1%}  {ctx}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    import os

    from twofiles.errors import BadInputError
    from twofiles.formats.resolve import resolve_model
    from twofiles.inspect.neurons import resolve_hook, scan_neurons, token_windows
    from twofiles.paths import atomic_write_bytes
    from twofiles.runtime import pick_device

    t0 = time.perf_counter()
    for flag, value in (("--tokens", args.tokens), ("--k", args.k), ("--top", args.top)):
        if value < 1:
            raise BadInputError(f"{flag} {value}: must be >= 1")
    neurons = None
    if args.neurons is not None:
        try:
            neurons = [int(x) for x in comma_list(args.neurons)]
        except ValueError:
            raise BadInputError(
                f"--neurons {args.neurons!r}: expected comma-separated integers"
            ) from None
        if not neurons:
            raise BadInputError("--neurons: no neuron given")
    device, why = pick_device(args.device)
    loaded = resolve_model(args.model, device=device)
    prepare_model(loaded, args, layout=False)  # --threads; the weights as stored unless --quantize
    tok, cfg = loaded.tokenizer, loaded.model.config
    try:
        hook = resolve_hook(loaded, args.layer, args.hook)
    except ValueError as e:
        raise BadInputError(f"--layer {args.layer} --hook {args.hook}: {e}") from None
    window = min(args.window, cfg.max_seq_len)
    bos = tok.bos_id if tok.add_bos else None
    if window < 2 + (bos is not None):
        raise BadInputError(f"--window {args.window}: too short")
    text = _corpus_text(args.data, args.tokens * 8)
    ids = tok.encode(text)[: args.tokens]
    windows = token_windows(ids, window, bos=bos)
    if len(ids) < args.tokens:
        print(
            f"note: the corpus gave {len(ids):,} tokens, fewer than --tokens {args.tokens:,}",
            file=sys.stderr,
        )
    if not windows:
        raise BadInputError(
            f"--data {' '.join(args.data)}: {len(ids)} tokens, fewer than one window of {window}"
        )
    print(
        f"scanning {hook} of {args.model} on {device.type} ({why}): {len(windows)} windows of "
        f"{window} tokens",
        file=sys.stderr,
    )
    from tqdm.auto import tqdm

    bar = tqdm(
        total=len(windows) * window,
        desc="tokens",
        unit="tok",
        file=sys.stderr,
        disable=args.no_progress,
        leave=False,
    )
    try:
        scan = scan_neurons(
            loaded,
            windows,
            hook,
            neurons=neurons,
            top=args.top,
            k=args.k,
            batch_size=max(1, args.batch_size),
            skip_first=bos is not None,
            progress=bar.update,
        )
    except ValueError as e:
        raise BadInputError(str(e)) from None
    finally:
        bar.close()
    seconds = time.perf_counter() - t0
    png = _histograms(scan)
    os.makedirs(args.out, exist_ok=True)
    png_path = os.path.join(args.out, "neurons.png")
    html_path = os.path.join(args.out, "neurons.html")
    atomic_write_bytes(png_path, png)
    atomic_write_bytes(html_path, _page(scan, tok, png, args.model).encode())
    print(_table(scan, tok))
    print(f"{scan.tokens:,} tokens in {seconds:.1f}s; wrote {html_path} and {png_path}")
    if args.json:
        emit_json(
            {
                **scan.summary(tok),
                "model": args.model,
                "seconds": round(seconds, 3),
                "html": html_path,
                "png": png_path,
            }
        )
    return 0
