"""`twofiles scaling plan|run|fit|report`: scaling laws measured on this machine.

twofiles scaling plan --out sweeps/cpu                 # 6 sizes x 4 token budgets + 1 held out
twofiles scaling run sweeps/cpu --jobs 1 --threads 1   # the missing points (resumes killed ones)
twofiles scaling run sweeps/cpu --print-commands       # one shell command per missing point
twofiles scaling fit sweeps/cpu --budget-s 290 --json  # Chinchilla fit, isoFLOP, held-out error
twofiles scaling report sweeps/cpu                     # report.md + PNGs
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from twofiles.cli.common import add_json_flag, emit_json


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(float(x)) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers, got {text!r}"
        ) from None


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers, got {text!r}"
        ) from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="scaling_cmd", metavar="CMD", required=True)
    p = sub.add_parser(
        "plan",
        help="write a sweep: model sizes x token budgets, each an ordinary pretraining run",
        description="Write SWEEP/sweep.json: the grid of points (sizes from the depth dial x token "
        "budgets, or isoFLOP budgets) and the recipe they share, plus one held-out larger point.",
    )
    p.add_argument("--out", required=True, metavar="SWEEP", help="the sweep directory")
    p.add_argument(
        "--data",
        default="builtin",
        help="builtin (prepare the built-in corpus into SWEEP/data) or a prepared data directory",
    )
    p.add_argument("--preset", default="cpu-5min", help="the recipe's preset (default cpu-5min)")
    p.add_argument(
        "--sizes", type=_ints, default=None, help="depths of the size dial (default 1,2,3,4,5,6)"
    )
    p.add_argument(
        "--tokens",
        type=_ints,
        default=None,
        help="token budgets D per size (default 20,50,125,320 steps of batch x seq)",
    )
    p.add_argument(
        "--isoflop",
        type=_floats,
        default=None,
        metavar="C1,C2,...",
        help="isoFLOP budgets instead of --tokens: each size at D = C / 6N",
    )
    p.add_argument(
        "--heldout",
        default=None,
        metavar="DEPTH:TOKENS",
        help="the larger point the fit never sees (default: one depth past the grid, middle budget)",
    )
    add_json_flag(p)

    r = sub.add_parser(
        "run",
        help="run the sweep's missing points (done ones skipped, killed ones resumed)",
        description="Run each missing point as a `twofiles pretrain` process; collect "
        "SWEEP/results.jsonl.",
    )
    r.add_argument(
        "sweep", metavar="SWEEP", help="the sweep directory (`twofiles scaling plan --out`)"
    )
    r.add_argument("--jobs", type=int, default=1, help="points at once (default 1)")
    r.add_argument(
        "--threads", type=int, default=0, help="CPU threads in all, split between the jobs"
    )
    r.add_argument(
        "--print-commands",
        action="store_true",
        help="print one shell command per missing point (for a scheduler) and run nothing",
    )
    add_json_flag(r)

    f = sub.add_parser(
        "fit",
        help="fit L(N, D) = E + A/N^alpha + B/D^beta, isoFLOP curves, the held-out prediction",
        description="Fit the Chinchilla law (approach 3) with bootstrap intervals and the isoFLOP "
        "parabolas (approach 2); predict the held-out point; write SWEEP/fit.json.",
    )
    f.add_argument("sweep", metavar="SWEEP", help="the sweep directory, its points run")
    f.add_argument(
        "--n-counts",
        choices=("non-embedding", "all", "matmul"),
        default="non-embedding",
        help="which parameters count as N: non-embedding (Kaplan's: no embedding, no output "
        "head), all (Chinchilla's), matmul (all but the embedding lookup)",
    )
    f.add_argument(
        "--bootstrap", type=int, default=200, help="bootstrap resamples (default 200; 0: none)"
    )
    f.add_argument(
        "--budget-s",
        type=float,
        default=None,
        help="also give the compute-optimal model for this many seconds of training here",
    )
    f.add_argument(
        "--speed-scale",
        type=float,
        default=1.0,
        help="multiply the sweep's measured tokens/s (e.g. the ratio of a quiet machine's speed "
        "to the busy sweep's) for --budget-s",
    )
    f.add_argument(
        "--speed-ref",
        default=None,
        metavar="RUN_DIR",
        help="a finished pretraining run measured on the machine the budget is for (e.g. a quiet "
        "speedrun): scales the sweep's tokens/s to its speed",
    )
    f.add_argument(
        "--min-steps", type=int, default=0, help="leave out points shorter than this from the fit"
    )
    f.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    add_json_flag(f)

    rep = sub.add_parser(
        "report",
        help="report.md and PNGs from the fit",
        description="Write SWEEP/report.md + PNGs.",
    )
    rep.add_argument(
        "sweep", metavar="SWEEP", help="the sweep directory, fitted (`twofiles scaling fit`)"
    )
    add_json_flag(rep)


def run(args: argparse.Namespace) -> int:
    return {"plan": _plan, "run": _run, "fit": _fit, "report": _report}[args.scaling_cmd](args)


def _plan(args: argparse.Namespace) -> int:
    from twofiles.errors import TwofilesError
    from twofiles.scaling import plan as pl
    from twofiles.scaling.runner import prepare_builtin, read_manifest

    out = Path(args.out)
    if (out / pl.SWEEP_FILE).exists():
        raise TwofilesError(f"{out} already holds a sweep: choose another --out, or remove it")
    if args.isoflop and args.tokens:
        raise TwofilesError("give --tokens or --isoflop, not both")
    from twofiles.presets import get_preset

    recipe = pl.recipe_from_preset(get_preset(args.preset))
    out.mkdir(parents=True, exist_ok=True)
    if args.data == "builtin":
        print(f"preparing the built-in corpus into {out / 'data'}...", file=sys.stderr)
        manifest = prepare_builtin(out, int(recipe["vocab_size"]))
        data = "data"
    else:
        manifest = read_manifest(Path(args.data))
        data = str(Path(args.data).resolve())
        recipe["vocab_size"] = int(manifest["vocab_size"])
    tps = recipe["batch_size"] * recipe["seq_len"] * recipe["grad_accum"]
    heldout = pl.parse_heldout(args.heldout, tps) if args.heldout else None
    sweep = pl.make_plan(
        recipe,
        data,
        sizes=args.sizes or pl.DEFAULT_SIZES,
        tokens=args.tokens,
        isoflop=args.isoflop or (),
        heldout=heldout,
        train_tokens=int(manifest["splits"]["train"]["tokens"]),
    )
    path = pl.write_sweep(out, sweep)
    grid = [p for p in sweep.points if not p.heldout]
    n = sorted(p.n_nonembed for p in grid)
    print(
        f"{path}: {len(grid)} points + 1 held out; recipe {recipe['preset']}, vocab {recipe['vocab_size']}"
    )
    print(
        f"  {'point':<10} {'shape':<22} {'N non-emb':>10} {'N all':>10} {'tokens D':>10} {'FLOPs':>9}"
    )
    for p in sweep.points:
        m = p.model
        shp = f"d{m['dim']} x{m['n_layers']} h{m['n_heads']} ff{m['hidden_dim']}"
        print(f"  {p.name:<10} {shp:<22} {p.n_nonembed:>10,} {p.n_all:>10,} {p.tokens:>10,} {p.flops:>9.2e}"
              + ("  (held out)" if p.heldout else ""))  # fmt: skip
    for note in sweep.notes:
        print(f"  note: {note}")
    if args.json:
        emit_json({"sweep": str(path), "points": len(grid), "heldout": sweep.points[-1].name,
                   "span_nonembed": n[-1] / n[0], "flops": sum(p.flops for p in sweep.points)})  # fmt: skip
    return 0


def _run(args: argparse.Namespace) -> int:
    from twofiles.errors import TwofilesError
    from twofiles.scaling.plan import read_sweep
    from twofiles.scaling.runner import point_command, point_state, run_sweep, shell_command

    if args.jobs < 1:
        raise TwofilesError(f"--jobs must be >= 1, got {args.jobs}")
    sweep_dir = Path(args.sweep)
    sweep = read_sweep(sweep_dir)
    if args.print_commands:
        n = 0
        for p in sweep.points:
            s = point_state(sweep_dir, p)
            if s.state == "done":
                continue
            cmd = point_command(
                sweep, sweep_dir, p, threads=args.threads, resume=s.state == "killed"
            )
            print(shell_command(cmd, s.run_dir))
            n += 1
        if args.json:
            emit_json({"commands": n})
        return 0
    summary = run_sweep(sweep, sweep_dir, jobs=args.jobs, threads=args.threads)
    print(
        f"{summary.done}/{summary.total} points done ({summary.ran} run now, {summary.skipped} "
        f"skipped) in {summary.wall_s:.0f}s; results in {sweep_dir / 'results.jsonl'}"
    )
    for f in summary.failed:
        print(f"  failed: {f['name']}: {f['log']}")
    if args.json:
        emit_json(summary.to_dict())
    return 1 if summary.failed else 0


def _fit(args: argparse.Namespace) -> int:
    from twofiles.scaling.fit import fit_sweep, format_fit

    doc = fit_sweep(
        Path(args.sweep),
        n_counts=args.n_counts,
        bootstrap_rounds=args.bootstrap,
        budget_s=args.budget_s,
        speed_scale=args.speed_scale,
        speed_ref=Path(args.speed_ref) if args.speed_ref else None,
        min_steps=args.min_steps,
        seed=args.seed,
    )
    print(format_fit(doc))
    if args.json:
        emit_json(_fit_summary(doc))
    return 0


def _fit_summary(doc: dict[str, Any]) -> dict[str, Any]:
    keep = ("n_counts", "points", "law", "intervals", "heldout", "isoflop_summary", "budget", "fit")
    return {k: doc[k] for k in keep if k in doc}


def _report(args: argparse.Namespace) -> int:
    from twofiles.scaling.report import write_report

    path, pngs = write_report(Path(args.sweep))
    print(f"wrote {path} ({len(pngs)} plots)")
    if args.json:
        emit_json({"report": str(path), "plots": [str(p) for p in pngs]})
    return 0
