"""This machine's fp32 matmul peak, measured with torch: the denominator for "share of peak".

A square matmul of side n costs 2*n^3 FLOPs. We time a few sizes, best-of-N each (the best run is
the one least disturbed by other work on the machine), at torch.get_num_threads() threads, and take
the best size. This is an achievable peak for this BLAS on this machine, not the datasheet number.

    .venv/bin/python bench/matmul_peak.py [--sizes 512 1024 2048] [--repeats 5] [--threads N] [--json]
"""

from __future__ import annotations

import argparse
import json

import torch

from twofiles.runtime import matmul_gflops


def measure_fp32_peak(sizes: tuple[int, ...] = (512, 1024, 1536, 2048), repeats: int = 5) -> float:
    """The best fp32 matmul GFLOP/s over `sizes` at the current torch thread count."""
    return max(matmul_gflops(n, repeats=repeats) for n in sizes)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[512, 1024, 1536, 2048])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's choice)"
    )
    ap.add_argument("--json", action="store_true", help="print one JSON line last")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    per_size = {n: matmul_gflops(n, repeats=args.repeats) for n in args.sizes}
    threads = torch.get_num_threads()
    for n, gf in per_size.items():
        print(
            f"fp32 matmul {n:>5} x {n:<5} {gf:8.1f} GFLOP/s  ({threads} threads, best of {args.repeats})"
        )
    peak = max(per_size.values())
    print(f"peak: {peak:.1f} GFLOP/s")
    if args.json:
        print(
            json.dumps(
                {
                    "fp32_peak_gflops": round(peak, 2),
                    "threads": threads,
                    "per_size": {str(k): round(v, 2) for k, v in per_size.items()},
                }
            )
        )


if __name__ == "__main__":
    main()
