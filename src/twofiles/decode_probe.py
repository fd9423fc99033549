"""How fast this machine multiplies a model's weights by one token, in each weight format: the
measured probe behind the inference layout (quant.prepare_for_inference).

What it owns: timing one decode step's worth of matrix-vector products (the model's own linear
shapes, at batch 1, weights larger than the caches so they stream as they do in a real step) in
each candidate format and thread count, caching the figures per machine, and the choice they imply.
What it leaves to others: building the layout (quant.py), the training precision probe
(runtime.probe_precision), the model itself.

Why a probe and not a rule: which format streams fastest depends on the CPU, and no name tells.
Measured at batch 1 (bench/decode.py, BENCHMARKS.md, docs/LOG.md): on an AMD EPYC with
AVX512-BF16, packed bf16 weights take 7.6 ms a token against 18.7 for packed fp32, and torch's
fp32 `F.linear` (MKL's sgemv) 31.9; on an Intel Xeon with AMX torch's fp32 path was slower than
transformers' while its bf16 matmuls ran 3.4x fp32; on a CPU without AVX512-BF16 or AMX a bf16
product can be emulated and lose. A decode step at batch 1 is bound by how fast
the weights stream (every weight is read once per token), so timing the model's shapes at the
model's size predicts the step well; the rest of a step (norms, attention, Python) is the same in
every format and cancels out of the comparison.

Formats:
  fp32           F.linear on fp32 weights (torch's default CPU path)
  fp32-packed    oneDNN's prepacked fp32 linear (quant.PackedLinear)
  bf16           F.linear on bf16 weights
  bf16-packed    oneDNN's prepacked bf16 linear
  int8 / int4    the packed int8 / int4 kernels (quantization is the user's choice; the probe only
                 picks their thread count)
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import torch
import torch.nn.functional as F

from twofiles.paths import atomic_write_bytes, cache_dir
from twofiles.runtime import cpu_identity, read_probe_cache

PROBE_CACHE_NAME = "decode-probe.json"
FORMATS: tuple[str, ...] = ("fp32", "fp32-packed", "bf16", "bf16-packed", "int8", "int4")

# bf16 weights round every weight to 8 bits of mantissa: worth it only for a clear gain. 1.15x is
# above the probe's own run-to-run spread (~5% on a quiet machine) and well below what bf16 gives
# where it pays (2.45x on the AMD EPYC with AVX512-BF16: half the bytes per token).
BF16_MIN_GAIN = 1.15

# Each shape is timed over enough copies that they outgrow the caches (the largest L3 of the CPUs
# seen here is 32 MB per socket): otherwise a small layer is timed from cache, which a real step
# never sees (it reads all of the model's weights once per token).
STREAM_BYTES = 64 * 2**20


def onednn_linear_available() -> bool:
    """Whether this torch has oneDNN's prepacked linear (the ops torch.compile's CPU freezing
    pass uses): x86 and aarch64 builds with mkldnn."""
    return (
        torch.backends.mkldnn.is_available()
        and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
        and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    )


def int_kernels_available() -> bool:
    """Whether this torch has the packed int8 / int4 CPU kernels (torch >= 2.6)."""
    return hasattr(torch.ops.aten, "_weight_int8pack_mm") and hasattr(
        torch.ops.aten, "_weight_int4pack_mm_for_cpu"
    )


def available_formats() -> tuple[str, ...]:
    """The formats this torch build can run on CPU."""
    out = ["fp32", "bf16"]
    if onednn_linear_available():
        out += ["fp32-packed", "bf16-packed"]
    if int_kernels_available():
        out += ["int8", "int4"]
    return tuple(f for f in FORMATS if f in out)


def _matvec(fmt: str, w: torch.Tensor) -> Callable[[], torch.Tensor]:
    """A closure doing one [1, K] x [K, N] product with weight w [N, K] stored as `fmt`."""
    N, K = w.shape
    if fmt in ("fp32", "bf16"):
        dt = torch.float32 if fmt == "fp32" else torch.bfloat16
        wd, x = w.to(dt), torch.randn(1, K).to(dt)
        return lambda: F.linear(x, wd)
    if fmt in ("fp32-packed", "bf16-packed"):
        dt = torch.float32 if fmt == "fp32-packed" else torch.bfloat16
        x = torch.randn(1, K).to(dt)
        wp = torch.ops.mkldnn._reorder_linear_weight(w.to(dt), 1)
        return lambda: torch.ops.mkldnn._linear_pointwise(x, wp, None, "none", [], "")
    xb = torch.randn(1, K).to(torch.bfloat16)
    if fmt == "int4" and (N % 16 or K % 32):  # the int4 kernel refuses it; such layers go int8
        fmt = "int8"
    if fmt == "int8":
        q = torch.randint(-127, 128, (N, K), dtype=torch.int8)
        s = torch.rand(N).to(torch.bfloat16)
        return lambda: torch.ops.aten._weight_int8pack_mm(xb, q, s)
    if fmt == "int4":
        group = 32
        q4 = torch.ops.aten._convert_weight_to_int4pack_for_cpu(
            torch.randint(0, 16, (N, K), dtype=torch.int32), 1
        )
        sz = torch.rand(K // group, N, 2).to(torch.bfloat16)
        return lambda: torch.ops.aten._weight_int4pack_mm_for_cpu(xb, q4, group, sz)
    raise ValueError(f"format {fmt!r}: expected one of {', '.join(FORMATS)}")


def _bytes_per_weight(fmt: str) -> float:
    return {"fp32": 4, "fp32-packed": 4, "bf16": 2, "bf16-packed": 2, "int8": 1, "int4": 0.5}[fmt]


def time_steps(
    formats: Sequence[str],
    shapes: Sequence[tuple[int, int, int]],
    threads: Sequence[int],
    *,
    rounds: int = 5,
) -> dict[str, dict[int, float]]:
    """Seconds of one token's matrix-vector products through `shapes` [(out, in, count per token)]
    with weights in each of `formats`, at each thread count: each shape is timed over enough
    distinct copies to stream from memory, and its time scaled by its count. Wall time, best of
    `rounds`, the formats taking turns within each round: CPU time would count the spin-waits of
    idle worker threads (oneDNN's and MKL's differ) as work; the best round is the one least
    disturbed by other processes, and taking turns spreads a disturbance over every format."""
    for fmt in formats:
        if fmt not in FORMATS:
            raise ValueError(f"format {fmt!r}: expected one of {', '.join(FORMATS)}")
    totals = {f: dict.fromkeys(threads, 0.0) for f in formats}
    saved = torch.get_num_threads()
    try:
        for N, K, count in shapes:
            calls = {}
            for f in formats:
                copies = max(
                    1, min(count, math.ceil(STREAM_BYTES / (N * K * _bytes_per_weight(f))))
                )
                # the values do not change these kernels' speed: a fill is faster than randn
                calls[f] = [_matvec(f, torch.full((N, K), 0.01 * (i + 1))) for i in range(copies)]
            for t in threads:
                torch.set_num_threads(t)
                best = dict.fromkeys(formats, float("inf"))
                for r in range(rounds + 1):  # round 0 warms up: kernels, thread pool
                    for f in formats:
                        n, t0 = 0, time.perf_counter()
                        while n < 2 * len(calls[f]) or time.perf_counter() - t0 < 0.004:
                            for c in calls[f]:
                                c()
                            n += len(calls[f])
                        if r:
                            best[f] = min(best[f], (time.perf_counter() - t0) / n)
                for f in formats:
                    totals[f][t] += best[f] * count
            del calls
    finally:
        torch.set_num_threads(saved)
    return totals


def machine_busy() -> tuple[bool, str]:
    """Whether other work holds this machine's cores (the 1-minute load average above the cores
    less one, this process's own share), with the figures: a probe measured then is used for the
    run at hand but not cached. Two threads on two shared cores wait on the scheduler, and such a
    probe once read int4 at 100x its real step time."""
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):  # no load average (Windows): trust the measurement
        return False, "no load average on this system"
    cores = os.cpu_count() or 1
    limit = max(1.0, cores - 1.0) + 0.5
    return load > limit, f"load average {load:.1f} on {cores} cores (busy above {limit:.1f})"


@dataclass(frozen=True)
class DecodeProbe:
    """Seconds per token's weight products, by format and thread count, on this machine."""

    cpu: str
    isa: tuple[str, ...]
    torch_version: str
    shapes: tuple[tuple[int, int, int], ...]  # (out, in, count per token) of the layout timed
    seconds: dict[str, dict[int, float]]  # format -> threads -> seconds per token
    probed_at: str
    cache_path: str = ""
    from_cache: bool = False
    note: str = ""  # why the figures were not cached, when they were not

    def best_threads(self, fmt: str) -> int:
        by = self.seconds[fmt]
        return min(by, key=lambda t: (by[t], -t))

    def step_s(self, fmt: str, threads: int | None = None) -> float:
        by = self.seconds[fmt]
        return by[threads] if threads in by else by[self.best_threads(fmt)]


