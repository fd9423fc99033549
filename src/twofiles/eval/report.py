"""The report card: a run directory's report.md, rebuilt from what the run left on disk, and a
side-by-side comparison of several runs.

What it owns: reading a run directory and writing its report. A run directory may hold:

    run.json            what only the producer knew: title, description, stage timings, wall time,
                        budget, hardware, a data summary, samples, headline numbers, extra
                        sections as Markdown (write_run_info)
    config.json         the resolved training config
    metrics.jsonl       training and evaluation records (loss curves, final val_bpb)
    loss.png            the loss curves
    model.safetensors   its provenance (steps, tokens, val_bpb, runtime) read from the header only
    eval.json           benchmark results (`twofiles eval MODEL --out RUN/eval.json`, or the speedrun's)

Any of them may be missing; the report shows what is there. What it leaves to others: producing
runs (speedrun, train/*), running benchmarks (eval/runner.py), drawing loss curves (train/plots.py).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from twofiles.errors import BadInputError

RUN_INFO = "run.json"
EVAL_RESULTS = "eval.json"
REPORT = "report.md"

# Headline numbers, in the order shown: key -> (label, format)
HEADLINE: dict[str, tuple[str, str]] = {
    "val_bpb": ("validation bits per byte (held-out text)", "**{:.4f}**"),
    "val_loss_before": ("held-out loss before finetuning (nats/token)", "{:.4f}"),
    "val_loss": ("validation loss (nats/token)", "{:.4f}"),
    "wall_seconds": ("wall time, whole run", "{:.1f} s"),
    "base_wall_seconds": ("wall time, base model (the budgeted part)", "{:.1f} s"),
    "budget_s": ("time budget", "{:.0f} s"),
    "train_seconds": ("training time", "{:.1f} s"),
    "steps": ("steps", "{:,}"),
    "tokens": ("tokens trained on", "{:,}"),
    "target_tokens": ("assistant tokens trained on", "{:,}"),
    "tokens_per_second": ("training throughput", "{:,.0f} tokens/s"),
    "params": ("parameters", "{:,}"),
    "trainable_params": ("parameters trained", "{:,}"),
    "peak_memory_mb": ("peak memory", "{:,.0f} MB"),
    "achieved_flops": ("model FLOP/s achieved", "{:.3g}"),
    "peak_flops": (
        "matmul peak measured at start (a busy machine measures a lower peak)",
        "{:.3g} FLOP/s",
    ),
    "mfu": ("MFU", "{:.0%}"),
    "model_path": ("model", "{}"),
}


@dataclass
class RunSummary:
    path: Path
    title: str
    description: str = ""
    numbers: dict[str, Any] = field(default_factory=dict)  # headline numbers (HEADLINE keys first)
    stages: dict[str, float] = field(default_factory=dict)
    hardware: str = ""
    data: str = ""
    samples: list[dict[str, str]] = field(default_factory=list)  # {"prompt", "text"}
    sample_settings: str = ""
    sections: list[dict[str, str]] = field(
        default_factory=list
    )  # the producer's own sections: {"title", "markdown"}
    evals: list[dict[str, Any]] = field(default_factory=list)  # TaskResult dicts
    eval_model: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    curves: dict[str, list[tuple[float, float]]] = field(
        default_factory=dict
    )  # "val_bpb" -> [(tokens, value)]
    has_loss_png: bool = False


def write_run_info(run_dir: str | Path, info: dict[str, Any]) -> Path:
    """Store what only the producer of a run knows, for the report to use now and later."""
    from twofiles.artifact import atomic_write_bytes

    path = Path(run_dir) / RUN_INFO
    atomic_write_bytes(path, json.dumps(info, indent=1, default=str).encode())
    return path


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BadInputError(f"not valid JSON: {e}", path=str(path)) from None


def _read_metrics(path: Path) -> list[dict[str, Any]]:
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise BadInputError(f"not valid JSON: {e.msg}", path=str(path), line=n) from None
    return out


def read_run(run_dir: str | Path) -> RunSummary:
    """Everything a report shows, from the files in `run_dir`."""
    d = Path(run_dir)
    if not d.is_dir():
        raise BadInputError("not a directory", path=str(d))
    known = [RUN_INFO, "config.json", "metrics.jsonl", "model.safetensors", EVAL_RESULTS]
    if not any((d / name).is_file() for name in known):
        raise BadInputError(
            f"not a run directory: none of {', '.join(known)} is there", path=str(d)
        )
    s = RunSummary(path=d, title=f"Run report: {d.name}")
    numbers: dict[str, Any] = {}
    if (d / "model.safetensors").is_file():
        from twofiles.artifact import read_metadata

        try:
            prov = json.loads(read_metadata(d / "model.safetensors").get("provenance", "{}"))
        except (BadInputError, json.JSONDecodeError):
            prov = {}
        numbers.update(
            {
                k: prov[k]
                for k in ("val_bpb", "val_loss", "steps", "tokens", "train_seconds")
                if k in prov
            }
        )
        s.hardware = str(prov.get("runtime", ""))
        splits = prov.get("data_splits") or {}
        if splits:
            s.data = "; ".join(
                f"{k}: {v.get('documents', '?')} documents, {v.get('tokens', 0):,} tokens, {v.get('bytes', 0):,} bytes"
                for k, v in splits.items()
            )
    if (d / "metrics.jsonl").is_file():
        records = _read_metrics(d / "metrics.jsonl")
        evals = [r for r in records if "val_bpb" in r]
        train = [r for r in records if "loss" in r and "val_bpb" not in r]
        if evals:
            numbers.setdefault("val_bpb", evals[-1]["val_bpb"])
            numbers.setdefault("val_loss", evals[-1].get("val_loss"))
            s.curves["val_bpb"] = [(r.get("tokens", r["step"]), r["val_bpb"]) for r in evals]
        if train:
            numbers.setdefault("steps", train[-1].get("step"))
            s.curves["loss"] = [(r.get("tokens", r["step"]), r["loss"]) for r in train]
    if (d / "config.json").is_file():
        s.config = _read_json(d / "config.json")
    if (d / RUN_INFO).is_file():
        info = _read_json(d / RUN_INFO)
        s.title = info.get("title", s.title)
        s.description = info.get("description", "")
        numbers.update(info.get("numbers", {}))
        s.stages = info.get("stages", {})
        s.hardware = info.get("hardware", s.hardware)
        s.data = info.get("data", s.data)
        s.samples = info.get("samples", [])
        s.sample_settings = info.get("sample_settings", "")
        s.sections = info.get("sections", [])
    if (d / EVAL_RESULTS).is_file():
        doc = _read_json(d / EVAL_RESULTS)
        s.evals = doc.get("results", [])
        s.eval_model = doc.get("model", "")
    s.numbers = {k: v for k, v in numbers.items() if v is not None}
    s.has_loss_png = (d / "loss.png").is_file()
    return s


def _fmt(key: str, value: Any) -> str:
    fmt = HEADLINE.get(key, ("", "{}"))[1]
    try:
        if isinstance(value, float) and not math.isfinite(value):
            return "n/a"
        return fmt.format(value)
    except (ValueError, TypeError):
        return str(value)


def _eval_table(evals: Sequence[dict[str, Any]]) -> list[str]:
    lines = [
        "| task | metric | value | ± | n | shots |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for r in evals:
        err = r.get("metrics", {}).get("stderr")
        pm = f"{err:.3f}" if isinstance(err, (int, float)) and math.isfinite(err) else ""
        lines.append(
            f"| {r['task']} | {r['metric']} | {r['value']:.4f} | {pm} | {r['n']} | {r.get('shots', 0)} |"
        )
    return lines


def render_report(s: RunSummary) -> str:
    lines = [f"# {s.title}", ""]
    if s.description:
        lines += [s.description, ""]
    if s.numbers:
        lines += ["| result | value |", "| --- | --- |"]
        keys = [k for k in HEADLINE if k in s.numbers] + [k for k in s.numbers if k not in HEADLINE]
        lines += [f"| {HEADLINE.get(k, (k, ''))[0]} | {_fmt(k, s.numbers[k])} |" for k in keys]
        lines.append("")
    if s.evals:
        lines += ["## Benchmarks", ""]
        if s.eval_model:
            lines += [
                f"`twofiles eval` on `{s.eval_model}` (greedy; accuracy is exact match or the likeliest choice).",
                "",
            ]
        lines += _eval_table(s.evals) + [""]
    if s.stages:
        lines += [
            "## Stages",
            "",
            "| stage | seconds |",
            "| --- | --- |",
            *[f"| {k} | {v:.1f} |" for k, v in s.stages.items()],
            "",
        ]
    if s.data:
        lines += ["## Data", "", s.data, ""]
    if s.hardware:
        lines += ["## Hardware", "", s.hardware, ""]
    if s.has_loss_png:
        lines += ["## Loss curve", "", "![loss](loss.png)", ""]
    if s.samples:
        lines += ["## Samples" + (f" ({s.sample_settings})" if s.sample_settings else ""), ""]
        for smp in s.samples:
            lines += ["```", smp.get("prompt", "") + smp.get("text", ""), "```", ""]
    for sec in s.sections:
        lines += [f"## {sec.get('title', '')}", "", sec.get("markdown", ""), ""]
    if s.config:
        lines += ["## Config", "", "```json", json.dumps(s.config, indent=2), "```", ""]
    return "\n".join(lines)


def write_report(run_dir: str | Path) -> Path:
    """(Re)build RUN_DIR/report.md from the files in the run directory."""
    from twofiles.artifact import atomic_write_bytes

    s = read_run(run_dir)
    path = s.path / REPORT
    atomic_write_bytes(path, render_report(s).encode("utf-8"))
    return path


def render_comparison(runs: Sequence[RunSummary]) -> str:
    """Several runs side by side: headline numbers, then benchmark scores, one column per run."""
    names = [r.path.name or str(r.path) for r in runs]
    if len(set(names)) < len(names):
        names = [str(r.path) for r in runs]
    lines = [
        "# Runs compared",
        "",
        "| | " + " | ".join(names) + " |",
        "| --- |" + " ---: |" * len(runs),
    ]
    keys = [k for k in HEADLINE if any(k in r.numbers for r in runs)]
    keys += sorted({k for r in runs for k in r.numbers} - set(HEADLINE))
    for k in keys:
        lines.append(
            f"| {HEADLINE.get(k, (k, ''))[0]} | "
            + " | ".join(_fmt(k, r.numbers[k]) if k in r.numbers else "" for r in runs)
            + " |"
        )
    tasks = list(dict.fromkeys(e["task"] for r in runs for e in r.evals))
    for t in tasks:
        cells = []
        metric = ""
        for r in runs:
            e = next((e for e in r.evals if e["task"] == t), None)
            cells.append("" if e is None else f"{e['value']:.4f}")
            metric = metric or ("" if e is None else e["metric"])
        lines.append(f"| {t} ({metric}) | " + " | ".join(cells) + " |")
    lines.append("")
    return "\n".join(lines)


def plot_comparison(
    runs: Sequence[RunSummary], png_path: str | Path, curve: str = "val_bpb"
) -> Path:
    """One curve (validation bits per byte by default) per run against tokens trained on."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from twofiles.plots import save_png

    fig, ax = plt.subplots(figsize=(7, 4))
    for r in runs:
        pts = r.curves.get(curve)
        if pts:
            ax.plot(
                [p[0] for p in pts],
                [p[1] for p in pts],
                marker="o",
                markersize=3,
                label=r.path.name or str(r.path),
            )
    ax.set_xlabel("tokens")
    ax.set_ylabel(curve)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return save_png(fig, png_path, dpi=120)
