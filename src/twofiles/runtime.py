"""Where and how a run executes: device, dtype, distributed rank. Decided here, once, with reasons.

What it owns: picking the device (CUDA > MPS > CPU unless told), the precision (bf16 autocast on
CUDA when supported; on CPU, whatever a measured probe says: bf16 matmuls are 4x fp32 on CPUs
with AVX512-BF16 or AMX and ~100x slower on CPUs without either, and no name tells them apart
reliably, so `probe_precision` times both at a training shape and caches the figures per machine),
torch.distributed set-up when launched by torchrun (nccl on CUDA, gloo otherwise), and the CPU
thread count. What it leaves to others: everything about the model and the data.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import torch

from twofiles.errors import TwofilesError
from twofiles.paths import atomic_write_bytes, cache_dir


@dataclass
class Runtime:
    device: torch.device  # where tensors live
    autocast_dtype: torch.dtype | None  # None: run in fp32 (no autocast)
    rank: int = 0  # this process's global rank
    world_size: int = 1  # processes in the job
    local_rank: int = 0  # rank on this node (selects the GPU)
    distributed: bool = False  # torch.distributed initialised by us
    reasons: list[str] = field(default_factory=list)  # why each choice was made, for the log
    precision_reason: str = ""  # why autocast_dtype, in words and figures (run.json, summaries)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def autocast(self) -> contextlib.AbstractContextManager[None]:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    @property
    def precision(self) -> str:
        """'fp32' or e.g. 'bf16 autocast'."""
        names = {torch.bfloat16: "bf16", torch.float16: "fp16"}
        if self.autocast_dtype is None:
            return "fp32"
        return names.get(self.autocast_dtype, str(self.autocast_dtype)) + " autocast"

    def describe(self) -> str:
        s = f"{self.device.type} {self.precision}"
        if self.world_size > 1:
            s += f", rank {self.rank}/{self.world_size}"
        return s


def pick_device(name: str = "auto") -> tuple[torch.device, str]:
    """The device named, or the best available for 'auto', with the reason."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda"), "CUDA is available"
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps"), "MPS (Apple GPU) is available"
        return torch.device("cpu"), "no GPU found"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise TwofilesError(f"--device {name}: CUDA is not available on this machine")
    if name == "mps" and not (
        getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    ):
        raise TwofilesError("--device mps: MPS is not available on this machine")
    if name not in ("cpu", "mps") and not name.startswith("cuda"):
        raise TwofilesError(f"--device {name}: expected auto, cpu, cuda, cuda:N or mps")
    return torch.device(name), "requested"


# bf16 autocast on CPU when the probe's bf16 matmuls are at least this many times fp32's. A
# training step is not all matmul: at the speedrun's shape ~30% of an fp32 step is elementwise
# work, softmax and optimizer arithmetic that bf16 does not speed up, and autocast adds a cast of
# every weight per step (~10% of the fp32 step, measured: 4.2x matmuls gave a 1.76x step, AMD EPYC
# with AVX512-BF16, docs/LOG.md 2026-12-06). Under that model a step breaks even at ~1.2x and gains
# ~15% at 1.5x; below that the gain is within a busy machine's noise and not worth reduced
# precision.
BF16_MIN_SPEEDUP = 1.5

# (tokens in a micro-batch, model dim, hidden dim): the speedrun's micro-batch (8 x 256 tokens)
# through a projection of its size class. Small enough that the probe takes a fraction of a second
# even where bf16 is emulated, large enough that BLAS runs its real kernels.
PROBE_SHAPE = (2048, 256, 768)

# CPU flags that decide bf16 matmul speed (x86: AVX512-BF16, AMX; Arm: BF16 dot products); part
# of the cache key, so a cache copied to another machine is never trusted.
BF16_ISA_FLAGS = (
    "avx512f",
    "avx512_bf16",
    "avx512_vnni",
    "avx_vnni",
    "amx_bf16",
    "amx_tile",
    "bf16",
    "sve",
)

PROBE_CACHE_NAME = "precision-probe.json"

# What the precision is for. Pretraining autocasts to whatever the probe says; finetuning verbs
# (SFT, DPO, reward, RL) stay fp32 on CPU under 'auto', because their evaluations are compared
# with fp32 inference (a reward run's held-out accuracy must be what the scorer reproduces:
# under bf16 autocast it was not); inference keeps fp32 weights on CPU.
Purpose = Literal["pretrain", "finetune", "inference"]