def decode_shapes(
    dim: int,
    hidden: int,
    q_dim: int,
    kv_dim: int,
    n_layers: int,
    vocab: int,
    *,
    fused: bool = True,
) -> tuple[tuple[int, int, int], ...]:
    """(out, in, count per token) of a Llama-style model's linears at batch 1, in the fused
    inference layout ([q; k; v] and [gate; up] as one matmul each) or the training layout."""
    if fused:
        per_layer = [(q_dim + 2 * kv_dim, dim), (dim, q_dim), (2 * hidden, dim), (dim, hidden)]
    else:
        per_layer = [(q_dim, dim), (kv_dim, dim), (kv_dim, dim), (dim, q_dim)]
        per_layer += [(hidden, dim), (hidden, dim), (dim, hidden)]
    counts: dict[tuple[int, int], int] = {}
    for s in per_layer:
        counts[s] = counts.get(s, 0) + n_layers
    counts[(vocab, dim)] = counts.get((vocab, dim), 0) + 1
    return tuple((n, k, c) for (n, k), c in counts.items())


def choose_dense(seconds: dict[str, float]) -> tuple[str, str]:
    """The dense format to run in, from seconds per token by format, with the reason in figures:
    the fastest fp32 format, unless the fastest bf16 one is at least BF16_MIN_GAIN faster (or
    only one precision was allowed)."""
    if not seconds:
        raise ValueError("no formats to choose from")

    def fastest(prefix: str) -> str | None:
        fs = [f for f in seconds if f.split("-")[0] == prefix]
        return min(fs, key=lambda f: seconds[f]) if fs else None

    f32, b16 = fastest("fp32"), fastest("bf16")
    figures = ", ".join(
        f"{f} {seconds[f] * 1e3:.1f}" for f in sorted(seconds, key=lambda f: seconds[f])
    )
    figures += " ms/token of weight products"
    if f32 is None or b16 is None:
        fmt = f32 or b16 or min(seconds, key=lambda f: seconds[f])
        return fmt, f"fastest of those allowed ({figures})"
    gain = seconds[f32] / seconds[b16]
    if gain >= BF16_MIN_GAIN:
        return b16, f"{gain:.2f}x {f32} (>= {BF16_MIN_GAIN}x: {figures})"
    return f32, f"bf16 gains {gain:.2f}x < {BF16_MIN_GAIN}x, not worth its rounding ({figures})"


