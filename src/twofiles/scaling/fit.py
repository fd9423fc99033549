"""Fitting a sweep: the Chinchilla parametric law, isoFLOP parabolas, the held-out prediction and
the compute-optimal model for a wall-clock budget on this machine.

What it owns: approach 3 of Hoffmann et al. (2022), L(N, D) = E + A/N^alpha + B/D^beta fitted as
the paper did (Huber loss, delta 1e-3, on log L written as a log-sum-exp of a - alpha log N,
b - beta log D and e; L-BFGS from the paper's grid of starting points) with bootstrap intervals;
approach 2 (a parabola of loss against log N at each compute budget, its minimum N_opt(C), then
power laws for N_opt(C) and D_opt(C)); the held-out point's prediction and error; a throughput
model (seconds per token against FLOPs per token) and the budget optimum; SWEEP/fit.json.
What it leaves to others: the points' results (scaling.runner), plots (scaling.report).
"""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from twofiles.errors import BadInputError, TwofilesError
from twofiles.scaling.plan import N_COUNTS, model_config, param_counts, read_sweep, shape

FIT_FILE = "fit.json"
HUBER_DELTA = 1e-3  # Hoffmann et al. 2022, appendix D.2
# The paper's grid of initial values (appendix D.2): 5 x 5 x 5 x 6 x 6 = 4,500 starts.
GRID_ALPHA = GRID_BETA = (0.0, 0.5, 1.0, 1.5, 2.0)
GRID_E = (-1.0, -0.5, 0.0, 0.5, 1.0)
GRID_A = GRID_B = (0.0, 5.0, 10.0, 15.0, 20.0, 25.0)
# L-BFGS runs from the grid's starts with the lowest objective, not from all 4,500: one run takes
# ~0.1-1 s on a busy CPU (~100 iterations), so all of them would take an hour, and the far starts
# (where the Huber loss is linear and flat) end in the same optimum or a worse one. A bootstrap
# refit starts from the full fit's optimum and the best grid start on its own resample.
FIT_STARTS = 16
BOOTSTRAP_STARTS = 1
MIN_POINTS = 6  # five constants: fewer points than this and the fit is not a fit

# Published constants (nats per token; N all parameters for Chinchilla and its replication).
REFERENCES = {
    "chinchilla": {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28},
    "besiroglu": {"E": 1.8172, "A": 482.01, "B": 2085.43, "alpha": 0.3478, "beta": 0.3658},
    # Kaplan et al. 2020: L(N) = (N_c/N)^alpha_N and L(D) = (D_c/D)^alpha_D, N without embeddings
    "kaplan": {"alpha_N": 0.076, "alpha_D": 0.095},
}


# --- approach 3: the parametric law ------------------------------------------------------------


def law(theta: np.ndarray | list[float], n: Any, d: Any) -> Any:
    """L(N, D) with theta = (a, b, e, alpha, beta), A = exp(a), B = exp(b), E = exp(e)."""
    a, b, e, alpha, beta = theta
    return np.exp(e) + np.exp(a - alpha * np.log(n)) + np.exp(b - beta * np.log(d))


def _objective(theta: np.ndarray, log_n: np.ndarray, log_d: np.ndarray, log_l: np.ndarray):
    """Sum of Huber(LSE(a - alpha log N, b - beta log D, e) - log L) and its gradient."""
    a, b, e, alpha, beta = theta
    t = np.stack([a - alpha * log_n, b - beta * log_d, np.full_like(log_n, e)])  # [3, P]
    m = t.max(axis=0)
    w = np.exp(t - m)
    s = w.sum(axis=0)
    r = m + np.log(s) - log_l
    p = w / s  # softmax weights: d LSE / d t
    absr = np.abs(r)
    loss = np.where(absr <= HUBER_DELTA, 0.5 * r**2, HUBER_DELTA * (absr - 0.5 * HUBER_DELTA))
    g = np.clip(r, -HUBER_DELTA, HUBER_DELTA)  # Huber'(r)
    grad = np.array(
        [
            (g * p[0]).sum(),
            (g * p[1]).sum(),
            (g * p[2]).sum(),
            (g * p[0] * -log_n).sum(),
            (g * p[1] * -log_d).sum(),
        ]
    )
    return float(loss.sum()), grad


