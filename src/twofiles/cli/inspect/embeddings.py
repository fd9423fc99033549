"""`twofiles inspect embeddings`: the input embedding as a space of words, and a word in context.

    twofiles inspect embeddings MODEL --neighbours king --k 10 --out DIR
    twofiles inspect embeddings MODEL --analogy "king - man + woman = queen" --out DIR
    twofiles inspect embeddings MODEL --map king,queen,man,woman,paris,france --out DIR
    twofiles inspect embeddings MODEL --context "miniature tower" --context "large tower" \\
        --word tower --out DIR

Any of the four at once. Writes DIR/embeddings.html (every table and picture), DIR/map.png and
DIR/context.png when asked for, prints the tables, and with --json a summary as the last line.
"""

from __future__ import annotations

import argparse
import os
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
    parser.add_argument(
        "--neighbours",
        action="append",
        default=[],
        metavar="WORD",
        help="the nearest tokens to WORD by cosine (repeatable; a word of several tokens is "
        "the mean of their embeddings)",
    )
    parser.add_argument("--k", type=int, default=10, help="neighbours / answers shown (10)")
    parser.add_argument(
        "--analogy",
        action="append",
        default=[],
        metavar="EXPR",
        help='vector arithmetic, e.g. "king - man + woman" (input words excluded from answers); '
        '"... = queen" reports the rank of the expected answer',
    )
    parser.add_argument(
        "--expect", help="with --analogy: the expected answer of each analogy without '= WORD'"
    )
    parser.add_argument("--map", metavar="WORDS", help="comma-separated words for a 2-D PCA map")
    parser.add_argument(
        "--map-top",
        type=int,
        metavar="N",
        help="map the first N whole-word tokens of the vocabulary (the most frequent merges)",
    )
    parser.add_argument(
        "--context",
        action="append",
        default=[],
        metavar="TEXT",
        help="a context holding --word (give two or more)",
    )
    parser.add_argument(
        "--word",
        help="with --context: the word to follow through the layers, or one per context "
        "(tower,house: a baseline of two different words in the same slot)",
    )
    parser.add_argument("--out", required=True, help="directory for embeddings.html and PNGs")
    add_device_flag(parser)
    add_inference_flags(parser)
    add_json_flag(parser)


def _show(tokenizer: Any, i: int) -> str:
    from twofiles.inspect.render import show_token

    return show_token(tokenizer.decode([i]))


