"""`twofiles inspect attribute MODEL --prompt TEXT [--target TOKEN] [--against TOKEN]`: direct
logit attribution per layer and head.

Each head's and each MLP's direct contribution to the target token's logit at the last position
(or to the difference target - against), through the final norm's scale frozen at its value on
this prompt, so that the parts and the embedding add up to the actual logit. Writes
DIR/attribution.png (a layer x head heatmap and the MLPs' bars) and DIR/attribution.html, and
prints the largest contributions. TOKEN must be a single token (" Mary", with its space); the
default target is the model's own top prediction.
"""

from __future__ import annotations

import argparse

from twofiles.cli.inspect._shared import add_model_arguments


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p, "attribute")
    p.add_argument("--prompt", required=True, help="the text whose next token is explained")
    p.add_argument(
        "--target", default=None, help="the token explained (default: the model's top prediction)"
    )
    p.add_argument(
        "--against", default=None, help="explain the logit difference target - this token"
    )
    p.add_argument("--top", type=int, default=12, help="parts listed in the terminal (default 12)")


def run(args: argparse.Namespace) -> int:
    import torch

    from twofiles.cli.common import emit_json
    from twofiles.cli.inspect._shared import (
        encode,
        load,
        out_dir,
        table,
        token_id,
        write_bytes,
        write_text,
    )
    from twofiles.inspect.attribution import attribution_figure, direct_logit_attribution
    from twofiles.inspect.hooks import run_with_hooks
    from twofiles.inspect.render import esc, html_page, img_tag
    from twofiles.plots import png_bytes

    loaded = load(args)
    tok = loaded.tokenizer
    ids = encode(loaded, args.prompt, "--prompt")
    if args.target is not None:
        target = token_id(loaded, args.target, "--target")
    else:
        with torch.no_grad():
            target = int(run_with_hooks(loaded.model, ids)[0, -1].argmax())
    against = None if args.against is None else token_id(loaded, args.against, "--against")
    result = direct_logit_attribution(loaded.model, ids, target, against)

    t_text = tok.decode([target])
    what = f"logit({t_text!r})"
    if against is not None:
        what += f" - logit({tok.decode([against])!r})"
    png = png_bytes(attribution_figure(result, f"direct logit attribution to {what}"))
    top = result.top(max(args.top, 0))
    parts = [
        ["embed", f"{result.embed:+.4f}"],
        ["attention heads", f"{float(result.heads.sum()):+.4f}"],
        ["MLPs", f"{float(result.mlps.sum()):+.4f}"],
        ["sum of the parts", f"{result.total:+.4f}"],
        ["the model's logit", f"{result.logit:+.4f}"],
    ]
    summary = (
        "<table>"
        + "".join(f"<tr><th>{esc(a)}</th><td>{esc(b)}</td></tr>" for a, b in parts)
        + "</table><p class='note'>Contributions through the final norm's scale frozen at "
        f"{result.scale:.4g} (its value on this prompt), so the parts add up to the logit. "
        "Direct effects only: a head that acts by changing what later layers read shows up "
        "in those layers.</p>"
    )
    top_table = (
        "<table><tr><th>part</th><th>contribution</th></tr>"
        + "".join(f"<tr><td>{esc(n)}</td><td>{v:+.4f}</td></tr>" for n, v in top)
        + "</table>"
    )
    page = html_page(
        f"Direct logit attribution to {what}",
        [
            ("Sum check", summary),
            ("Largest contributions", top_table),
            ("Picture", img_tag(png, "direct logit attribution")),
        ],
        data={
            "prompt": args.prompt,
            "target": t_text,
            "against": None if against is None else tok.decode([against]),
            "heads": result.heads.tolist(),
            "mlps": result.mlps.tolist(),
            "embed": result.embed,
            "logit": result.logit,
        },
    )
    out = out_dir(args)
    png_path = write_bytes(out / "attribution.png", png)
    html_path = write_text(out / "attribution.html", page)

    print(f"direct logit attribution to {what} at the last position:")
    print(table([[n, f"{v:+.4f}"] for n, v in top], ["part", "contribution"]))
    print(
        f"embed {result.embed:+.4f} + heads {float(result.heads.sum()):+.4f} + MLPs "
        f"{float(result.mlps.sum()):+.4f} = {result.total:+.4f} (the model's: {result.logit:+.4f})"
    )
    print(f"wrote {png_path} and {html_path}")
    if args.json:
        emit_json(
            {
                "png": png_path,
                "html": html_path,
                "target": t_text,
                "target_id": target,
                "against": None if against is None else tok.decode([against]),
                "against_id": against,
                "shape": list(result.heads.shape),
                "logit": round(result.logit, 6),
                "sum": round(result.total, 6),
                "embed": round(result.embed, 6),
                "heads_total": round(float(result.heads.sum()), 6),
                "mlps_total": round(float(result.mlps.sum()), 6),
                "top": [{"part": n, "value": round(v, 6)} for n, v in top],
            }
        )
    return 0
