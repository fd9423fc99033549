"""Red team: attack success per family, for each model, under no guard, each guard alone, and all.

Runs `twofiles redteam MODEL --suite builtin --guard each` for every --model (one after the
other, each in its own directory under --runs), then writes one Markdown table per model and its
PNG under --results: ASR per family with 95% Wilson intervals, overall ASR, leaks through tool
arguments, false refusals on the benign look-alikes, utility (held-out skills accuracy) and the
guards' own time per request. A run that has not finished (killed, or still going) is reported
from its results.partial.jsonl, with the counts it has: `--report-only` builds the tables from
the run directories without running anything.

    python bench/redteam.py --model smollm2 --model speedrun=/path/to/rl/model.safetensors \\
        --runs runs/redteam --results bench/results
    python bench/redteam.py --report-only --model smollm2 --runs runs/redteam

With --memo, a model's decoded rounds are kept across runs (`twofiles redteam --memo`): a run
stopped at the deadline and started again, or with more columns, decodes only what is new.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


def _label_and_model(spec: str) -> tuple[str, str]:
    label, sep, model = spec.partition("=")
    return (label, model) if sep else (Path(spec).stem if "/" in spec else spec, spec)


def read_records(run: Path) -> tuple[list[dict], list[dict], list[str], dict[str, Any], bool]:
    """(attack records, utility records, columns, meta, finished) of a run directory: its
    results when it finished, else what results.partial.jsonl holds so far (the attack in
    progress when it stopped, which may lack some columns, left out)."""
    done = run / "summary.json"
    if done.exists():
        meta = json.loads(done.read_text(encoding="utf-8"))

        def rows(name: str) -> list[dict]:
            text = (run / name).read_text(encoding="utf-8")
            return [json.loads(x) for x in text.splitlines() if x.strip()]

        return rows("results.jsonl"), rows("utility.jsonl"), meta["columns"], meta, True
    partial = run / "results.partial.jsonl"
    if not partial.exists():
        raise SystemExit(f"{run}: no summary.json and no results.partial.jsonl: not a red-team run")
    rows = [json.loads(x) for x in partial.read_text(encoding="utf-8").splitlines() if x.strip()]
    attacks = [r for r in rows if not r.get("utility")]
    useful = [r for r in rows if r.get("utility")]
    columns = list(dict.fromkeys(r["column"] for r in [*attacks, *useful]))
    have: dict[str, set[str]] = {}
    for r in attacks:
        have.setdefault(r["id"], set()).add(r["column"])
    attacks = [r for r in attacks if len(have[r["id"]]) == len(columns)]
    meta = {
        "attacks": len({r["id"] for r in attacks}),
        "utility_tasks": len(useful) // max(1, len(columns)),
    }
    return attacks, useful, columns, meta, False


def read_run(*runs: Path) -> tuple[dict[str, Any], dict[str, Any], bool]:
    """(summary, meta, finished) of one run directory, or of several runs of one model (say,
    the built-in families and a family added later) as one table."""
    from twofiles.redteam.report import summarise

    attacks: list[dict] = []
    useful: list[dict] = []
    columns: list[str] = []
    metas: list[dict[str, Any]] = []
    finished = True
    for run in runs:
        a, u, c, m, f = read_records(run)
        attacks += a
        useful += u
        columns += [x for x in c if x not in columns]
        metas.append(m)
        finished = finished and f
    summary = summarise(attacks, useful, columns)
    meta = dict(metas[0]) if len(metas) == 1 else {}
    meta["attacks"] = len({r["id"] for r in attacks})
    meta["utility_tasks"] = len(useful) // max(1, len(columns))
    if len(metas) > 1:
        meta["seconds"] = sum(float(m.get("seconds") or 0) for m in metas) or None
    return summary, meta, finished


def report(label: str, runs: list[Path], results: Path, command: str, wall: float | None) -> str:
    from twofiles.redteam.report import plot_asr, render_table

    summary, meta, finished = read_run(*runs)
    png = results / f"redteam_{label}.png"
    plot_asr(summary, png, title=f"attack success per family: {label}")
    state = "" if finished else " (PARTIAL: the run had not finished; counts are what it reached)"
    wall_s = meta.get("seconds", wall)
    lines = [
        f"### {label}{state}",
        "",
        f"`{command}`",
        "",
        f"{meta.get('attacks', '?')} attacks, {meta.get('utility_tasks', '?')} utility tasks"
        + (f"; wall time {wall_s / 60:.1f} min" if wall_s else "")
        + (f"; memo: {json.dumps(meta['memo'])}" if meta.get("memo") else ""),
        "",
        render_table(summary),
        "",
        f"![{label}]({png.name})",
        "",
    ]
    text = "\n".join(lines)
    (results / f"redteam_{label}.md").write_text(text, encoding="utf-8")
    return text


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="[LABEL=]MODEL",
        help="a model to attack (repeat for several); LABEL names its table and files",
    )
    ap.add_argument(
        "--flags",
        action="append",
        default=[],
        metavar="LABEL=FLAGS",
        help="more twofiles redteam flags for one model, e.g. speedrun='--describe-tools no'",
    )
    ap.add_argument("--suite", default="builtin")
    ap.add_argument("--guard", default="each")
    ap.add_argument("--utility", type=int, default=40)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--limit", type=int, default=None, help="attacks per family and label")
    ap.add_argument("--runs", default="runs/redteam", help="one run directory per model here")
    ap.add_argument(
        "--memo",
        default=None,
        metavar="PATH",
        help="twofiles redteam --memo for each model ({label} is replaced by the model's label)",
    )
    ap.add_argument("--results", default="bench/results", help="tables and PNGs go here")
    ap.add_argument("--report-only", action="store_true", help="tables from existing runs")
    ap.add_argument(
        "--combine",
        action="append",
        default=[],
        metavar="NAME=LABEL,LABEL",
        help="also one table of several runs of one model (e.g. the built-in families and gcg)",
    )
    args = ap.parse_args()

    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    extra: dict[str, list[str]] = {}
    for f in args.flags:
        label, _, flags = f.partition("=")
        extra.setdefault(label, []).extend(flags.split())
    for spec in args.model:
        label, model = _label_and_model(spec)
        run = Path(args.runs) / label
        cmd = [
            "twofiles",
            "redteam",
            model,
            "--suite",
            args.suite,
            "--guard",
            args.guard,
            "--utility",
            str(args.utility),
            "--max-tokens",
            str(args.max_tokens),
            "--out",
            str(run),
            "--json",
            *(["--limit", str(args.limit)] if args.limit else []),
            *(["--memo", args.memo.format(label=label)] if args.memo else []),
            *extra.get(label, []),
        ]
        wall = None
        if not args.report_only:
            t0 = time.perf_counter()
            rc = subprocess.call([sys.executable, "-m", "twofiles", *cmd[1:]])
            wall = time.perf_counter() - t0
            if rc != 0:
                print(f"{label}: twofiles redteam exited {rc}", file=sys.stderr)
        print(report(label, [run], results, " ".join(cmd), wall))
    for spec in args.combine:
        name, _, labels = spec.partition("=")
        runs = [Path(args.runs) / x.strip() for x in labels.split(",") if x.strip()]
        print(report(name, runs, results, f"the runs {labels} together", None))
    return 0


if __name__ == "__main__":
    sys.exit(main())