def _grid() -> np.ndarray:
    return np.array(list(itertools.product(GRID_A, GRID_B, GRID_E, GRID_ALPHA, GRID_BETA)))


def _grid_values(starts: np.ndarray, log_n, log_d, log_l) -> np.ndarray:
    """The objective at every start at once (to rank them)."""
    a, b, e, al, be = (starts[:, i : i + 1] for i in range(5))
    t = np.stack([a - al * log_n, b - be * log_d, np.broadcast_to(e, (len(starts), len(log_n)))])
    r = np.logaddexp.reduce(t, axis=0) - log_l
    absr = np.abs(r)
    h = np.where(absr <= HUBER_DELTA, 0.5 * r**2, HUBER_DELTA * (absr - 0.5 * HUBER_DELTA))
    return h.sum(axis=1)


def fit_law(
    n: np.ndarray, d: np.ndarray, loss: np.ndarray, *, starts: np.ndarray | None = None
) -> tuple[np.ndarray, float]:
    """The best L-BFGS-B optimum over `starts` (default the paper's grid): (theta, objective)."""
    try:
        from scipy.optimize import minimize
    except ImportError:
        raise TwofilesError(
            "the scaling fit needs scipy: pip install 'twofiles[scaling]'"
        ) from None

    log_n, log_d, log_l = np.log(n), np.log(d), np.log(loss)
    if starts is None:
        grid = _grid()
        starts = grid[np.argsort(_grid_values(grid, log_n, log_d, log_l))[:FIT_STARTS]]
    best, best_f = None, math.inf
    for x0 in starts:
        # tight tolerances: Besiroglu et al. (2024) traced part of the paper's odd constants to
        # L-BFGS stopping early
        r = minimize(
            _objective,
            x0,
            args=(log_n, log_d, log_l),
            jac=True,
            method="L-BFGS-B",
            options={"maxiter": 600, "ftol": 1e-13, "gtol": 1e-11},
        )
        if np.isfinite(r.fun) and r.fun < best_f:
            best, best_f = r.x, float(r.fun)
    if best is None:
        raise TwofilesError("the law's fit did not converge from any starting point")
    return np.asarray(best), best_f


def constants(theta: np.ndarray) -> dict[str, float]:
    a, b, e, alpha, beta = (float(x) for x in theta)
    with np.errstate(over="ignore"):  # a degenerate bootstrap refit may send a constant to inf
        big = [float(np.exp(x)) for x in (e, a, b)]
    out = {"E": big[0], "A": big[1], "B": big[2], "alpha": alpha, "beta": beta}
    # compute-optimal allocation under C = 6ND (Hoffmann et al. eq. 4): N_opt = G (C/6)^a_exp
    s = alpha + beta
    out["a_exp"] = beta / s if s > 0 else float("nan")  # N_opt ~ C^a_exp
    out["b_exp"] = alpha / s if s > 0 else float("nan")  # D_opt ~ C^b_exp
    return out


def optimal_allocation(c: dict[str, float], flops: float) -> tuple[float, float]:
    """(N_opt, D_opt) minimising the law at compute C = 6ND."""
    alpha, beta, A, B = c["alpha"], c["beta"], c["A"], c["B"]
    if alpha <= 0 or beta <= 0:
        return float("nan"), float("nan")
    g = (alpha * A / (beta * B)) ** (1 / (alpha + beta))
    n = g * (flops / 6) ** (beta / (alpha + beta))
    return n, flops / (6 * n)


def bootstrap(
    n: np.ndarray, d: np.ndarray, loss: np.ndarray, theta: np.ndarray, rounds: int, seed: int
) -> np.ndarray:
    """Refits on resampled points (with replacement): [rounds, 5] thetas."""
    rng = np.random.default_rng(seed)
    grid = _grid()
    out = []
    for _ in range(rounds):
        idx = rng.integers(0, len(n), len(n))
        if len(np.unique(idx)) < 5:
            continue
        ln, ld, ll = np.log(n[idx]), np.log(d[idx]), np.log(loss[idx])
        order = np.argsort(_grid_values(grid, ln, ld, ll))[:BOOTSTRAP_STARTS]
        th, _ = fit_law(n[idx], d[idx], loss[idx], starts=np.vstack([theta, grid[order]]))
        out.append(th)
    return np.array(out).reshape(-1, 5)