@dataclass(frozen=True)
class PrecisionProbe:
    """Measured fp32 and bf16 matmul speed on this CPU at one thread count, and what it implies."""

    cpu: str  # CPU model name
    isa: tuple[str, ...]  # the bf16-relevant flags this CPU reports
    torch_version: str
    threads: int
    shape: tuple[int, int, int]  # (m, k, n) of the timed matmul
    fp32_gflops: float
    bf16_gflops: float
    probed_at: str  # when it was measured, "YYYY-MM-DD HH:MM UTC"
    cache_path: str  # where the figures are kept ("" when not cached)
    from_cache: bool = False  # read from the cache rather than measured by this process

    @property
    def speedup(self) -> float:
        """bf16 matmul throughput over fp32's."""
        return self.bf16_gflops / self.fp32_gflops if self.fp32_gflops > 0 else 0.0

    @property
    def use_bf16(self) -> bool:
        return self.speedup >= BF16_MIN_SPEEDUP

    def figures(self) -> str:
        """The evidence: 'bf16 matmul 878 vs fp32 207 GFLOP/s (4.24x >= 1.5x) at 2 threads on
        CPU, probed DATE, cached PATH'."""
        cmp = ">=" if self.use_bf16 else "<"
        where = f", cached {self.cache_path}" if self.cache_path else ""
        return (
            f"bf16 matmul {self.bf16_gflops:.0f} vs fp32 {self.fp32_gflops:.0f} GFLOP/s "
            f"({self.speedup:.2f}x {cmp} {BF16_MIN_SPEEDUP}x) at {self.threads} thread"
            f"{'s' if self.threads != 1 else ''} on {self.cpu}, probed {self.probed_at}{where}"
        )

    def reason(self) -> str:
        """The decision and its evidence: 'bf16 autocast: bf16 matmul ...'."""
        return ("bf16 autocast" if self.use_bf16 else "fp32") + ": " + self.figures()


# The flags that decide which inference kernels run and how fast (x86 vector and matrix units,
# Arm's dot-product and SVE extensions): cpu_identity(all_flags=True), for the decode probe's
# cache key and for benchmark reports.
KERNEL_ISA_FLAGS = (
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "avx_vnni",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
    "asimd",
    "asimddp",
    "i8mm",
    "bf16",
    "sve",
)


def cpu_info() -> tuple[str, frozenset[str]]:
    """(model name, every flag) of this CPU, from /proc/cpuinfo where there is one (x86 "flags",
    Arm "Features"); the name falls back to what platform says."""
    name, flags = "", set()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            key = key.strip().lower()
            if key in ("model name", "cpu model") and not name:
                name = value.strip()
            elif key in ("flags", "features"):
                flags.update(value.split())
    if not name:
        name = platform.processor() or platform.machine() or "unknown CPU"
    return name, frozenset(flags)


def cpu_identity(*, all_flags: bool = False) -> tuple[str, tuple[str, ...]]:
    """(model name, ISA flags) of this CPU: the bf16-relevant flags, or with `all_flags` every
    kernel-relevant one (KERNEL_ISA_FLAGS)."""
    name, flags = cpu_info()
    wanted = KERNEL_ISA_FLAGS if all_flags else BF16_ISA_FLAGS
    return name, tuple(f for f in wanted if f in flags)


def matmul_seconds(shape: tuple[int, int, int], dtype: torch.dtype, budget_s: float) -> float:
    """Seconds per (m x k) @ (k x n) matmul in `dtype` at the current thread count, as CPU time
    over threads: other processes taking the cores slow the wall clock but not this, so the probe
    gives the same answer on a busy machine (measured at load average 7 on 2 cores: wall-clock
    GFLOP/s fell 10x, CPU-time figures stayed within 5% of the quiet ones at 1 thread). Loops for
    about `budget_s` of wall time, at least twice, after one untimed warm-up."""
    m, k, n = shape
    g = torch.Generator().manual_seed(0)
    a = torch.randn(m, k, generator=g).to(dtype)
    b = torch.randn(k, n, generator=g).to(dtype)
    out = torch.empty(m, n, dtype=dtype)
    torch.mm(a, b, out=out)  # warm-up: thread pool, packing buffers, the kernel's JIT
    calls, cpu0, wall0 = 0, time.process_time(), time.perf_counter()
    while calls < 2 or time.perf_counter() - wall0 < budget_s:
        torch.mm(a, b, out=out)
        calls += 1
    return (time.process_time() - cpu0) / calls / torch.get_num_threads()


