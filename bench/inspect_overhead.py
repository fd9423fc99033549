"""What looking inside costs: run_with_cache against a plain forward, and the memory it keeps.

One prompt of `--tokens` tokens (512) of the built-in corpus on `--model` (smollm2), alternating
rounds of:
  plain      model(ids): what generate and eval run (model.py, no hook code at all)
  no hooks   run_with_hooks(model, ids): the hooked forward with nothing attached
  few        run_with_cache with three names (a layer's resid_post, attn pattern and mlp post)
  all        run_with_cache with every hook point
Each mode's peak resident memory is measured in a fresh process (`--rss`, Linux: the peak is
reset through /proc/self/clear_refs after the model is loaded, whose own peak is higher).

    .venv/bin/python bench/inspect_overhead.py [--model smollm2] [--tokens 512] [--rounds 5] [--threads 1] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

import torch

from twofiles.data.builtin import builtin_text
from twofiles.formats.resolve import resolve_model
from twofiles.inspect import hook_names, run_with_cache, run_with_hooks
from twofiles.runtime import cpu_identity

MODES = ("plain", "no hooks", "few", "all")


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024  # kB
    raise RuntimeError(f"no {field} in /proc/self/status")


def _few(n_layers: int) -> list[str]:
    mid = n_layers // 2
    return [
        f"blocks.{mid}.hook_resid_post",
        f"blocks.{mid}.attn.hook_pattern",
        f"blocks.{mid}.mlp.hook_post",
    ]


def _run(mode: str, loaded, ids: torch.Tensor) -> int:
    """One forward in `mode`; the bytes of activations it kept."""
    with torch.no_grad():
        if mode == "plain":
            loaded.model(ids)
            return 0
        if mode == "no hooks":
            run_with_hooks(loaded, ids)
            return 0
        names = None if mode == "all" else _few(loaded.model.config.n_layers)
        _, cache = run_with_cache(loaded, ids, names=names)
        return sum(t.numel() * t.element_size() for t in cache.values())


def _setup(model: str, tokens: int, threads: int):
    torch.set_num_threads(threads)
    loaded = resolve_model(model)
    text = builtin_text("val")[:20000]
    ids = torch.tensor([[loaded.tokenizer.bos_id, *loaded.tokenizer.encode(text)][:tokens]])
    return loaded, ids


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rss", default="", help=argparse.SUPPRESS)  # child: one mode's peak RSS
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    loaded, ids = _setup(args.model, args.tokens, args.threads)
    if args.rss:
        _run("plain", loaded, ids)  # thread pools and kernels warmed, as in the timed rounds
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak (VmHWM) to now: loading the model peaked higher
        before = _status_mb("VmRSS")
        _run(args.rss, loaded, ids)
        print(
            json.dumps(
                {"peak_rss_mb": _status_mb("VmHWM"), "added_mb": _status_mb("VmHWM") - before}
            )
        )
        return
    times: dict[str, list[float]] = {m: [] for m in MODES}
    kept: dict[str, int] = {}
    for m in MODES:  # warm-up
        _run(m, loaded, ids)
    for _ in range(args.rounds):
        for m in MODES:
            t0 = time.perf_counter()
            kept[m] = _run(m, loaded, ids)
            times[m].append(time.perf_counter() - t0)
    rss = {}
    for m in MODES:
        cmd = [
            sys.executable,
            __file__,
            "--model",
            args.model,
            "--tokens",
            str(args.tokens),
            "--threads",
            str(args.threads),
            "--rss",
            m,
        ]
        rss[m] = json.loads(
            subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.splitlines()[-1]
        )
    plain = statistics.median(times["plain"])
    rows = {
        m: {
            "median_s": statistics.median(times[m]),
            "vs_plain": statistics.median(times[m]) / plain,
            "cache_mb": kept[m] / 2**20,
            "peak_rss_mb": rss[m]["peak_rss_mb"],
            "added_rss_mb": rss[m]["added_mb"],
        }
        for m in MODES
    }
    summary = {
        "cpu": cpu_identity()[0],
        "threads": args.threads,
        "model": args.model,
        "tokens": int(ids.shape[1]),
        "hook_points": len(hook_names(loaded)),
        "modes": rows,
    }
    print(f"{args.model}, {ids.shape[1]} tokens, {args.threads} thread(s), {summary['cpu']}")
    print(
        "| mode | median s | vs plain | activations kept (MB) | peak RSS (MB) | peak added by the forward (MB) |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for m, r in rows.items():
        print(
            f"| {m} | {r['median_s']:.3f} | {r['vs_plain']:.2f}x | {r['cache_mb']:.1f} | "
            f"{r['peak_rss_mb']:.0f} | {r['added_rss_mb']:.0f} |"
        )
    if args.json:
        print(json.dumps(summary))


if __name__ == "__main__":
    main()