def intervals(thetas: np.ndarray, level: float = 0.95) -> dict[str, list[float]]:
    """Percentile intervals of every constant (and the derived exponents) over the bootstrap."""
    if len(thetas) == 0:
        return {}
    rows = [constants(t) for t in thetas]
    lo, hi = 50 * (1 - level), 100 - 50 * (1 - level)
    return {
        k: [
            float(np.nanpercentile([r[k] for r in rows], lo)),
            float(np.nanpercentile([r[k] for r in rows], hi)),
        ]
        for k in rows[0]
    }


# --- approach 2: isoFLOP parabolas -------------------------------------------------------------


def isoflop_curves(
    rows: list[dict[str, Any]], n_key: str, budgets: list[float] | None = None
) -> list[dict[str, Any]]:
    """For each compute budget C (= 6ND): the loss of every size at D = C / 6N (the isoFLOP
    points' own losses, or interpolated in log D between the size's measured budgets, never
    extrapolated), a parabola in log N through them, and its minimum."""
    by_size: dict[int, list[dict[str, Any]]] = {}
    for r in rows:
        by_size.setdefault(int(r[n_key]), []).append(r)
    iso = sorted({float(r["isoflop"]) for r in rows if r.get("isoflop")})
    if budgets is None:
        if iso:
            budgets = iso
        else:  # budgets where at least three sizes' measured D ranges cross C = 6ND
            cs = [6 * r[n_key] * r["tokens"] for r in rows]
            spans = [(6 * n * min(r["tokens"] for r in rs), 6 * n * max(r["tokens"] for r in rs))
                     for n, rs in by_size.items()]  # fmt: skip
            dense = np.logspace(math.log10(min(cs)), math.log10(max(cs)), 41)
            budgets = [float(c) for c in dense if sum(lo <= c <= hi for lo, hi in spans) >= 3]
            budgets = budgets[:: max(1, len(budgets) // 8)]
    curves = []
    for c in budgets:
        pts = []
        for n, rs in sorted(by_size.items()):
            if iso and c in iso:
                hits = [r for r in rs if r.get("isoflop") == c]
                if hits:
                    pts.append((n, hits[0]["tokens"], hits[0]["val_loss"]))
                continue
            rs = sorted(rs, key=lambda r: r["tokens"])
            d = c / (6 * n)
            ds = np.log([r["tokens"] for r in rs])
            if len(rs) >= 2 and ds[0] <= math.log(d) <= ds[-1]:
                loss = float(np.interp(math.log(d), ds, [r["val_loss"] for r in rs]))
                pts.append((n, d, loss))
        if len(pts) < 3:
            continue
        x = np.log([p[0] for p in pts])
        y = np.array([p[2] for p in pts])
        k2, k1, k0 = np.polyfit(x, y, 2)
        curve: dict[str, Any] = {
            "flops": c,
            "points": [{"n": p[0], "tokens": p[1], "loss": p[2]} for p in pts],
            "parabola": [float(k2), float(k1), float(k0)],
        }
        if k2 > 0:
            x_opt = -k1 / (2 * k2)
            curve["n_opt"] = float(math.exp(x_opt))
            curve["d_opt"] = c / (6 * curve["n_opt"])
            curve["loss_opt"] = float(k0 - k1**2 / (4 * k2))
            # a minimum outside the sizes measured is an extrapolation: kept, flagged, not fitted
            curve["inside"] = bool(x.min() <= x_opt <= x.max())
        curves.append(curve)
    return curves


def power_law(xs: list[float], ys: list[float]) -> dict[str, float]:
    """y = k x^p by least squares in log-log."""
    p, logk = np.polyfit(np.log(xs), np.log(ys), 1)
    return {"k": float(math.exp(logk)), "p": float(p)}


def isoflop_summary(curves: list[dict[str, Any]]) -> dict[str, Any]:
    good = [c for c in curves if c.get("inside")]
    out: dict[str, Any] = {"budgets": len(curves), "minima_inside": len(good)}
    if len(good) >= 2:
        cs = [c["flops"] for c in good]
        out["n_opt"] = power_law(cs, [c["n_opt"] for c in good])  # N_opt = k C^p
        out["d_opt"] = power_law(cs, [c["d_opt"] for c in good])
        out["tokens_per_param"] = [
            {"flops": c["flops"], "ratio": c["d_opt"] / c["n_opt"]} for c in good
        ]
    return out


# --- throughput and the budget optimum ---------------------------------------------------------


def flops_per_token(recipe: dict[str, Any], depth: int) -> float:
    return model_config(recipe, depth).flops_per_token(int(recipe["seq_len"]))


def throughput_model(rows: list[dict[str, Any]], recipe: dict[str, Any]) -> dict[str, float]:
    """Seconds per training token = c0 + c1 * FLOPs per token (a fixed per-token overhead plus
    compute at a steady rate), least squares over the points, each weighted by its tokens."""
    x = np.array([flops_per_token(recipe, int(r["depth"])) for r in rows])
    y = np.array([1.0 / r["tokens_per_s"] for r in rows])
    w = np.sqrt(np.array([r["tokens"] for r in rows], dtype=float))
    (c1, c0), *_ = np.linalg.lstsq(np.stack([x * w, w], axis=1), y * w, rcond=None)
    return {
        "c0": float(max(c0, 0.0)),
        "c1": float(c1),
        "flops_per_s": float(1 / c1) if c1 > 0 else float("nan"),
    }


def reference_run(run_dir: Path, recipe: dict[str, Any]) -> dict[str, Any]:
    """A finished pretraining run measured where the budget will be spent (config.json's model,
    run.json's tokens/s): what scales the sweep's speed to that machine."""
    from twofiles.model import ModelConfig

    try:
        cfg = json.loads((Path(run_dir) / "config.json").read_text(encoding="utf-8"))
        nums = json.loads((Path(run_dir) / "run.json").read_text(encoding="utf-8"))["numbers"]
        model = ModelConfig.from_dict(cfg["model"])
        tok_s = float(nums["tokens_per_second"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise BadInputError(
            f"not a finished pretraining run (config.json + run.json): {e}", path=str(run_dir)
        ) from None
    seq = int(cfg.get("seq_len", recipe["seq_len"]))
    return {"run": str(run_dir), "tokens_per_s": tok_s, "flops_per_token": model.flops_per_token(seq),
            "model": {k: getattr(model, k) for k in ("dim", "n_layers", "n_heads", "hidden_dim")},
            "params": param_counts(model), "tokens": float(nums.get("tokens", 0)),
            "val_loss": float(nums.get("val_loss", "nan"))}  # fmt: skip


def budget_optimum(
    theta: list[float],
    n_key: str,
    recipe: dict[str, Any],
    speed: dict[str, float],
    budget_s: float,
    *,
    speed_scale: float = 1.0,
    max_depth: int = 16,
) -> dict[str, Any]:
    """The dial position minimising L(N, tokens_per_s(N) x budget) on this machine."""
    tps = int(recipe["batch_size"] * recipe["seq_len"] * recipe.get("grad_accum", 1))
    table: list[dict[str, Any]] = []
    for depth in range(1, max_depth + 1):
        fpt = flops_per_token(recipe, depth)
        tok_s = speed_scale / (speed["c0"] + speed["c1"] * fpt)
        tokens = tok_s * budget_s
        counts = param_counts(model_config(recipe, depth))
        loss = float(law(theta, counts[n_key], tokens))
        table.append(
            {"depth": depth, "model": shape(depth), **counts, "tokens_per_s": tok_s,
             "tokens": tokens, "steps": int(tokens // tps), "loss": loss}
        )  # fmt: skip
    best = min(table, key=lambda r: r["loss"])
    return {
        "budget_s": budget_s,
        "speed_scale": speed_scale,
        "best": best,
        "table": table,
        "tokens_per_param": best["tokens"] / best[n_key],
    }


# --- the whole fit -----------------------------------------------------------------------------


def fit_sweep(
    sweep_dir: Path,
    *,
    n_counts: str = "non-embedding",
    bootstrap_rounds: int = 200,
    budget_s: float | None = None,
    speed_scale: float = 1.0,
    speed_ref: Path | None = None,
    seed: int = 0,
    min_steps: int = 0,
    write: bool = True,
) -> dict[str, Any]:
    from twofiles.scaling.runner import read_results

    sweep = read_sweep(sweep_dir)
    if n_counts not in N_COUNTS:
        raise TwofilesError(f"--n-counts: one of {', '.join(N_COUNTS)}, got {n_counts!r}")
    n_key = N_COUNTS[n_counts]
    rows = read_results(sweep_dir)
    if not rows:
        raise BadInputError(
            "no results yet: run the points first (`twofiles scaling run`)", path=str(sweep_dir)
        )
    planned = {p.name for p in sweep.points}
    for r in rows:
        if r["name"] not in planned:
            raise BadInputError(f"result for {r['name']!r}, a point the plan does not have",
                                path=str(Path(sweep_dir) / "results.jsonl"))  # fmt: skip
    train = [r for r in rows if not r.get("heldout") and r["steps"] >= min_steps]
    if len(train) < MIN_POINTS:
        raise BadInputError(
            f"{len(train)} finished point(s) to fit; the law has five constants: need at least "
            f"{MIN_POINTS} (run more points with `twofiles scaling run`)",
            path=str(sweep_dir),
        )
    n = np.array([r[n_key] for r in train], dtype=float)
    d = np.array([r["tokens"] for r in train], dtype=float)
    loss = np.array([r["val_loss"] for r in train], dtype=float)
    theta, obj = fit_law(n, d, loss)
    c = constants(theta)
    pred = law(theta, n, d)
    boots = (
        bootstrap(n, d, loss, theta, bootstrap_rounds, seed)
        if bootstrap_rounds
        else np.zeros((0, 5))
    )
    doc: dict[str, Any] = {
        "n_counts": n_counts,
        "n_key": n_key,
        "points": len(train),
        "min_steps": min_steps,
        "law": c,
        "theta": [float(x) for x in theta],
        "fit": {
            "objective": obj,
            "rmse_log": float(np.sqrt(np.mean((np.log(pred) - np.log(loss)) ** 2))),
            "max_rel_err": float(np.max(np.abs(pred / loss - 1))),
            "bootstrap": len(boots),
            "huber_delta": HUBER_DELTA,
            "starts": len(GRID_ALPHA) * len(GRID_BETA) * len(GRID_E) * len(GRID_A) * len(GRID_B),
        },
        "intervals": intervals(boots),
        "bootstrap_thetas": boots.tolist(),
        "residuals": [
            {"name": r["name"], "loss": r["val_loss"], "pred": float(p)}
            for r, p in zip(train, pred, strict=True)
        ],
        "references": REFERENCES,
    }
    # nats/token -> bits/byte on the held-out plays: the same text for every point, so one ratio
    ratios = [r["val_bpb"] / r["val_loss"] for r in rows if r["val_loss"] > 0]
    doc["bpb_per_nat"] = float(np.median(ratios))
    held = [r for r in rows if r.get("heldout")]
    if held:
        h = held[0]
        p = float(law(theta, h[n_key], h["tokens"]))
        bp = [float(law(t, h[n_key], h["tokens"])) for t in boots]
        doc["heldout"] = {
            "name": h["name"],
            "n": h[n_key],
            "tokens": h["tokens"],
            "loss": h["val_loss"],
            "pred": p,
            "rel_err": p / h["val_loss"] - 1,
            "pred_interval": [float(np.percentile(bp, 2.5)), float(np.percentile(bp, 97.5))]
            if bp
            else [],
        }
    curves = isoflop_curves(train, n_key)
    doc["isoflop"] = curves
    doc["isoflop_summary"] = isoflop_summary(curves)
    if budget_s:
        speed = throughput_model([r for r in rows if r.get("tokens_per_s")], sweep.recipe)
        doc["throughput"] = {**speed, "source": "the sweep's points (their measured tokens/s)"}
        if speed_ref is not None:  # the sweep's speed against size, scaled to the reference run's
            ref = reference_run(speed_ref, sweep.recipe)
            speed_scale = ref["tokens_per_s"] * (speed["c0"] + speed["c1"] * ref["flops_per_token"])
            doc["throughput"]["reference"] = ref
            doc["throughput"]["source"] += f", scaled to {speed_ref}'s measured tokens/s"
            # the law's prediction for the reference run itself (another shape than the dial's)
            ref["pred_loss"] = float(law(doc["theta"], ref["params"][n_key], ref["tokens"]))
        doc["budget"] = budget_optimum(
            doc["theta"], n_key, sweep.recipe, speed, budget_s, speed_scale=speed_scale
        )
        doc["budget"]["law_allocation"] = dict(
            zip(
                ("n_opt", "d_opt"),
                optimal_allocation(
                    c, 6 * doc["budget"]["best"][n_key] * doc["budget"]["best"]["tokens"]
                ),
                strict=True,
            )
        )
    if write:
        from twofiles.paths import atomic_write_bytes

        atomic_write_bytes(Path(sweep_dir) / FIT_FILE, (json.dumps(doc, indent=1) + "\n").encode())
    return doc


def read_fit(sweep_dir: Path) -> dict[str, Any]:
    path = Path(sweep_dir) / FIT_FILE
    if not path.is_file():
        raise BadInputError("no fit.json: run `twofiles scaling fit` first", path=str(sweep_dir))
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        doc["law"]["E"]
        return doc
    except (ValueError, KeyError, TypeError) as e:
        raise BadInputError(f"not a scaling fit ({e})", path=str(path)) from None


def format_fit(doc: dict[str, Any]) -> str:
    c, iv = doc["law"], doc.get("intervals", {})
    lines = [f"L(N, D) = E + A/N^alpha + B/D^beta, N = {doc['n_counts']} parameters, "
             f"{doc['points']} points (held-out point excluded)"]  # fmt: skip
    for k in ("E", "A", "B", "alpha", "beta", "a_exp", "b_exp"):
        ci = iv.get(k)
        lines.append(
            f"  {k:<6} {c[k]:>12.4g}" + (f"   95% [{ci[0]:.4g}, {ci[1]:.4g}]" if ci else "")
        )
    f = doc["fit"]
    lines.append(f"  fit: rmse of log L {f['rmse_log']:.4f}, worst point {100 * f['max_rel_err']:.2f}%, "
                 f"{f['bootstrap']} bootstrap refits")  # fmt: skip
    if h := doc.get("heldout"):
        lines.append(f"held out {h['name']}: measured {h['loss']:.4f}, predicted {h['pred']:.4f} "
                     f"({100 * h['rel_err']:+.2f}%)")  # fmt: skip
    s = doc.get("isoflop_summary", {})
    if "n_opt" in s:
        lines.append(f"isoFLOP: N_opt ~ C^{s['n_opt']['p']:.3f}, D_opt ~ C^{s['d_opt']['p']:.3f} "
                     f"({s['minima_inside']} of {s['budgets']} minima inside the sizes measured)")  # fmt: skip
        for t in s["tokens_per_param"]:
            lines.append(f"  C {t['flops']:.2e}: {t['ratio']:.1f} tokens per parameter")
    if ref := doc.get("throughput", {}).get("reference"):
        lines.append(f"reference run {ref['run']}: {ref['tokens_per_s']:,.0f} tokens/s; its loss "
                     f"{ref['val_loss']:.4f}, the law predicts {ref['pred_loss']:.4f}")  # fmt: skip
    if b := doc.get("budget"):
        x = b["best"]
        m = x["model"]
        lines.append(
            f"budget {b['budget_s']:.0f}s: depth {x['depth']} (dim {m['dim']}, {m['n_layers']} layers, "
            f"{m['n_heads']} heads, hidden {m['hidden_dim']}), {x['tokens']:,.0f} tokens at "
            f"{x['tokens_per_s']:,.0f} tokens/s, predicted {x['loss']:.4f} nats/token "
            f"(~{x['loss'] * doc['bpb_per_nat']:.3f} bits/byte)"
        )
    return "\n".join(lines)