def _measure(shape: tuple[int, int, int]) -> tuple[float, float]:
    """(fp32, bf16) GFLOP/s at `shape` at the current thread count: a small shape first, so that a
    CPU that emulates bf16 (~100x slower) is found out in milliseconds instead of timing its slow
    kernel at full size."""
    small = (256, 256, 256)
    f32 = matmul_seconds(small, torch.float32, 0.02)
    b16 = matmul_seconds(small, torch.bfloat16, 0.02)
    if b16 > 2 * f32:  # far below the threshold: the small shape's figures decide
        shape = small
    else:  # alternate the two, so that a change in the machine's state touches both
        f32 = b16 = float("inf")
        for _ in range(3):
            f32 = min(f32, matmul_seconds(shape, torch.float32, 0.03))
            b16 = min(b16, matmul_seconds(shape, torch.bfloat16, 0.03))
    flops = 2 * shape[0] * shape[1] * shape[2]
    return flops / f32 / 1e9, flops / b16 / 1e9


def _cache_key(cpu: str, isa: tuple[str, ...], threads: int) -> str:
    return f"{cpu} | {' '.join(isa) or '-'} | torch {torch.__version__} | {threads} threads"


def read_probe_cache(path: Path) -> dict[str, Any]:
    """A probe cache's records by key; {} when missing or unreadable (a damaged cache is measured
    again). The training precision probe and the decode probe keep theirs this way."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def probe_precision(threads: int | None = None, *, refresh: bool = False) -> PrecisionProbe:
    """fp32 and bf16 matmul throughput on this CPU at `threads` (default: torch's current count),
    read from the per-machine cache when present (unless `refresh`), else measured (~0.3 s) and
    cached. The one place that knows whether bf16 pays on this CPU: training's autocast and
    inference's weight precision both ask it."""
    threads = threads or torch.get_num_threads()
    cpu, isa = cpu_identity()
    key = _cache_key(cpu, isa, threads)
    path = cache_dir() / PROBE_CACHE_NAME
    cache = read_probe_cache(path)
    rec = cache.get(key)
    if not refresh and isinstance(rec, dict):
        with contextlib.suppress(KeyError, IndexError, TypeError, ValueError):
            return PrecisionProbe(
                cpu=cpu,
                isa=isa,
                torch_version=torch.__version__,
                threads=threads,
                shape=(int(rec["shape"][0]), int(rec["shape"][1]), int(rec["shape"][2])),
                fp32_gflops=float(rec["fp32_gflops"]),
                bf16_gflops=float(rec["bf16_gflops"]),
                probed_at=str(rec["probed_at"]),
                cache_path=str(path),
                from_cache=True,
            )
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        fp32, bf16 = _measure(PROBE_SHAPE)
    finally:
        torch.set_num_threads(saved)
    probe = PrecisionProbe(
        cpu=cpu,
        isa=isa,
        torch_version=torch.__version__,
        threads=threads,
        shape=PROBE_SHAPE,
        fp32_gflops=round(fp32, 1),
        bf16_gflops=round(bf16, 1),
        probed_at=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        cache_path="",
    )
    rec = {k: v for k, v in asdict(probe).items() if k not in ("cache_path", "from_cache", "isa")}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, (json.dumps({**cache, key: rec}, indent=1) + "\n").encode())
    except OSError:  # a read-only home still trains; it probes again next time
        return probe
    return PrecisionProbe(**{**asdict(probe), "cache_path": str(path)})


def precision_for(
    device: torch.device,
    dtype: str = "auto",
    *,
    threads: int | None = None,
    purpose: Purpose = "pretrain",
) -> tuple[torch.dtype | None, str]:
    """The reduced precision to compute in on `device` (None: fp32) for a --dtype choice, with the
    reason. The one precision decision: training autocasts to it, inference casts weights to it.
    On CPU, 'auto' asks `probe_precision(threads)` for pretraining; finetuning and inference stay
    fp32 there (see Purpose; bf16 weights also change greedy tokens against the fp32 references,
    and the standalone runner is fp32)."""
    if dtype == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16, "CUDA supports bf16"
        if device.type == "cpu" and purpose == "pretrain":
            probe = probe_precision(threads)
            return (torch.bfloat16 if probe.use_bf16 else None), probe.figures()
        if device.type == "cpu" and purpose == "finetune":
            return (
                None,
                "finetuning on CPU stays fp32 unless --dtype bf16 (evaluations match fp32 inference)",
            )
        if device.type == "cpu":
            return None, "CPU inference keeps fp32 weights"
        return None, "bf16 matmuls are slow or unsupported on this device"
    if dtype == "fp32":
        return None, "requested"
    if dtype in ("bf16", "fp16"):
        return (torch.bfloat16 if dtype == "bf16" else torch.float16), "requested"
    raise TwofilesError(f"--dtype {dtype}: expected auto, fp32, bf16 or fp16")


