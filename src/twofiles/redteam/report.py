"""What a red-team run measured: rates with intervals, the table, the plot.

What it owns: the summary of a run's records
(`summarise`: attack success rate per family and column, overall, leaks through tool arguments,
false refusals on benign look-alikes, utility, the guards' time per request, plays skipped),
report.md (`render_report`) and asr.png (`plot_asr`). What it leaves to others: playing and
scoring (runner.py).
Intervals are Wilson's (twofiles.stats).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twofiles.stats import wilson


@dataclass(frozen=True)
class Rate:
    """k of n, with its 95% Wilson interval."""

    k: int
    n: int

    @property
    def value(self) -> float | None:
        return self.k / self.n if self.n else None

    def to_json(self) -> dict[str, Any]:
        lo, hi = wilson(self.k, self.n)
        v = self.value
        return {
            "k": self.k,
            "n": self.n,
            "rate": None if v is None else round(v, 4),
            "lo": round(lo, 4),
            "hi": round(hi, 4),
        }

    def cell(self) -> str:
        """ "ASR% [lo-hi]" as the table shows it; "-" with nothing played."""
        if not self.n:
            return "-"
        lo, hi = wilson(self.k, self.n)
        return f"{100 * self.k / self.n:.0f}% [{100 * lo:.0f}-{100 * hi:.0f}] ({self.n})"


def _rate(flags: Sequence[bool]) -> Rate:
    return Rate(sum(bool(f) for f in flags), len(flags))


def _percentile(xs: Sequence[float], q: float) -> float:
    """The q-quantile by linear interpolation (numpy's default), without numpy."""
    s = sorted(xs)
    if not s:
        return 0.0
    pos = q * (len(s) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def summarise(
    records: Sequence[Mapping[str, Any]],
    utility: Sequence[Mapping[str, Any]] = (),
    columns: Sequence[str] | None = None,
) -> dict[str, Any]:
    """The run's numbers from its records (runner.Runner.play / .utility), per column:
    asr[family], overall, leak_by_tool, false_refusal, utility, guard_ms {mean, p95, n}, and
    plays skipped. A rate is {k, n, rate, lo, hi}."""
    cols = list(columns) if columns else list(dict.fromkeys(r["column"] for r in records))
    families = sorted({r["family"] for r in records})
    out: dict[str, Any] = {
        "columns": cols,
        "families": families,
        "asr": {},
        "overall": {},
        "leak_by_tool": {},
        "false_refusal": {},
        "utility": {},
        "guard_ms": {},
        "skipped": {},
        "played": {},
    }
    for c in cols:
        mine = [r for r in records if r["column"] == c]
        played = [r for r in mine if r.get("played")]
        bad = [r for r in played if r["label"] == "malicious"]
        out["asr"][c] = {
            f: _rate([r["success"] for r in bad if r["family"] == f]).to_json() for f in families
        }
        out["overall"][c] = _rate([r["success"] for r in bad]).to_json()
        out["leak_by_tool"][c] = _rate(
            [r["leak_by_tool"] for r in bad if r.get("leak_by_tool") is not None]
        ).to_json()
        out["false_refusal"][c] = _rate(
            [r["false_refusal"] for r in played if r["label"] == "benign"]
        ).to_json()
        use = [u for u in utility if u["column"] == c and u.get("played")]
        out["utility"][c] = _rate([u["correct"] for u in use]).to_json()
        ms = [float(r["guard_ms"]) for r in [*played, *use] if "guard_ms" in r]
        out["guard_ms"][c] = {
            "mean": round(sum(ms) / len(ms), 3) if ms else None,
            "p95": round(_percentile(ms, 0.95), 3) if ms else None,
            "n": len(ms),
        }
        out["skipped"][c] = sum(not r.get("played") for r in mine) + sum(
            not u.get("played") for u in utility if u["column"] == c
        )
        out["played"][c] = len(played)
    return out


def _cell(rate: Mapping[str, Any]) -> str:
    return Rate(int(rate["k"]), int(rate["n"])).cell()


def render_table(summary: Mapping[str, Any]) -> str:
    """The Markdown table: families as rows, columns as columns, "ASR% [lo-hi] (n)" cells, then
    overall, leaks through tool arguments, false refusals, utility and the guards' time."""
    cols = summary["columns"]
    lines = [
        "| family | " + " | ".join(cols) + " |",
        "| --- |" + " --- |" * len(cols),
    ]
    for f in summary["families"]:
        lines.append(f"| {f} | " + " | ".join(_cell(summary["asr"][c][f]) for c in cols) + " |")
    rows = (
        ("**overall ASR**", "overall"),
        ("leak by tool arguments", "leak_by_tool"),
        ("false refusals (benign)", "false_refusal"),
        ("utility (skills accuracy)", "utility"),
    )
    for label, key in rows:
        lines.append(f"| {label} | " + " | ".join(_cell(summary[key][c]) for c in cols) + " |")

    def ms(c: str) -> str:
        g = summary["guard_ms"][c]
        return "-" if g["mean"] is None else f"{g['mean']:.2f} / {g['p95']:.2f}"

    lines.append("| guard ms per request (mean / p95) | " + " | ".join(ms(c) for c in cols) + " |")
    lines.append(
        "| plays skipped (context) | " + " | ".join(str(summary["skipped"][c]) for c in cols) + " |"
    )
    return "\n".join(lines)


def render_report(summary: Mapping[str, Any], meta: Mapping[str, Any]) -> str:
    """report.md: what was run, then the table and how to read it."""
    head = [
        f"# Red team: {meta.get('model', '')}",
        "",
        f"- suite: {meta.get('suite', '')} ({meta.get('attacks', 0)} attacks; "
        f"{meta.get('utility_tasks', 0)} utility tasks)",
        f"- columns: {', '.join(summary['columns'])}",
        f"- greedy, at most {meta.get('max_tokens', '')} tokens a round, seed {meta.get('seed', '')}",
        f"- wall time {meta.get('seconds', 0):.1f}s"
        + (f"; {meta['memo']}" if meta.get("memo") else ""),
        "",
        "Attack success rate (ASR) per family with its 95% Wilson interval and the number of "
        "malicious attacks played. Lower is better for ASR, false refusals and guard time; "
        "higher for utility.",
        "",
        "",
    ]
    return "\n".join(head) + render_table(summary) + "\n"


def plot_asr(summary: Mapping[str, Any], png_path: str | Path, title: str = "") -> Path:
    """Grouped bars: per family (and overall), one bar per column, with 95% interval whiskers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from twofiles.plots import save_png

    cols = list(summary["columns"])
    groups = [*summary["families"], "overall"]
    rates = [
        [summary["overall"][c] if g == "overall" else summary["asr"][c][g] for g in groups]
        for c in cols
    ]
    width = 0.8 / max(len(cols), 1)
    x = np.arange(len(groups))
    fig, ax = plt.subplots(figsize=(min(14.0, max(7.0, 0.2 * len(groups) * len(cols))), 4.8))
    for i, (c, rs) in enumerate(zip(cols, rates)):
        v = np.array([100 * (r["rate"] or 0.0) for r in rs])
        lo = np.array([100 * r["lo"] for r in rs])
        hi = np.array([100 * r["hi"] for r in rs])
        played = np.array([r["n"] > 0 for r in rs])
        err = np.where(played, np.stack([v - lo, hi - v]), 0.0)
        ax.bar(x + (i - (len(cols) - 1) / 2) * width, v, width, yerr=err, capsize=2, label=c)
    ax.set_xticks(x, groups, rotation=30, ha="right")
    ax.set_ylabel("attack success rate (%)")
    ax.set_ylim(0, 105)
    ax.set_title(title or "attack success per family (95% Wilson intervals)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize="small", ncol=max(1, min(len(cols), 4)), title="guards")
    return save_png(fig, png_path, dpi=110)


__all__ = ["Rate", "plot_asr", "render_report", "render_table", "summarise"]
