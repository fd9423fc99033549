"""`twofiles report RUN_DIR [RUN_DIR ...]`: the report card.

One run: rebuild RUN_DIR/report.md from what the run left on disk (run.json, config.json,
metrics.jsonl, loss.png, the model's provenance, eval.json). Several runs: a side-by-side
comparison (headline numbers and benchmark scores, one column per run) printed to stdout, or
written with --out; --png draws their validation curves together.
"""

from __future__ import annotations

import argparse

from twofiles.cli.common import add_json_flag, emit_json


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "runs", nargs="+", metavar="RUN_DIR", help="run directories (speedrun, pretrain, ...)"
    )
    p.add_argument(
        "--out", default=None, help="comparison: write the Markdown here instead of stdout"
    )
    p.add_argument(
        "--png",
        default=None,
        help="comparison: validation bits per byte of every run against tokens, in one plot",
    )
    add_json_flag(p)


def run(args: argparse.Namespace) -> int:
    from twofiles.eval.report import plot_comparison, read_run, render_comparison, write_report

    if len(args.runs) == 1:
        path = write_report(args.runs[0])
        print(f"report: {path}")
        if args.json:
            s = read_run(args.runs[0])
            emit_json(
                {
                    "report": str(path),
                    "numbers": s.numbers,
                    "evals": {e["task"]: e["value"] for e in s.evals},
                }
            )
        return 0
    runs = [read_run(r) for r in args.runs]
    text = render_comparison(runs)
    if args.out:
        from twofiles.artifact import atomic_write_bytes

        atomic_write_bytes(args.out, text.encode("utf-8"))
        print(f"comparison: {args.out}")
    else:
        print(text)
    if args.png:
        plot_comparison(runs, args.png)
    if args.json:
        emit_json(
            {
                "runs": [
                    {
                        "path": str(r.path),
                        "numbers": r.numbers,
                        "evals": {e["task"]: e["value"] for e in r.evals},
                    }
                    for r in runs
                ],
                "out": args.out,
                "png": args.png,
            }
        )
    return 0