def _map_png(xy: Any, labels: list[str], title: str) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from twofiles.plots import png_bytes

    fig, ax = plt.subplots(figsize=(7, 6))
    ax.scatter(xy[:, 0], xy[:, 1], s=12, color="#3182bd")
    for (x, y), label in zip(xy.tolist(), labels, strict=True):
        ax.annotate(label, (x, y), fontsize=8, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    ax.set_title(title, fontsize=10)
    return png_bytes(fig)


def _context_png(traj: Any) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from twofiles.plots import png_bytes

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 5))
    L = traj.xy.shape[1]
    for c, text in enumerate(traj.contexts):
        pts = traj.xy[c]
        left.plot(pts[:, 0], pts[:, 1], "-o", ms=3, label=text)
        for j in (0, L // 2, L - 1):
            left.annotate(traj.layers[j], pts[j].tolist(), fontsize=7)
    left.set_title(f"{traj.word!r} layer by layer (PCA of unit vectors)", fontsize=10)
    left.legend(fontsize=8)
    for (a, b), cos in traj.cosine.items():
        right.plot(range(L), cos, "-o", ms=3, label=f"{traj.contexts[a]!r} vs {traj.contexts[b]!r}")
    right.set_xticks(range(L))
    right.set_xticklabels(traj.layers, rotation=90, fontsize=6)
    right.set_ylabel("cosine similarity")
    right.set_title("cosine between the contexts, per layer", fontsize=10)
    right.legend(fontsize=8)
    return png_bytes(fig)


def _html_table(header: list[str], rows: list[list[Any]]) -> str:
    from twofiles.inspect.render import esc

    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _text_table(header: list[str], rows: list[list[Any]]) -> str:
    cells = [header, *[[str(c) for c in r] for r in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in cells)


def run(args: argparse.Namespace) -> int:
    import torch

    from twofiles.errors import BadInputError
    from twofiles.formats.resolve import resolve_model
    from twofiles.inspect import embeddings as emb
    from twofiles.inspect.render import esc, html_page, img_tag
    from twofiles.paths import atomic_write_bytes
    from twofiles.runtime import pick_device

    t0 = time.perf_counter()
    map_words = comma_list(args.map)
    if args.map is not None and not map_words:
        raise BadInputError("--map: no word given")
    if args.map and args.map_top:
        raise BadInputError("give --map or --map-top, not both")
    if not (args.neighbours or args.analogy or args.map or args.map_top or args.context):
        raise BadInputError("nothing to show: give --neighbours, --analogy, --map or --context")
    if args.context and not args.word:
        raise BadInputError("--context needs --word (the word to follow)")
    if args.word and len(args.context) < 2:
        raise BadInputError("--word needs two or more --context TEXT")
    if args.expect and not args.analogy:
        raise BadInputError("--expect goes with --analogy")
    if args.k < 1 or (args.map_top is not None and args.map_top < 2):
        raise BadInputError("--k must be >= 1 and --map-top >= 2")
    analogies: list[tuple[str, str | None]] = []
    for item in args.analogy:
        expr, eq, want = item.partition("=")
        if eq and not want.strip():
            raise BadInputError(f"--analogy {item!r}: nothing after '='")
        try:
            emb.parse_expression(expr)
        except ValueError as e:
            raise BadInputError(f"--analogy: {e}") from None
        analogies.append((expr.strip(), want.strip() if eq else args.expect))

    device, _ = pick_device(args.device)
    loaded = resolve_model(args.model, device=device)
    prepare_model(loaded, args, layout=False)  # --threads; the weights as stored unless --quantize
    tok = loaded.tokenizer
    E = emb.embedding_table(loaded)
    sections: list[tuple[str, str]] = []
    texts: list[str] = []
    summary: dict[str, Any] = {"model": args.model}
    pngs: dict[str, bytes] = {}
    try:
        if args.neighbours:
            summary["neighbours"] = []
        for word in args.neighbours:
            wv = emb.word_vector(loaded, word, E)
            near = emb.neighbours(E, wv.vector, args.k)
            rows = [[r + 1, _show(tok, i), i, f"{c:.4f}"] for r, (i, c) in enumerate(near)]
            header = ["rank", "token", "id", "cosine"]
            what = f"{word!r} = {' '.join(_show(tok, i) for i in wv.ids)} ({wv.how})"
            texts.append(f"nearest to {what}\n" + _text_table(header, rows))
            sections.append(
                (f"Nearest to {word!r}", f"<p>{esc(what)}</p>" + _html_table(header, rows))
            )
            summary["neighbours"].append(
                {
                    "word": word,
                    "tokens": wv.ids,
                    "how": wv.how,
                    "nearest": [
                        {"token": tok.decode([i]), "id": i, "cosine": round(c, 5)} for i, c in near
                    ],
                }
            )
        if args.analogy:
            summary["analogies"] = []
        for expr, expect in analogies:
            a = emb.analogy(loaded, expr, args.k, expect=expect)
            rows = [[r + 1, _show(tok, i), i, f"{c:.4f}"] for r, (i, c) in enumerate(a.answers)]
            header = ["rank", "token", "id", "cosine"]
            terms = " ".join(f"{'+' if s > 0 else '-'} {wv.word}[{wv.how}]" for s, wv in a.terms)
            note = f"{expr}: {terms}; input tokens excluded"
            if a.expected is not None:
                note += (
                    f"; expected {expect!r} ranks {a.expected_rank} of {E.shape[0]} "
                    f"(cosine {a.expected_cosine:.4f})"
                )
            texts.append(note + "\n" + _text_table(header, rows))
            sections.append((f"Analogy {expr}", f"<p>{esc(note)}</p>" + _html_table(header, rows)))
            summary["analogies"].append(
                {
                    "expression": expr,
                    "answers": [
                        {"token": tok.decode([i]), "id": i, "cosine": round(c, 5)}
                        for i, c in a.answers
                    ],
                    "expected": expect,
                    "expected_rank": a.expected_rank,
                    "expected_cosine": a.expected_cosine,
                }
            )
        if map_words or args.map_top:
            if map_words:
                vecs = [emb.word_vector(loaded, w, E) for w in map_words]
                labels = map_words
                X = torch.stack([v.vector for v in vecs])
            else:
                ids = emb.map_top_tokens(tok, args.map_top)
                labels = [tok.decode([i]).strip() for i in ids]
                X = E[ids]
            if len(labels) < 2:
                raise BadInputError("--map-top: fewer than two whole-word tokens in the vocabulary")
            xy = emb.project_2d(X)
            pngs["map.png"] = _map_png(xy, labels, f"{len(labels)} token embeddings, PCA")
            sections.append(("Map", img_tag(pngs["map.png"], "2-D map of token embeddings")))
            summary["map"] = {
                "words": labels,
                "xy": [[round(v, 4) for v in p] for p in xy.tolist()],
            }
            texts.append(f"map of {len(labels)} words: {os.path.join(args.out, 'map.png')}")
        if args.context:
            words = comma_list(args.word)
            traj = emb.context_trajectory(
                loaded, args.context, words[0] if len(words) == 1 else words
            )
            header = ["layer", *[f"cos {a}-{b}" for a, b in traj.cosine]]
            rows = [
                [layer, *[f"{cos[j]:.4f}" for cos in traj.cosine.values()]]
                for j, layer in enumerate(traj.layers)
            ]
            legend = "; ".join(f"{i}: {c!r}" for i, c in enumerate(args.context))
            texts.append(f"{traj.word!r} in context ({legend})\n" + _text_table(header, rows))
            pngs["context.png"] = _context_png(traj)
            sections.append(
                (
                    f"{traj.word!r} in context",
                    f"<p>{esc(legend)}. The word's last token's residual stream after each "
                    "block; the contexts after the word are not run (a causal model cannot see "
                    "them). In deep layers a few large dimensions every token shares dominate the "
                    "raw cosine: --word tower,house with a context for each gives the baseline of "
                    "two different words in the same slot.</p>"
                    + img_tag(pngs["context.png"], "the word's vector layer by layer")
                    + _html_table(header, rows),
                )
            )
            summary["context"] = {
                "word": traj.word,
                "contexts": args.context,
                "layers": traj.layers,
                "cosine": {
                    f"{a}-{b}": [round(c, 5) for c in v] for (a, b), v in traj.cosine.items()
                },
            }
    except ValueError as e:
        raise BadInputError(str(e)) from None
    os.makedirs(args.out, exist_ok=True)
    for name, png in pngs.items():
        atomic_write_bytes(os.path.join(args.out, name), png)
    html_path = os.path.join(args.out, "embeddings.html")
    page = html_page(f"Embeddings of {args.model}", sections, data=summary)
    atomic_write_bytes(html_path, page.encode())
    print("\n\n".join(texts))
    print(f"wrote {html_path}")
    if args.json:
        emit_json({**summary, "html": html_path, "seconds": round(time.perf_counter() - t0, 3)})
    return 0
