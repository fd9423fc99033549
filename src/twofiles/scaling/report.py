"""The sweep's report: SWEEP/report.md and its PNGs, from sweep.json, results.jsonl and fit.json.

What it owns: the four figures (loss against compute with the frontier, the isoFLOP curves with
their minima, the fitted surface with the points, the held-out prediction) and the markdown
(the points, our constants beside Chinchilla's, Besiroglu et al.'s and Kaplan's, what differs).
What it leaves to others: the numbers (scaling.fit, scaling.runner).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from twofiles.scaling.fit import law, read_fit
from twofiles.scaling.plan import read_sweep
from twofiles.scaling.runner import read_results

PLOTS = (
    "scaling_frontier.png",
    "scaling_isoflop.png",
    "scaling_surface.png",
    "scaling_heldout.png",
)


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _size_colors(rows: list[dict[str, Any]]) -> dict[int, Any]:
    plt = _plt()
    depths = sorted({int(r["depth"]) for r in rows})
    cmap = plt.get_cmap("viridis")
    return {d: cmap(i / max(len(depths) - 1, 1)) for i, d in enumerate(depths)}


def plot_frontier(rows: list[dict[str, Any]], fit: dict[str, Any], path: Path) -> Path:
    """Loss against training compute (the FLOPs spent: 6 x matmul parameters x D, whatever N the
    fit counts), one line per size; the frontier is the lower envelope."""
    from twofiles.plots import save_png

    plt = _plt()
    key = fit["n_key"]
    colors = _size_colors(rows)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for depth, color in colors.items():
        rs = sorted(
            (r for r in rows if r["depth"] == depth and not r.get("heldout")),
            key=lambda r: r["tokens"],
        )
        if rs:
            c = [r["flops"] for r in rs]
            ax.plot(
                c,
                [r["val_loss"] for r in rs],
                "o-",
                color=color,
                label=f"depth {depth} (N {rs[0][key]:,})",
            )
    pts = sorted((r["flops"], r["val_loss"]) for r in rows if not r.get("heldout"))
    frontier, best = [], math.inf
    for c, loss in pts:
        if loss < best:
            frontier.append((c, loss))
            best = loss
    ax.plot(*zip(*frontier, strict=True), "k--", lw=2, alpha=0.6, label="frontier", zorder=4)
    for r in rows:
        if r.get("heldout"):
            ax.plot(r["flops"], r["val_loss"], "r*", ms=14, label=f"held out {r['name']}")
    ax.set_xscale("log")
    ax.set_xlabel("training compute 6ND (FLOPs; N = parameters in matmuls)")
    ax.set_ylabel("held-out loss (nats/token)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return save_png(fig, path)


def plot_isoflop(fit: dict[str, Any], path: Path) -> Path:
    from twofiles.plots import save_png

    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    curves = fit.get("isoflop", [])
    cmap = plt.get_cmap("plasma")
    for i, c in enumerate(curves):
        color = cmap(i / max(len(curves) - 1, 1))
        ns = [p["n"] for p in c["points"]]
        ax.plot(ns, [p["loss"] for p in c["points"]], "o", color=color)
        x = np.linspace(math.log(min(ns)), math.log(max(ns)), 50)
        k2, k1, k0 = c["parabola"]
        ax.plot(np.exp(x), k2 * x**2 + k1 * x + k0, "-", color=color, label=f"C {c['flops']:.1e}")
        if "n_opt" in c:
            ax.plot(c["n_opt"], c["loss_opt"], "x" if c["inside"] else "+", color="k", ms=9)
    ax.set_xscale("log")
    ax.set_xlabel(f"N ({fit['n_counts']} parameters)")
    ax.set_ylabel("held-out loss (nats/token)")
    ax.set_title("isoFLOP curves (x: minimum inside the sizes measured)")
    if curves:
        ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return save_png(fig, path)


def plot_surface(rows: list[dict[str, Any]], fit: dict[str, Any], path: Path) -> Path:
    """Contours of the fitted L(N, D), the points coloured by their loss, the compute-optimal line."""
    from twofiles.plots import save_png

    plt = _plt()
    key = fit["n_key"]
    ns = np.array([r[key] for r in rows], dtype=float)
    ds = np.array([r["tokens"] for r in rows], dtype=float)
    n_grid = np.logspace(math.log10(ns.min()) - 0.3, math.log10(ns.max()) + 0.5, 80)
    d_grid = np.logspace(math.log10(ds.min()) - 0.3, math.log10(ds.max()) + 0.7, 80)
    nn, dd = np.meshgrid(n_grid, d_grid)
    z = law(fit["theta"], nn, dd)
    fig, ax = plt.subplots(figsize=(7, 5))
    cs = ax.contour(nn, dd, z, levels=14, cmap="viridis")
    ax.clabel(cs, fontsize=7, fmt="%.2f")
    sc = ax.scatter(
        ns, ds, c=[r["val_loss"] for r in rows], cmap="viridis", edgecolors="k", zorder=3
    )
    fig.colorbar(sc, ax=ax, label="measured loss (nats/token)")
    for r in rows:
        if r.get("heldout"):
            ax.plot(r[key], r["tokens"], "r*", ms=15, zorder=4)
    c = fit["law"]
    if c["alpha"] > 0 and c["beta"] > 0:
        g = (c["alpha"] * c["A"] / (c["beta"] * c["B"])) ** (1 / (c["alpha"] + c["beta"]))
        # from N = G (C/6)^a and D = (C/6)^b / G: D = G^(-1) (N / G)^(b/a)
        d_line = (n_grid / g) ** (c["b_exp"] / c["a_exp"]) / g
        ax.plot(n_grid, d_line, "r--", lw=1, label="compute-optimal N, D")
        ax.legend(fontsize=8, loc="upper left")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(n_grid[0], n_grid[-1])
    ax.set_ylim(d_grid[0], d_grid[-1])
    ax.set_xlabel(f"N ({fit['n_counts']} parameters)")
    ax.set_ylabel("D (training tokens)")
    ax.set_title("fitted L(N, D) = E + A/N^alpha + B/D^beta")
    return save_png(fig, path)


def plot_heldout(rows: list[dict[str, Any]], fit: dict[str, Any], path: Path) -> Path:
    """Predicted against measured loss for every point; the held-out one starred."""
    from twofiles.plots import save_png

    plt = _plt()
    key = fit["n_key"]
    fig, ax = plt.subplots(figsize=(5.5, 5))
    meas = [r["val_loss"] for r in rows]
    pred = [float(law(fit["theta"], r[key], r["tokens"])) for r in rows]
    colors = _size_colors(rows)
    ax.scatter(meas, pred, c=[colors[int(r["depth"])] for r in rows], edgecolors="k")
    lo, hi = min(meas + pred), max(meas + pred)
    ax.plot([lo, hi], [lo, hi], "k-", lw=0.8)
    ax.fill_between(
        [lo, hi],
        [lo * 0.98, hi * 0.98],
        [lo * 1.02, hi * 1.02],
        color="gray",
        alpha=0.2,
        label="±2%",
    )
    if h := fit.get("heldout"):
        ax.plot(
            h["loss"],
            h["pred"],
            "r*",
            ms=16,
            label=f"held out {h['name']}: {100 * h['rel_err']:+.2f}%",
        )
        if h.get("pred_interval"):
            ax.errorbar(
                h["loss"],
                h["pred"],
                yerr=[[h["pred"] - h["pred_interval"][0]], [h["pred_interval"][1] - h["pred"]]],
                color="r",
            )
    ax.set_xlabel("measured loss (nats/token)")
    ax.set_ylabel("fitted law's prediction")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return save_png(fig, path)


def _fmt_ci(fit: dict[str, Any], k: str, fmt: str) -> str:
    ci = fit.get("intervals", {}).get(k)
    v = format(fit["law"][k], fmt)
    return f"{v} [{format(ci[0], fmt)}, {format(ci[1], fmt)}]" if ci else v


def markdown(sweep: Any, rows: list[dict[str, Any]], fit: dict[str, Any]) -> str:
    ref = fit["references"]
    ch, be = ref["chinchilla"], ref["besiroglu"]
    recipe = sweep.recipe
    done = {r["name"] for r in rows}
    missing = [p.name for p in sweep.points if p.name not in done]
    lines = [
        "# Scaling laws on this machine",
        "",
        f"Recipe: preset `{recipe['preset']}` (vocab {recipe['vocab_size']}, batch {recipe['batch_size']} x "
        f"seq {recipe['seq_len']}, {recipe['optim'].get('optimizer')} with a {recipe['optim'].get('schedule')} "
        f"schedule decayed to the end of each run, {recipe.get('dtype', 'fp32')}); every point an ordinary "
        "`twofiles pretrain` run of a fixed number of steps. Loss: nats per token on the held-out plays "
        f"(x {fit['bpb_per_nat']:.4f} = bits per byte).",
        "",
        f"{len(rows)} of {len(sweep.points)} points finished"
        + (f"; not run: {', '.join(missing)}" if missing else "")
        + ".",
        "",
        f"## The fitted law (N = {fit['n_counts']} parameters, {fit['points']} points)",
        "",
        "L(N, D) = E + A/N^alpha + B/D^beta, fitted as Hoffmann et al. (2022, approach 3): Huber loss "
        f"(delta {fit['fit']['huber_delta']}) on log L, L-BFGS-B from the best of the paper's "
        f"{fit['fit']['starts']:,} starting points; 95% intervals from {fit['fit']['bootstrap']} bootstrap refits "
        "(points resampled)."
        + (
            f" Runs shorter than {fit['min_steps']} steps are left out (`--min-steps`)."
            if fit.get("min_steps")
            else ""
        ),
        "",
        "| constant | ours | Chinchilla (2022) | Besiroglu et al. (2024) |",
        "| --- | --- | --- | --- |",
        f"| E | {_fmt_ci(fit, 'E', '.3f')} | {ch['E']} | {be['E']} |",
        f"| A | {_fmt_ci(fit, 'A', '.4g')} | {ch['A']} | {be['A']} |",
        f"| B | {_fmt_ci(fit, 'B', '.4g')} | {ch['B']} | {be['B']} |",
        f"| alpha | {_fmt_ci(fit, 'alpha', '.3f')} | {ch['alpha']} | {be['alpha']} |",
        f"| beta | {_fmt_ci(fit, 'beta', '.3f')} | {ch['beta']} | {be['beta']} |",
        f"| N_opt ~ C^a: a = beta/(alpha+beta) | {_fmt_ci(fit, 'a_exp', '.3f')} | "
        f"{ch['beta'] / (ch['alpha'] + ch['beta']):.3f} | {be['beta'] / (be['alpha'] + be['beta']):.3f} |",
        "",
        f"Kaplan et al. (2020) fit a different form, L(N) = (N_c/N)^alpha_N and L(D) = (D_c/D)^alpha_D, "
        f"with N without embeddings: alpha_N = {ref['kaplan']['alpha_N']}, alpha_D = {ref['kaplan']['alpha_D']} "
        "(their exponents of the whole loss, not of its reducible part, so not comparable with ours one to one).",
        "",
        "What differs: our losses are nats per token of a 4096-token vocabulary on Shakespeare's held-out "
        "plays, theirs of a 32K vocabulary on MassiveText, so E, A and B are in other units; our N runs from "
        "~10^4 to ~10^6.5 (theirs 7x10^7 to 1.6x10^10), where the output head of a 4096 vocabulary is a large "
        "share of every model (which is why the N count moves the exponents); the grid stays within one "
        f"epoch of the corpus's {sweep.train_tokens:,} training tokens, so no point sees repeated data; "
        "and our shortest runs (20 steps) are still in the warm-up's transient.",
        "",
        f"Fit quality: rmse of log L {fit['fit']['rmse_log']:.4f}, worst point "
        f"{100 * fit['fit']['max_rel_err']:.2f}%.",
        "",
    ]
    if h := fit.get("heldout"):
        iv = h.get("pred_interval") or [float("nan")] * 2
        lines += [
            "## The held-out point",
            "",
            f"{h['name']} (N {h['n']:,}, D {h['tokens']:,}), not in the fit: measured {h['loss']:.4f}, "
            f"predicted **{h['pred']:.4f}** (95% [{iv[0]:.4f}, {iv[1]:.4f}]): error "
            f"**{100 * h['rel_err']:+.2f}%**.",
            "",
            "![held-out](scaling_heldout.png)",
            "",
        ]
    s = fit.get("isoflop_summary", {})
    lines += ["## IsoFLOP curves (approach 2)", ""]
    if "n_opt" in s:
        lines += [
            f"A parabola in log N at each of {s['budgets']} compute budgets (losses interpolated in log D "
            f"between each size's measured budgets); {s['minima_inside']} minima fall inside the sizes "
            f"measured. N_opt ~ C^{s['n_opt']['p']:.3f}, D_opt ~ C^{s['d_opt']['p']:.3f}.",
            "",
            "| C (FLOPs) | tokens per parameter at the minimum |",
            "| --- | --- |",
            *[f"| {t['flops']:.2e} | {t['ratio']:.1f} |" for t in s["tokens_per_param"]],
            "",
        ]
    else:
        lines += ["Too few isoFLOP minima inside the sizes measured for power laws.", ""]
    lines += ["![isoFLOP](scaling_isoflop.png)", ""]
    if b := fit.get("budget"):
        x, m = b["best"], b["best"]["model"]
        lines += [
            f"## The compute-optimal model for {b['budget_s']:.0f} s of training here",
            "",
            f"Tokens per second from {fit['throughput']['source']}: seconds per token = "
            f"{fit['throughput']['c0']:.3g} + FLOPs per token / {fit['throughput']['flops_per_s']:.3g}"
            + (f", scaled x{b['speed_scale']:g}" if b["speed_scale"] != 1 else "")
            + ".",
            "",
            f"Best: depth {x['depth']} (dim {m['dim']}, {m['n_layers']} layers, {m['n_heads']} heads, hidden "
            f"{m['hidden_dim']}; N {x[fit['n_key']]:,}), {x['tokens']:,.0f} tokens ({x['steps']} steps) at "
            f"{x['tokens_per_s']:,.0f} tokens/s: predicted {x['loss']:.3f} nats/token, "
            f"~{x['loss'] * fit['bpb_per_nat']:.3f} bits/byte; {b['tokens_per_param']:.1f} tokens per parameter.",
            "",
            "| depth | N | tokens/s | tokens | predicted loss |",
            "| --- | --- | --- | --- | --- |",
            *[
                f"| {r['depth']} | {r[fit['n_key']]:,} | {r['tokens_per_s']:,.0f} | {r['tokens']:,.0f} | {r['loss']:.3f} |"
                for r in b["table"][:10]
            ],
            "",
        ]
    lines += [
        "## Loss against compute",
        "",
        "![frontier](scaling_frontier.png)",
        "",
        "## The fitted surface",
        "",
        "![surface](scaling_surface.png)",
        "",
        "## Points",
        "",
        "| point | N non-emb | N all | tokens | loss (nats/token) | bits/byte | tokens/s | wall s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
        *[
            f"| {r['name']}{' (held out)' if r.get('heldout') else ''} | {r['n_nonembed']:,} | {r['n_all']:,} | "
            f"{r['tokens']:,} | {r['val_loss']:.4f} | {r['val_bpb']:.4f} | {r['tokens_per_s']:,.0f} | {r['wall_s']:.0f} |"
            for r in rows
        ],
        "",
    ]
    return "\n".join(lines)


def write_report(sweep_dir: Path) -> tuple[Path, list[Path]]:
    from twofiles.paths import atomic_write_bytes

    sweep = read_sweep(sweep_dir)
    fit = read_fit(sweep_dir)
    rows = read_results(sweep_dir)
    pngs = [
        plot_frontier(rows, fit, sweep_dir / PLOTS[0]),
        plot_isoflop(fit, sweep_dir / PLOTS[1]),
        plot_surface(rows, fit, sweep_dir / PLOTS[2]),
        plot_heldout(rows, fit, sweep_dir / PLOTS[3]),
    ]
    path = sweep_dir / "report.md"
    atomic_write_bytes(path, markdown(sweep, rows, fit).encode())
    return path, pngs
