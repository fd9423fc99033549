"""Quality per CPU-minute: validation bits per byte against wall time for a speedrun preset.

Runs the real speedrun (tokenizer -> data -> pretrain) with validation on a fixed slice of the
held-out plays every --eval-interval steps, then plots val_bpb against training wall time and
prints the table. The final point is the full held-out evaluation the speedrun reports.

    python bench/speedrun_quality.py --preset cpu-5min --out runs/bench-quality [--json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="cpu-5min")
    ap.add_argument("--out", default="runs/bench-quality")
    ap.add_argument("--eval-interval", type=int, default=40, help="steps between validation points")
    ap.add_argument("--png", default="bench/results/speedrun_quality.png")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    from twofiles.presets import get_preset
    from twofiles.speedrun import run_speedrun
    from twofiles.train.plots import read_metrics

    preset = get_preset(args.preset)
    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    res = run_speedrun(preset, out, overrides={"eval_interval": args.eval_interval}, progress=False)
    _, evals = read_metrics(out / "metrics.jsonl")
    Path(args.png).parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(out / "loss.png", args.png)
    print("| training seconds | tokens | val bits/byte |\n| --- | --- | --- |")
    for r in evals:
        print(
            f"| {r['time']:.0f} | {r['tokens']:,} | {r['val_bpb']:.4f}{' (full held-out set)' if r.get('final') else ''} |"
        )
    print(
        f"preset {preset.name}: val_bpb {res.val_bpb:.4f} in {res.wall_seconds:.1f}s wall; plot {args.png}",
        file=sys.stderr,
    )
    if args.json:
        print(
            json.dumps(
                {
                    "preset": preset.name,
                    "val_bpb": res.val_bpb,
                    "wall_seconds": res.wall_seconds,
                    "curve": [(r["time"], r["val_bpb"]) for r in evals],
                    "png": args.png,
                }
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
