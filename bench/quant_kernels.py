"""Which matmul a quantized Linear should run, per shape and batch: PyTorch's packed CPU kernels
(int8 / int4, with fp32 or bf16 activations) against dequantize-then-matmul and a plain fp32
matmul, on smollm2's projection shapes. One process, contenders alternating, medians.

    PYTHONPATH=src .venv/bin/python bench/quant_kernels.py --threads 2 --rounds 9

This is the measurement behind twofiles.quant's choice (packed kernels with bf16 activations on
CPU; dequantize only where a kernel cannot run).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from twofiles.quant import Int4Linear, Int8Linear

SHAPES = {  # smollm2 (SmolLM2-135M): out_features x in_features
    "q/o 576x576": (576, 576),
    "k/v 192x576": (192, 576),
    "gate/up 1536x576": (1536, 576),
    "down 576x1536": (576, 1536),
    "lm_head 49152x576": (49152, 576),
}


def per_call_us(f, seconds: float = 0.02) -> float:
    t0 = time.perf_counter()
    f()
    n = max(1, int(seconds / max(time.perf_counter() - t0, 1e-7)))
    t0 = time.perf_counter()
    for _ in range(n):
        f()
    return (time.perf_counter() - t0) / n * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument(
        "--batch", type=int, nargs="+", default=[1, 64], help="rows of activations (1 = decode)"
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    print(
        f"{args.threads} threads, torch {torch.__version__}, {torch.backends.cpu.get_cpu_capability()}; median us per call over {args.rounds} alternating rounds\n"
    )
    print(
        "| shape | rows | fp32 | int8 packed, fp32 act | int8 packed, bf16 act | int8 dequant | int4 packed, bf16 act | int4 dequant |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for label, (N, K) in SHAPES.items():
        lin = torch.nn.Linear(K, N, bias=False)
        with torch.no_grad():
            lin.weight.copy_(torch.randn(N, K, generator=g) * K**-0.5)
        q8 = Int8Linear.from_linear(lin, backend="packed")
        d8 = Int8Linear.from_linear(lin, backend="dequant")
        q4 = Int4Linear.from_linear(lin, 32, backend="packed")
        d4 = Int4Linear.from_linear(lin, 32, backend="dequant")
        s32 = q8.scales.float()
        for M in args.batch:
            x = torch.randn(M, K, generator=g)
            fs = {
                "fp32": lambda: F.linear(x, lin.weight),
                "int8 packed fp32": lambda: torch.ops.aten._weight_int8pack_mm(x, q8.qweight, s32),
                "int8 packed bf16": lambda: q8(x),
                "int8 dequant": lambda: d8(x),
                "int4 packed bf16": lambda: q4(x),
                "int4 dequant": lambda: d4(x),
            }
            times: dict[str, list[float]] = {k: [] for k in fs}
            with torch.inference_mode():
                for r in range(args.rounds):
                    names = list(fs)[r % len(fs) :] + list(fs)[: r % len(fs)]
                    for k in names:
                        times[k].append(per_call_us(fs[k]))
            med = {k: statistics.median(v) for k, v in times.items()}
            print(
                f"| {label} | {M} | " + " | ".join(f"{med[k]:.0f}" for k in fs) + " |", flush=True
            )


if __name__ == "__main__":
    main()
