"""`twofiles inspect lens MODEL --prompt TEXT`: the logit lens, as a picture.

Writes DIR/lens.png (layers x positions, each cell the lens's top token, coloured by the
probability of the token that actually comes next; the last 40 positions of a longer prompt) and
DIR/lens.html (every position, the top-k of each cell on hover), and prints the top token of
every layer at the last position.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from twofiles.cli.inspect._shared import add_model_arguments

if TYPE_CHECKING:
    from twofiles.inspect.lens import LensResult


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p, "lens")
    p.add_argument("--prompt", required=True, help="the text to read the model on")
    p.add_argument("--k", type=int, default=5, help="top tokens kept per cell (default 5)")


def _page(
    result: LensResult, tokens: list[str], tops: list[list[str]], png: bytes, data: dict[str, Any]
) -> str:
    from twofiles.inspect.render import esc, html_page, img_tag, show_token, token_strip

    rows = []
    for r in reversed(range(len(result.layers))):  # the output at the top, as in the PNG
        cells = [f"<th>{esc(result.layers[r])}</th>"]
        for c in range(len(tokens)):
            p_next = float(result.next_prob[r, c]) if c < len(tokens) - 1 else None
            shade = p_next if p_next is not None else float(result.top_probs[r, c, 0])
            hover = "\n".join(f"{show_token(t['token'])}  {t['p']:.3f}" for t in data["top"][r][c])
            if p_next is not None:
                hover += f"\np(next = {show_token(tokens[c + 1])}) = {p_next:.3f}"
            cells.append(
                f'<td class="tok" style="background: rgba(33, 102, 172, {shade:.3f}); '
                f'color: {"white" if shade > 0.55 else "black"}" title="{esc(hover)}">'
                f"{esc(show_token(tops[r][c]))}</td>"
            )
        rows.append("<tr>" + "".join(cells) + "</tr>")
    head = "<tr><th></th>" + "".join(f"<th class='tok'>{esc(show_token(t))}</th>" for t in tokens)
    grid = (
        "<p class='note'>Each cell: the lens's top token at that layer (rows) and position "
        "(columns), shaded by the probability it gives the token that actually comes next (the "
        "last column: its top token's own probability). Hover a cell for its top tokens.</p>"
        f"<div style='overflow-x: auto'><table>{head}</tr>{''.join(rows)}</table></div>"
    )
    final = token_strip(
        tokens[1:],
        result.next_prob[-1].tolist(),
        title="the model's own probability of each next token",
    )
    return html_page(
        "Logit lens",
        [
            ("The lens", grid),
            ("Next-token probability, last layer", final),
            ("Picture", img_tag(png, "logit lens heatmap")),
        ],
        data=data,
    )


def run(args: argparse.Namespace) -> int:
    from twofiles.cli.common import emit_json
    from twofiles.cli.inspect._shared import (
        encode,
        load,
        out_dir,
        table,
        token_texts,
        write_bytes,
        write_text,
    )
    from twofiles.errors import BadInputError
    from twofiles.inspect.lens import lens_figure, logit_lens
    from twofiles.plots import png_bytes

    if args.k < 1:
        raise BadInputError(f"--k {args.k}: must be >= 1")
    loaded = load(args)
    ids = encode(loaded, args.prompt, "--prompt")
    result = logit_lens(loaded.model, ids, k=args.k)
    tokens = token_texts(loaded, ids)
    data = result.to_dict(loaded.tokenizer, ids)
    tops = [[cell[0]["token"] for cell in row] for row in data["top"]]
    png = png_bytes(lens_figure(result, tokens, tops))
    out = out_dir(args)
    png_path = write_bytes(out / "lens.png", png)
    html_path = write_text(out / "lens.html", _page(result, tokens, tops, png, data))

    rows = [
        [
            name,
            repr(tops[r][-1]),
            f"{float(result.top_probs[r, -1, 0]):.3f}",
            f"{float(result.entropy[r, -1]):.2f}",
        ]
        for r, name in enumerate(result.layers)
    ]
    print(f"the lens at the last position ({tokens[-1]!r}):")
    print(table(rows, ["layer", "top token", "p", "entropy bits"]))
    print(f"wrote {png_path} and {html_path}")
    if args.json:
        emit_json(
            {
                "png": png_path,
                "html": html_path,
                "tokens": len(ids),
                "layers": len(result.layers),
                "shape": [len(result.layers), len(ids), args.k],
                "last_position": [
                    {
                        "layer": name,
                        "token": tops[r][-1],
                        "p": round(float(result.top_probs[r, -1, 0]), 4),
                    }
                    for r, name in enumerate(result.layers)
                ],
                "prediction": tops[-1][-1],
            }
        )
    return 0