def _key(cpu: str, isa: tuple[str, ...], shapes: Sequence[tuple[int, int, int]]) -> str:
    shape_s = " ".join(f"{n}x{k}x{c}" for n, k, c in shapes)
    return f"{cpu} | {' '.join(isa) or '-'} | torch {torch.__version__} | {shape_s}"


def thread_candidates() -> list[int]:
    """1, half the cores, all of them (what torch would use by default): the counts worth timing."""
    n = max(1, torch.get_num_threads())
    return sorted({1, max(1, n // 2), n})


def probe_decode(
    shapes: Sequence[tuple[int, int, int]],
    formats: Sequence[str],
    *,
    threads: Sequence[int] | None = None,
    refresh: bool = False,
) -> DecodeProbe:
    """Seconds per token's weight products for each of `formats` at each thread count, read from
    the per-machine cache (TWOFILES_CACHE/decode-probe.json) where present, else measured (~2 s
    for smollm2's four dense formats at two thread counts) and cached. A damaged cache is measured again; a cache copied from
    another CPU or torch is never trusted (they are in the key)."""
    threads = list(threads or thread_candidates())
    cpu, isa = cpu_identity(all_flags=True)
    shapes = tuple((int(n), int(k), int(c)) for n, k, c in shapes)
    key = _key(cpu, isa, shapes)
    path = cache_dir() / PROBE_CACHE_NAME
    cache = read_probe_cache(path)
    got_rec = cache.get(key)
    rec: dict[str, Any] = got_rec if isinstance(got_rec, dict) else {}
    seconds: dict[str, dict[int, float]] = {}
    with contextlib.suppress(TypeError, ValueError, AttributeError):
        for f in formats:
            got = {int(t): float(s) for t, s in rec.get("seconds", {}).get(f, {}).items()}
            if all(t in got for t in threads) and not refresh:
                seconds[f] = {t: got[t] for t in threads}
    missing = [f for f in formats if f not in seconds]
    busy, load = machine_busy() if missing else (False, "")
    if missing:  # kept to the nanosecond: what is cached is what this process uses
        for f, by in time_steps(missing, shapes, threads).items():
            seconds[f] = {t: round(v, 9) for t, v in by.items()}
    probed_at = (
        str(rec.get("probed_at", ""))
        if not missing
        else datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    )
    probe = DecodeProbe(
        cpu=cpu,
        isa=isa,
        torch_version=torch.__version__,
        shapes=shapes,
        seconds=seconds,
        probed_at=probed_at,
        cache_path=str(path),
        from_cache=not missing,
    )
    if busy:  # measured while other work held the cores: good for now, not for keeps
        return DecodeProbe(**{**probe.__dict__, "cache_path": "", "note": f"not cached: {load}"})
    if missing:
        merged = {
            **{f: {str(t): s for t, s in v.items()} for f, v in rec.get("seconds", {}).items()},
            **{f: {str(t): s for t, s in seconds[f].items()} for f in seconds},
        }
        entry = {"probed_at": probed_at, "seconds": merged}
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(path, (json.dumps({**cache, key: entry}, indent=1) + "\n").encode())
        except OSError:  # a read-only home still runs; it probes again next time
            return DecodeProbe(**{**probe.__dict__, "cache_path": ""})
    return probe


__all__ = [
    "BF16_MIN_GAIN",
    "FORMATS",
    "DecodeProbe",
    "available_formats",
    "choose_dense",
    "decode_shapes",
    "int_kernels_available",
    "machine_busy",
    "onednn_linear_available",
    "probe_decode",
    "thread_candidates",
    "time_steps",
]
