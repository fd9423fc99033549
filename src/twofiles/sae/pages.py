"""The feature dashboards as files: one self-contained page per feature, an index, the numbers.

What it owns: turning `Dashboards` (sae/features.py) into DIR/features/{i}.html, index.html and
features.json, written as a whole (built beside the old set, then swapped in); the histogram and
density plots. What it leaves to others: the numbers (sae/features.py), the page frame and
escaping (inspect/render.py).
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from twofiles.inspect.render import esc, html_page, img_tag, show_token
from twofiles.sae.features import Context, Dashboards, Feature, hist_edges


def _strip(c: Context, scale: float) -> str:
    """A context as a row of tokens shaded by the feature's activation (relative to `scale`, the
    feature's maximum), the firing token outlined."""
    spans = []
    for j, (t, v) in enumerate(zip(c.tokens, c.acts, strict=True)):
        a = min(max(v / scale, 0.0), 1.0) if scale > 0 else 0.0
        outline = "; outline: 2px solid #1d1d1f" if j == c.mark else ""
        spans.append(
            f'<span class="tok" style="background: rgba(230, 85, 13, {a:.3f}){outline}" '
            f'title="{esc(f"{v:.4g}")}">{esc(show_token(t))}</span>'
        )
    return "<div>" + "".join(spans) + "</div>"


def _contexts_table(contexts: Sequence[Context], scale: float) -> str:
    if not contexts:
        return "<p class='note'>none</p>"
    rows = "".join(f"<tr><td>{c.value:.3g}</td><td>{_strip(c, scale)}</td></tr>" for c in contexts)
    return f"<table><tr><th>activation</th><th>context</th></tr>{rows}</table>"


def _hist_png(counts: Sequence[int], title: str) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from twofiles.plots import png_bytes

    edges = [10**e for e in hist_edges()]
    fig, ax = plt.subplots(figsize=(6.4, 2.6))
    ax.stairs(counts, edges, fill=True, color="#e6550d")
    ax.set_xscale("log")
    used = [i for i, c in enumerate(counts) if c]
    if used:  # the bins that hold firings, a bin either side
        ax.set_xlim(edges[max(used[0] - 1, 0)], edges[min(used[-1] + 2, len(edges) - 1)])
    ax.set_xlabel("activation (log scale; first and last bins hold everything beyond them)")
    ax.set_ylabel("firings")
    ax.set_title(title)
    return png_bytes(fig)


def _density_png(density: Sequence[float]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from twofiles.plots import png_bytes

    alive = [math.log10(d) for d in density if d > 0]
    fig, ax = plt.subplots(figsize=(6.4, 2.6))
    ax.hist(alive, bins=40, color="#3182bd")
    ax.set_xlabel("log10 feature density (fraction of tokens it fires on)")
    ax.set_ylabel("features")
    dead = len(density) - len(alive)
    ax.set_title(f"{len(alive)} features fired, {dead} never did")
    return png_bytes(fig)


def _token_table(pairs: Sequence[tuple[str, float]]) -> str:
    rows = "".join(f"<tr><td>{_tok(t)}</td><td>{v:+.3f}</td></tr>" for t, v in pairs)
    return f"<table>{rows}</table>"


def feature_page(d: Dashboards, f: Feature) -> str:
    scale = f.max if f.max > 0 else 1.0
    facts = (
        "<table>"
        f"<tr><th>density</th><td>{f.density:.3%} of {d.tokens:,} tokens ({f.firings:,} firings)</td></tr>"
        f"<tr><th>max activation</th><td>{f.max:.4g}</td></tr>"
        f"<tr><th>mean when firing</th><td>{f.mean:.4g}</td></tr>"
        f"<tr><th>hook</th><td>{esc(d.hook_name)}</td></tr>"
        f"<tr><th>model</th><td>{esc(d.model)}</td></tr>"
        "</table><p><a href='index.html'>all features</a></p>"
    )
    bands = "".join(
        f"<h3>quantiles {b.lo_q:g}-{b.hi_q:g} of its firings (activation {b.lo:.3g} to {b.hi:.3g})</h3>"
        + _contexts_table(b.contexts, scale)
        for b in reversed(f.bands)
    )
    logits = (
        "<p class='note'>The decoder direction times the final norm's weight, through the "
        "unembedding: the direct effect on the next-token logits, as if added just before the "
        "final norm.</p><table><tr><th>promoted</th><th>suppressed</th></tr><tr><td>"
        + _token_table(f.promoted)
        + "</td><td>"
        + _token_table(f.suppressed)
        + "</td></tr></table>"
    )
    hist = img_tag(
        _hist_png(f.hist, f"feature {f.index}: {f.firings:,} firings"), "activation histogram"
    )
    sections = [
        ("Summary", facts),
        (f"Top activating contexts ({len(f.top)})", _contexts_table(f.top, scale)),
        ("Samples at lower activations", bands or "<p class='note'>none</p>"),
        ("Activation histogram", hist + f"<p>density {f.density:.4%}</p>"),
        ("Tokens it promotes and suppresses", logits),
    ]
    return html_page(f"Feature {f.index}", sections, data=f.to_dict())


def index_page(d: Dashboards) -> str:
    order = sorted(d.features, key=lambda f: -(f.density if d.order == "density" else f.max))
    rows = "".join(
        f"<tr><td><a href='{f.index}.html'>{f.index}</a></td><td>{f.density:.3%}</td>"
        f"<td>{f.max:.3g}</td>"
        f"<td>{''.join(_top_token(f))}</td>"
        f"<td>{' '.join(_tok(t) for t, _ in f.promoted[:5])}</td></tr>"
        for f in order
    )
    dead = sum(1 for x in d.density if x == 0)
    facts = (
        f"<p>{d.d_sae:,} features at <b>{esc(d.hook_name)}</b> of {esc(d.model)}; "
        f"{d.tokens:,} tokens in {d.windows:,} windows of {d.context}; {dead:,} features never "
        f"fired. Sorted by {esc(d.order)}.</p>"
    )
    table = (
        "<table><tr><th>feature</th><th>density</th><th>max</th><th>top token</th>"
        f"<th>promotes</th></tr>{rows}</table>"
    )
    return html_page(
        "SAE features",
        [
            ("Summary", facts + img_tag(_density_png(d.density), "feature density histogram")),
            (f"Features ({len(d.features)})", table),
        ],
    )


def _tok(text: str) -> str:
    return f"<span class='tok' style='background: #f5f5f7'>{esc(show_token(text))}</span>"


def _top_token(f: Feature) -> list[str]:
    if not f.top or not f.top[0].tokens:
        return []
    c = f.top[0]
    return [_tok(c.tokens[c.mark])]


def write_dashboards(d: Dashboards, out_dir: str | os.PathLike[str]) -> Path:
    """Write index.html, {i}.html and features.json into `out_dir` as a whole: built beside it,
    then swapped in, so a reader never sees half a set of pages."""
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    old = out.with_name(f".{out.name}.{os.getpid()}.old")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        for f in d.features:
            (tmp / f"{f.index}.html").write_text(feature_page(d, f), encoding="utf-8")
        (tmp / "index.html").write_text(index_page(d), encoding="utf-8")
        (tmp / "features.json").write_text(json.dumps(d.to_dict()), encoding="utf-8")
        if out.exists():
            out.rename(old)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not out.exists():
            old.rename(out)
        raise
    shutil.rmtree(old, ignore_errors=True)
    return out
