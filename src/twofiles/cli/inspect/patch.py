"""`twofiles inspect patch MODEL --clean TEXT --corrupt TEXT --target TOKEN --against TOKEN`:
activation patching by layer and position.

Runs the corrupted prompt with one clean activation copied in (per layer and position for
resid_pre, attn_out or mlp_out; per layer and head, at every position, for heads) and scores each
by the normalised logit difference recovered: 0 = the corrupted run, 1 = the clean run. Writes
DIR/patch.png (the heatmap) and DIR/patch.html (the heatmap and the numbers), and prints the
cells that recover the most. Both prompts must tokenize to the same length.
"""

from __future__ import annotations

import argparse

from twofiles.cli.inspect._shared import add_model_arguments


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p, "patch")
    p.add_argument("--clean", required=True, help="the prompt whose activations are copied in")
    p.add_argument("--corrupt", required=True, help="the prompt they are patched into")
    p.add_argument(
        "--target", required=True, help="the clean run's answer, one token (e.g. ' Mary')"
    )
    p.add_argument(
        "--against", required=True, help="the corrupted run's answer, one token (e.g. ' John')"
    )
    p.add_argument(
        "--what",
        choices=("resid_pre", "attn_out", "mlp_out", "heads"),
        default="resid_pre",
        help="what is patched: the residual stream entering each block (default), the attention "
        "or MLP output (all per layer and position), or each head's output at every position",
    )
    p.add_argument(
        "--layers", default=None, help="comma-separated layer indices to patch (default: all)"
    )
    p.add_argument(
        "--batch-size", type=int, default=32, help="patched runs per forward pass (default 32)"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from twofiles.cli.common import comma_list, emit_json
    from twofiles.cli.inspect._shared import (
        encode,
        load,
        out_dir,
        table,
        token_id,
        token_texts,
        write_bytes,
        write_text,
    )
    from twofiles.errors import BadInputError
    from twofiles.inspect.patching import activation_patching, check_same_length, patching_figure
    from twofiles.inspect.render import esc, html_page, img_tag, plot_label
    from twofiles.plots import png_bytes

    if args.batch_size < 1:
        raise BadInputError(f"--batch-size {args.batch_size}: must be >= 1")
    try:
        layers = None if args.layers is None else [int(x) for x in comma_list(args.layers)]
    except ValueError:
        raise BadInputError(f"--layers {args.layers!r}: give comma-separated integers") from None
    loaded = load(args)
    clean = encode(loaded, args.clean, "--clean")
    corrupt = encode(loaded, args.corrupt, "--corrupt")
    check_same_length(clean, corrupt)
    target = token_id(loaded, args.target, "--target")
    against = token_id(loaded, args.against, "--against")
    result = activation_patching(
        loaded.model,
        clean,
        corrupt,
        target,
        against,
        args.what,
        layers=layers,
        batch_size=args.batch_size,
        progress=not args.no_progress,
    )

    clean_t, corrupt_t = token_texts(loaded, clean), token_texts(loaded, corrupt)
    if args.what == "heads":
        columns = [f"H{h}" for h in range(result.scores.shape[1])]
    else:
        columns = [
            plot_label(a) if a == b else f"{plot_label(a)} / {plot_label(b)}"
            for a, b in zip(clean_t, corrupt_t, strict=True)
        ]
    diff = f"logit({args.target!r}) - logit({args.against!r})"
    title = f"patching {args.what}: {diff} recovered (0 = corrupted, 1 = clean)"
    png = png_bytes(patching_figure(result, columns, title))

    lim = max(1.0, float(result.scores.abs().max()))
    rows = []
    for i, layer in enumerate(result.layers):
        cells = []
        for j, v in enumerate(result.scores[i].tolist()):
            a = min(abs(v) / lim, 1.0)
            rgb = "33, 102, 172" if v >= 0 else "178, 24, 43"
            cells.append(
                f'<td style="background: rgba({rgb}, {a:.3f}); color: '
                f'{"white" if a > 0.6 else "black"}" title="layer {layer}, {esc(columns[j])}: '
                f'{v:.4f}">{v:.2f}</td>'
            )
        rows.append(f"<tr><th>{layer}</th>{''.join(cells)}</tr>")
    head = "".join(f"<th class='tok'>{esc(c)}</th>" for c in columns)
    grid = f"<div style='overflow-x: auto'><table><tr><th>layer</th>{head}</tr>{''.join(rows)}</table></div>"
    runs = (
        "<table>"
        f"<tr><th>clean</th><td class='tok'>{esc(args.clean)}</td><td>{diff} = "
        f"{result.clean_diff:+.4f}</td></tr>"
        f"<tr><th>corrupted</th><td class='tok'>{esc(args.corrupt)}</td><td>{diff} = "
        f"{result.corrupt_diff:+.4f}</td></tr></table>"
    )
    page = html_page(
        f"Activation patching: {args.what}",
        [
            ("The two runs", runs),
            ("Picture", img_tag(png, "activation patching heatmap")),
            ("Recovered, per cell", grid),
        ],
        data={
            "what": args.what,
            "layers": result.layers,
            "columns": columns,
            "scores": result.scores.tolist(),
            "clean_diff": result.clean_diff,
            "corrupt_diff": result.corrupt_diff,
        },
    )
    out = out_dir(args)
    png_path = write_bytes(out / "patch.png", png)
    html_path = write_text(out / "patch.html", page)

    col_name = "head" if args.what == "heads" else "position"
    best = result.best(8)
    print(f"{diff}: clean {result.clean_diff:+.3f}, corrupted {result.corrupt_diff:+.3f}")
    print(f"cells that recover the most ({args.what}):")
    print(
        table(
            [[i, f"{j} {columns[j]}", f"{v:.3f}"] for i, j, v in best],
            ["layer", col_name, "recovered"],
        )
    )
    print(f"wrote {png_path} and {html_path}")
    if args.json:
        emit_json(
            {
                "png": png_path,
                "html": html_path,
                "what": args.what,
                "layers": result.layers,
                "shape": list(result.scores.shape),
                "tokens": len(clean),
                "clean_diff": round(result.clean_diff, 6),
                "corrupt_diff": round(result.corrupt_diff, 6),
                "best": [{"layer": i, col_name: j, "recovered": round(v, 4)} for i, j, v in best],
                "max_recovered": round(float(result.scores.max()), 4),
            }
        )
    return 0
