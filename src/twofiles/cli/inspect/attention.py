"""`twofiles inspect attention MODEL --prompt TEXT`: attention patterns per layer and head.

Writes DIR/attention.png (a grid of heatmaps, a row per layer and a column per head, the tokens
on the axes; 8 layers at most, evenly spaced, when more are chosen), DIR/heads.png (each head's
previous-token, first-token and, with --induction, induction score) and DIR/attention.html (pick
any chosen layer and head; the head table), and prints the heads that score highest.
"""

from __future__ import annotations

import argparse
import json

from twofiles.cli.inspect._shared import add_model_arguments

GRID_LAYERS = 8  # rows of the PNG grid: past this a figure is too tall to read
PAGE_VALUES = 4_000_000  # pattern values embedded in the page at most (~4 bytes each as JSON)

_PICKER = """
<p>layer <select id="layer"></select> head <select id="head"></select>
<span id="caption" class="note"></span></p>
<canvas id="pattern"></canvas>
<script>
const D = JSON.parse(document.getElementById("patterns").textContent);
const layerSel = document.getElementById("layer"), headSel = document.getElementById("head");
D.layers.forEach((l, i) => layerSel.add(new Option("L" + l, i)));
for (let h = 0; h < D.heads; h++) headSel.add(new Option("H" + h, h));
const cv = document.getElementById("pattern"), ctx = cv.getContext("2d");
const T = D.tokens.length, cell = Math.max(6, Math.min(28, Math.floor(720 / T)));
const pad = 120;
function draw() {
  const p = D.patterns[layerSel.value][headSel.value];
  cv.width = pad + T * cell + 10; cv.height = pad + T * cell + 10;
  ctx.clearRect(0, 0, cv.width, cv.height);
  ctx.font = Math.min(12, cell) + "px monospace";
  for (let q = 0; q < T; q++) for (let k = 0; k < T; k++) {
    const v = p[q][k];
    ctx.fillStyle = `rgba(8, 81, 156, ${v})`;
    ctx.fillRect(pad + k * cell, pad + q * cell, cell, cell);
  }
  ctx.fillStyle = "#333";
  if (cell >= 8) D.tokens.forEach((t, i) => {
    ctx.textAlign = "right"; ctx.fillText(t, pad - 4, pad + i * cell + cell * 0.75);
    ctx.save(); ctx.translate(pad + i * cell + cell * 0.75, pad - 4); ctx.rotate(-Math.PI / 2);
    ctx.textAlign = "left"; ctx.fillText(t, 0, 0); ctx.restore();
  });
  const s = D.scores[layerSel.value][headSel.value];
  document.getElementById("caption").textContent =
    "previous token " + s[0].toFixed(3) + ", first token " + s[1].toFixed(3) +
    (s.length > 2 ? ", induction " + s[2].toFixed(3) : "") + " (rows: query, columns: key)";
}
layerSel.onchange = headSel.onchange = draw;
draw();
</script>
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p, "attention")
    p.add_argument("--prompt", required=True, help="the text whose attention is drawn")
    p.add_argument(
        "--layers", default=None, help="comma-separated layer indices (default: all of them)"
    )
    p.add_argument(
        "--heads", default=None, help="comma-separated head indices for the PNG grid (default all)"
    )
    p.add_argument(
        "--induction",
        action="store_true",
        help="also score each head as an induction head, on a random sequence repeated twice",
    )
    p.add_argument("--top", type=int, default=10, help="heads listed in the terminal (default 10)")


def _indices(value: str | None, n: int, flag: str) -> list[int] | None:
    from twofiles.cli.common import comma_list
    from twofiles.errors import BadInputError

    if value is None:
        return None
    try:
        chosen = [int(x) for x in comma_list(value)]
    except ValueError:
        raise BadInputError(f"{flag} {value!r}: give comma-separated integers, e.g. 0,3") from None
    bad = [i for i in chosen if not 0 <= i < n]
    if bad or not chosen:
        raise BadInputError(f"{flag} {value!r}: choose among 0..{n - 1}")
    return chosen


def run(args: argparse.Namespace) -> int:
    import sys

    import torch

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
    from twofiles.inspect.attention import (
        AttentionResult,
        attention_figure,
        attention_patterns,
        head_scores_figure,
        induction_scores,
    )
    from twofiles.inspect.render import esc, html_page, img_tag, plot_label
    from twofiles.plots import png_bytes

    loaded = load(args)
    cfg = loaded.model.config
    layers = _indices(args.layers, cfg.n_layers, "--layers")
    heads = _indices(args.heads, cfg.n_heads, "--heads")
    ids = encode(loaded, args.prompt, "--prompt")
    tokens = token_texts(loaded, ids)
    result = attention_patterns(loaded.model, ids, layers)
    if args.induction:
        bos = ids[0] if ids[0] == loaded.tokenizer.bos_id else None
        length = min(20, (cfg.max_seq_len - 1) // 2)
        result.induction = induction_scores(loaded.model, result.layers, length=length, bos_id=bos)

    # the grid: every chosen layer up to GRID_LAYERS, else that many evenly spaced
    L = len(result.layers)
    rows = list(range(L))
    if L > GRID_LAYERS:
        rows = sorted({round(i * (L - 1) / (GRID_LAYERS - 1)) for i in range(GRID_LAYERS)})
        shown = ", ".join(str(result.layers[r]) for r in rows)
        print(
            f"the PNG grid shows layers {shown} of the {L} chosen (pass --layers to pick); "
            "the HTML page has them all",
            file=sys.stderr,
        )
    grid = AttentionResult(
        layers=[result.layers[r] for r in rows],
        patterns=result.patterns[rows],
        prev_token=result.prev_token[rows],
        first_token=result.first_token[rows],
    )
    labels = [plot_label(t) for t in tokens]
    grid_png = png_bytes(attention_figure(grid, labels, heads), dpi=90)
    heads_png = png_bytes(head_scores_figure(result))

    # the page's picker: as many layers as fit PAGE_VALUES
    T, H = len(ids), cfg.n_heads
    fit = max(1, min(L, PAGE_VALUES // (H * T * T)))
    score_parts = [result.prev_token, result.first_token]
    if result.induction is not None:
        score_parts.append(result.induction)
    scores = torch.stack(score_parts, dim=-1)  # [L, H, n_scores]
    picker_data = {
        "tokens": labels,
        "layers": result.layers[:fit],
        "heads": H,
        "patterns": [
            [[[round(v, 3) for v in row] for row in head] for head in layer]
            for layer in result.patterns[:fit].tolist()
        ],
        "scores": scores[:fit].tolist(),
    }
    blob = json.dumps(picker_data).replace("</", "<\\/")
    note = (
        ""
        if fit == L
        else f"<p class='note'>The page holds layers {result.layers[0]}..{result.layers[fit - 1]} "
        f"of the {L} chosen (pass --layers for others).</p>"
    )
    picker = f"<script type='application/json' id='patterns'>{blob}</script>{note}{_PICKER}"
    key = "induction" if result.induction is not None else "prev_token"
    ranked = sorted(result.head_table(), key=lambda r: -r[key])
    header = ["layer", "head", "previous token", "first token"]
    header += ["induction"] * (result.induction is not None)
    head_rows = "".join(
        "<tr>" + "".join(f"<td>{esc(v)}</td>" for v in r.values()) + "</tr>" for r in ranked
    )
    head_table = (
        "<table><tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + f"</tr>{head_rows}</table>"
    )
    page = html_page(
        "Attention patterns",
        [
            ("Pick a head", picker),
            ("Head scores", img_tag(heads_png, "head scores") + head_table),
            ("Grid", img_tag(grid_png, "attention patterns")),
        ],
    )
    out = out_dir(args)
    grid_path = write_bytes(out / "attention.png", grid_png)
    heads_path = write_bytes(out / "heads.png", heads_png)
    html_path = write_text(out / "attention.html", page)

    top = ranked[: max(args.top, 0)]
    print(f"heads by {key.replace('_', ' ')} score ({len(ids)} tokens):")
    print(table([list(r.values()) for r in top], header))
    print(f"wrote {grid_path}, {heads_path} and {html_path}")
    if args.json:
        emit_json(
            {
                "png": grid_path,
                "heads_png": heads_path,
                "html": html_path,
                "tokens": len(ids),
                "layers": result.layers,
                "grid_layers": grid.layers,
                "shape": list(result.patterns.shape),
                "ranked_by": key,
                "top_heads": top,
            }
        )
    return 0
