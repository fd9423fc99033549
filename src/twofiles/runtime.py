"""Where and how a run executes: device, dtype, distributed rank. Decided here, once, with reasons.

What it owns: picking the device (CUDA > MPS > CPU unless told), the autocast dtype (bf16 on CUDA
when supported; fp32 elsewhere, because bf16 matmuls on CPUs without AVX-512/AMX run ~100x slower
than fp32), torch.distributed set-up when launched by torchrun (nccl on CUDA, gloo otherwise), and
the CPU thread count. What it leaves to others: everything about the model and the data.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from twofiles.errors import TwofilesError


@dataclass
class Runtime:
    device: torch.device  # where tensors live
    autocast_dtype: torch.dtype | None  # None: run in fp32 (no autocast)
    rank: int = 0  # this process's global rank
    world_size: int = 1  # processes in the job
    local_rank: int = 0  # rank on this node (selects the GPU)
    distributed: bool = False  # torch.distributed initialised by us
    reasons: list[str] = field(default_factory=list)  # why each choice was made, for the log

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def autocast(self) -> contextlib.AbstractContextManager[None]:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    def describe(self) -> str:
        dt = (
            "fp32"
            if self.autocast_dtype is None
            else str(self.autocast_dtype).replace("torch.", "") + " autocast"
        )
        s = f"{self.device.type} {dt}"
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


def precision_for(device: torch.device, dtype: str = "auto") -> tuple[torch.dtype | None, str]:
    """The reduced precision to compute in on `device` (None: fp32) for a --dtype choice, with the
    reason. The one precision decision: training autocasts to it, inference casts weights to it."""
    if dtype == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16, "CUDA supports bf16"
        return None, "bf16 matmuls are slow or unsupported on this device"
    if dtype == "fp32":
        return None, "requested"
    if dtype in ("bf16", "fp16"):
        return (torch.bfloat16 if dtype == "bf16" else torch.float16), "requested"
    raise TwofilesError(f"--dtype {dtype}: expected auto, fp32, bf16 or fp16")


def setup(device: str = "auto", dtype: str = "auto", threads: int | None = None) -> Runtime:
    """Initialise the runtime. Under torchrun (RANK/WORLD_SIZE set) also initialises the process
    group; call `teardown()` at the end."""
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
    amp, why = precision_for(dev, dtype)
    if dtype == "auto":
        reasons.append(f"{'bf16 autocast' if amp is not None else 'fp32'}: {why}")
    return Runtime(
        device=dev,
        autocast_dtype=amp,
        rank=rank,
        world_size=world_size,
        local_rank=local_rank,
        distributed=distributed,
        reasons=reasons,
    )


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


def peak_flops(device: torch.device, *, quick: bool = True) -> float:
    """The device's dense matmul peak in FLOP/s, the denominator of MFU: measured on CPU (fp32, an
    achievable peak for this BLAS, not a datasheet number), looked up on CUDA (bf16 tensor-core
    datasheet figures, by name), NaN when unknown."""
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
            matmul_gflops(n, repeats=3 if quick else 5, seconds=0.05 if quick else 0.2)
            for n in sizes
        )
        * 1e9
    )
