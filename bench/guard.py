"""The input guards' cost and the classifier's quality: scan latency per input for the rules
(with decode-and-rescan), the classifier, and both, one input at a time (as a chat turn scans)
and in batches of 64 (as `twofiles guard scan` does); the configurations alternate within each
repetition so machine noise hits them alike. Also prints the shipped classifier's held-out
precision, recall, F1 and AUC (from its metadata, written by scripts/build_guard_classifier.py)
and each configuration's flag rate and, for labelled input, precision / recall / FPR.

    python bench/guard.py                                  # 200 lines of the labelled set, 3 reps
    python bench/guard.py --file attacks.jsonl --field text --reps 3 --json bench/results/guard.json
    python bench/guard.py -n 100 --reps 2 --threads 1      # one torch thread (a busy machine)

The default inputs are a seeded sample of the guard's own labelled set (the classifier was
fitted on part of it: its quality there is optimistic, use --file for an honest set); latency
does not depend on that.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

CONFIGS = ("input", "classifier", "input,classifier")


def read(path: Path, field: str, n: int, seed: int) -> list[tuple[str, int | None]]:
    """A seeded sample of `n` (text, label) rows, read as `twofiles guard scan` reads them."""
    from twofiles.cli.guard import read_rows

    rows = [(text, label) for _, text, label in read_rows(str(path), field)]
    random.Random(seed).shuffle(rows)
    return rows[:n]


def quality(flags: list[bool], labels: list[int | None]) -> dict:
    pairs = [(f, y) for f, y in zip(flags, labels) if y is not None]
    out = {"flag_rate": round(sum(flags) / max(1, len(flags)), 4)}
    if pairs:
        tp = sum(f and y for f, y in pairs)
        fp = sum(f and not y for f, y in pairs)
        fn = sum(not f and y for f, y in pairs)
        tn = len(pairs) - tp - fp - fn
        out |= {
            "precision": round(tp / (tp + fp), 4) if tp + fp else None,
            "recall": round(tp / (tp + fn), 4) if tp + fn else None,
            "fpr": round(fp / (fp + tn), 4) if fp + tn else None,
        }
    return out


def main() -> None:
    from twofiles.guard import Guard, GuardConfig, parse_guards
    from twofiles.guard.classifier import LABELLED_FILE, load_classifier

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--file", type=Path, default=LABELLED_FILE)
    ap.add_argument("--field", default="text")
    ap.add_argument("-n", type=int, default=200, help="inputs (a seeded sample)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    ap.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch intra-op threads for the embedder (default: torch's own choice)",
    )
    args = ap.parse_args()
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)

    rows = read(args.file, args.field, args.n, args.seed)
    texts, labels = [t for t, _ in rows], [y for _, y in rows]
    guards = {c: Guard.from_config(GuardConfig(guards=parse_guards(c))) for c in CONFIGS}
    for g in guards.values():  # warm-up: first-call costs (regex compile, torch kernels)
        g.scan_many(texts[:8])
    single: dict[str, list[float]] = {c: [] for c in CONFIGS}
    batched: dict[str, list[float]] = {c: [] for c in CONFIGS}
    flags: dict[str, list[bool]] = {}
    for _ in range(args.reps):
        for c in CONFIGS:
            g = guards[c]
            t0 = time.perf_counter()
            verdicts = [g.scan(t) for t in texts]
            single[c].append(1000 * (time.perf_counter() - t0) / len(texts))
            t0 = time.perf_counter()
            for i in range(0, len(texts), 64):
                g.scan_many(texts[i : i + 64])
            batched[c].append(1000 * (time.perf_counter() - t0) / len(texts))
            flags[c] = [v.flagged for v in verdicts]

    clf = load_classifier()
    held_out = clf.metadata["metrics"]["test"]
    cpu = platform.processor() or platform.machine()
    import torch

    print(
        f"{len(texts)} inputs from {args.file}, {args.reps} reps, {os.cpu_count()} CPUs ({cpu}), "
        f"torch threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f}"
    )
    print(
        f"classifier held-out test split (n={held_out['n']}, threshold {clf.threshold:.2f}): "
        f"precision {held_out['precision']:.3f} recall {held_out['recall']:.3f} "
        f"F1 {held_out['f1']:.3f} AUC {held_out['auc']:.4f} FPR {held_out['fpr']:.3f}"
    )
    print(f"{'guards':18} {'ms/input (1 at a time)':>24} {'ms/input (batch 64)':>20}  quality")
    results = {}
    for c in CONFIGS:
        q = quality(flags[c], labels)
        s, b = statistics.median(single[c]), statistics.median(batched[c])
        results[c] = {"ms_single": round(s, 3), "ms_batched": round(b, 3), **q}
        print(f"{c:18} {s:24.2f} {b:20.2f}  {q}")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                {"inputs": len(texts), "file": str(args.file), "held_out": held_out, **results},
                indent=1,
            )
            + "\n",
            "utf-8",
        )


if __name__ == "__main__":
    main()