def setup(
    device: str = "auto",
    dtype: str = "auto",
    threads: int | None = None,
    purpose: Purpose = "finetune",
) -> Runtime:
    """Initialise the runtime for `purpose` (pretraining passes 'pretrain': the CPU probe decides
    its precision). Under torchrun (RANK/WORLD_SIZE set) also initialises the process group; call
    `teardown()` at the end."""
    reasons: list[str] = []
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev, why = pick_device(device)
    reasons.append(f"device {dev.type}: {why}")
    if dev.type == "cuda" and world_size > 1:
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    if threads:
        torch.set_num_threads(threads)
    distributed = False
    if world_size > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            backend = "nccl" if dev.type == "cuda" else "gloo"
            dist.init_process_group(backend=backend)
            distributed = True
            reasons.append(f"distributed: {backend}, {world_size} processes")
    amp, why = precision_for(dev, dtype, threads=torch.get_num_threads(), purpose=purpose)
    rt = Runtime(
        device=dev,
        autocast_dtype=amp,
        rank=rank,
        world_size=world_size,
        local_rank=local_rank,
        distributed=distributed,
        reasons=reasons,
    )
    rt.precision_reason = f"{rt.precision}: {why}"
    reasons.append(rt.precision_reason)
    return rt


def can_compile(device: torch.device) -> tuple[bool, str]:
    """Whether torch.compile can run here, with the reason: on CPU its code generator needs a C++
    compiler (inductor calls $CXX, else c++/g++/clang++); a machine without one trains eager
    rather than failing at the first step."""
    import shutil

    if device.type != "cpu":
        return True, f"{device.type}: compiled by inductor"
    for cxx in (os.environ.get("CXX", ""), "c++", "g++", "clang++"):
        if cxx and shutil.which(cxx):
            return True, f"C++ compiler {cxx} found"
    return False, "no C++ compiler (c++, g++, clang++ or $CXX) for inductor's CPU code: eager"


def teardown(rt: Runtime) -> None:
    if rt.distributed:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


@contextlib.contextmanager
def running(
    device: str = "auto", dtype: str = "auto", threads: int | None = None
) -> Iterator[Runtime]:
    rt = setup(device, dtype, threads)
    try:
        yield rt
    finally:
        teardown(rt)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def matmul_gflops(
    n: int, repeats: int = 5, seconds: float = 0.2, dtype: torch.dtype = torch.float32
) -> float:
    """Best-of-`repeats` GFLOP/s of an n x n @ n x n matmul on the CPU at the current thread count
    (each repeat loops ~`seconds`; the best repeat is the one least disturbed by other work)."""
    import time

    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g, dtype=dtype)
    b = torch.randn(n, n, generator=g, dtype=dtype)
    out = torch.empty(n, n, dtype=dtype)
    torch.mm(a, b, out=out)  # warm-up: thread pool, BLAS packing buffers
    t0 = time.perf_counter()
    torch.mm(a, b, out=out)
    iters = max(1, int(seconds / max(time.perf_counter() - t0, 1e-6)))
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(iters):
            torch.mm(a, b, out=out)
        best = min(best, (time.perf_counter() - t0) / iters)
    return 2 * n**3 / best / 1e9


def peak_flops(
    device: torch.device, *, quick: bool = True, dtype: torch.dtype | None = None
) -> float:
    """The device's dense matmul peak in FLOP/s, the denominator of MFU: measured on CPU in the
    run's precision (`dtype`: the autocast dtype, None for fp32; an achievable peak for this BLAS,
    not a datasheet number: a bf16 run measured against the fp32 peak showed an MFU above 1),
    looked up on CUDA (bf16 tensor-core datasheet figures, by name), NaN when unknown."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device).lower()
        for key, flops in (
            ("h200", 989e12),
            ("h100", 989e12),
            ("a100", 312e12),
            ("l40", 181e12),
            ("l4", 121e12),
            ("a10", 125e12),
            ("4090", 165e12),
            ("3090", 71e12),
        ):
            if key in name:
                return flops
        return float("nan")
    if device.type != "cpu":
        return float("nan")
    sizes = (1024, 1536) if quick else (512, 1024, 1536, 2048)
    return (
        max(
            matmul_gflops(
                n,
                repeats=3 if quick else 5,
                seconds=0.05 if quick else 0.2,
                dtype=dtype or torch.float32,
            )
            for n in sizes
        )
        * 1e9
    )
