"""Weight-only quantization and the rest of getting a loaded model ready for fast inference.

What it owns: int8 and int4 weight quantization (quantize / dequantize functions, and the modules
that replace `nn.Linear` / `nn.Embedding`), `quantize_model` to apply them to a Transformer from
outside (the model file stays pure math), and `prepare_for_inference`, the one call that verbs
(generate, chat, serve, eval) make to quantize, pick the inference dtype, set threads and compile.
What it leaves to others: the model math (model.py), sampling and the decode loop (engine.py),
device and precision policy (runtime.py).

The schemes (weight-only: activations stay in the model's dtype between layers):
- int8: symmetric, one scale per output channel (row): w ~ q * s, q in [-127, 127].
- int4: asymmetric, one (scale, zero) per group of `group_size` input columns of each row:
  w ~ (q - 8) * s + z, q in [0, 15] (the layout of gpt-fast / torchao's groupwise affine, which is
  what PyTorch's int4 CPU kernel consumes). Smaller groups: more accurate, more scale bytes.
- Scales (and zeros) are rounded to bf16 before the weights are quantized against them, because the
  packed kernels take them in bf16: quantize and dequantize then agree exactly.

Kernels: on CPU, PyTorch's own packed kernels (`_weight_int8pack_mm`, `_weight_int4pack_mm_for_cpu`,
the ones gpt-fast and torchao call). Measured on an AVX-512 CPU at batch 1 they beat an fp32 matvec
only with bf16 activations: their fp32 path is not vectorised and runs ~5-10x *slower* than fp32
(bench/quant_kernels.py; docs/LOG.md). So the packed path casts the activation to bf16 for the
matmul and the result back. Dequantize-then-matmul (the weight rebuilt every call) never won on
CPU, at any batch size we measured, so it is only the fallback: on CUDA / MPS (the CPU kernels
do not run there) and for shapes a kernel rejects (int4 needs out_features % 16 == 0 and
in_features % group_size == 0). The fallback multiplies the int8 weight cast to the activation
dtype and applies the scale after the matmul, which torch.compile fuses into one kernel.

Footgun: quantize after moving the model to its device; packed CPU weights cannot move to a GPU.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F
from torch import nn

from twofiles.errors import TwofilesError

if TYPE_CHECKING:
    from twofiles.artifact import LoadedModel
    from twofiles.model import Transformer

QuantMode = Literal["none", "int8", "int4"]
MODES: tuple[str, ...] = ("none", "int8", "int4")
INT4_GROUP_SIZES: tuple[int, ...] = (32, 64, 128, 256)  # what the int4 CPU kernel accepts
_KERNEL_DTYPE = torch.bfloat16  # the packed CPU kernels are vectorised for bf16 activations only


def _bf16_exact(t: torch.Tensor) -> torch.Tensor:
    """t rounded to the nearest bf16 value, kept in fp32."""
    return t.to(torch.bfloat16).to(torch.float32)


# ---------------------------------------------------------------------------------------------
# The schemes as pure functions (the tests hold them against a naive loop).


def quantize_int8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row symmetric int8: (q int8 [N, K], scales fp32 [N]) with w ~ q * scales[:, None]."""
    w = w.detach().float()
    scales = _bf16_exact((w.abs().amax(dim=1) / 127).clamp_min(1e-8))
    q = torch.round(w / scales[:, None]).clamp_(-127, 127).to(torch.int8)
    return q, scales


def dequantize_int8(q: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    return q.float() * scales.float()[:, None]


def quantize_int4(
    w: torch.Tensor, group_size: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Group-wise asymmetric int4 over the input dimension: (q uint8 [N, K] holding 0..15,
    scales fp32 [N, K // group_size], zeros fp32 [N, K // group_size]) with
    w[n, k] ~ (q[n, k] - 8) * scales[n, g] + zeros[n, g], g = k // group_size."""
    N, K = w.shape
    if K % group_size:
        raise ValueError(f"in_features={K} is not a multiple of group_size={group_size}")
    g = w.detach().float().reshape(N, K // group_size, group_size)
    lo, hi = g.amin(dim=-1), g.amax(dim=-1)
    scales = _bf16_exact(((hi - lo) / 15).clamp_min(1e-6))
    zeros = _bf16_exact(lo + scales * 8)  # the value that q = 8 stands for: mid-range
    q = torch.round((g - zeros[..., None]) / scales[..., None] + 8).clamp_(0, 15).to(torch.uint8)
    return q.reshape(N, K), scales, zeros


def dequantize_int4(
    q: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, group_size: int
) -> torch.Tensor:
    N, K = q.shape
    g = q.float().reshape(N, K // group_size, group_size)
    return ((g - 8) * scales[..., None] + zeros[..., None]).reshape(N, K)


def _pack_nibbles(q: torch.Tensor) -> torch.Tensor:
    """uint8 [N, K] of 0..15 -> uint8 [N, K // 2], two values a byte (the fallback's storage)."""
    return (q[:, 0::2] << 4) | q[:, 1::2]


def _unpack_nibbles(p: torch.Tensor) -> torch.Tensor:
    return torch.stack([p >> 4, p & 15], dim=-1).reshape(p.shape[0], -1)


def _cpu_kernels_available() -> bool:
    return hasattr(torch.ops.aten, "_weight_int8pack_mm") and hasattr(
        torch.ops.aten, "_weight_int4pack_mm_for_cpu"
    )


# ---------------------------------------------------------------------------------------------
# Modules


class Int8Linear(nn.Module):
    qweight: torch.Tensor
    scales: torch.Tensor
    bias: torch.Tensor | None
    """nn.Linear with an int8 weight (per-output-channel scales)."""

    def __init__(
        self, q: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None, *, packed: bool
    ) -> None:
        super().__init__()
        self.out_features, self.in_features = q.shape
        # True: the CPU kernel (bf16 activations); False: dequantize-then-matmul
        self.packed = packed
        self.register_buffer("qweight", q)
        self.register_buffer("scales", scales.to(_KERNEL_DTYPE) if packed else scales)
        self.register_buffer("bias", bias)

    @classmethod
    def from_linear(cls, lin: nn.Linear, *, backend: str = "auto") -> Int8Linear:
        q, s = quantize_int8(lin.weight)
        packed = _use_packed(backend, lin.weight.device)
        bias = lin.bias.detach().clone() if lin.bias is not None else None
        return cls(q, s, bias, packed=packed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed:
            y = torch.ops.aten._weight_int8pack_mm(
                x.reshape(-1, self.in_features).to(_KERNEL_DTYPE), self.qweight, self.scales
            )
            y = y.to(x.dtype).view(*x.shape[:-1], self.out_features)
        else:
            y = F.linear(x, self.qweight.to(x.dtype)) * self.scales.to(x.dtype)
        return y if self.bias is None else y + self.bias.to(y.dtype)

    def dequantized_weight(self) -> torch.Tensor:
        return dequantize_int8(self.qweight, self.scales.float())

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, packed={self.packed}"


class Int4Linear(nn.Module):
    """nn.Linear with a group-wise int4 weight."""

    qweight: torch.Tensor
    scales: torch.Tensor
    zeros: torch.Tensor
    scales_and_zeros: torch.Tensor
    bias: torch.Tensor | None

    def __init__(
        self,
        q: torch.Tensor,
        scales: torch.Tensor,
        zeros: torch.Tensor,
        bias: torch.Tensor | None,
        group_size: int,
        *,
        packed: bool,
    ) -> None:
        super().__init__()
        self.out_features, self.in_features = q.shape
        self.group_size = group_size
        self.packed = packed
        if packed:
            # The kernel's own layout: weight packed by the kernel, (scale, zero) as [K / group, N, 2].
            self.register_buffer(
                "qweight", torch.ops.aten._convert_weight_to_int4pack_for_cpu(q.to(torch.int32), 1)
            )
            self.register_buffer(
                "scales_and_zeros",
                torch.stack([scales, zeros], dim=-1).transpose(0, 1).contiguous().to(_KERNEL_DTYPE),
            )
        else:
            self.register_buffer("qweight", _pack_nibbles(q))
            self.register_buffer("scales", scales)
            self.register_buffer("zeros", zeros)
        self.register_buffer("bias", bias)

    @classmethod
    def from_linear(cls, lin: nn.Linear, group_size: int, *, backend: str = "auto") -> Int4Linear:
        N, _K = lin.weight.shape
        q, s, z = quantize_int4(lin.weight, group_size)
        packed = (
            _use_packed(backend, lin.weight.device)
            and N % 16 == 0
            and group_size in INT4_GROUP_SIZES
        )
        bias = lin.bias.detach().clone() if lin.bias is not None else None
        return cls(q, s, z, bias, group_size, packed=packed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed:
            y = torch.ops.aten._weight_int4pack_mm_for_cpu(
                x.reshape(-1, self.in_features).to(_KERNEL_DTYPE),
                self.qweight,
                self.group_size,
                self.scales_and_zeros,
            )
            y = y.to(x.dtype).view(*x.shape[:-1], self.out_features)
        else:
            y = F.linear(x, self.dequantized_weight().to(x.dtype))
        return y if self.bias is None else y + self.bias.to(y.dtype)

    def dequantized_weight(self) -> torch.Tensor:
        if self.packed:
            # read back through the kernel: identity activations give the weight's columns
            eye = torch.eye(self.in_features, dtype=_KERNEL_DTYPE, device=self.qweight.device)
            return (
                torch.ops.aten._weight_int4pack_mm_for_cpu(
                    eye, self.qweight, self.group_size, self.scales_and_zeros
                )
                .float()
                .T
            )
        return dequantize_int4(
            _unpack_nibbles(self.qweight), self.scales, self.zeros, self.group_size
        )

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, group_size={self.group_size}, packed={self.packed}"


class Int8Embedding(nn.Module):
    """nn.Embedding with int8 rows (one scale per row). When the model ties its embeddings, the
    rows are the lm_head's output channels, so one int8 tensor serves both."""

    qweight: torch.Tensor
    scales: torch.Tensor

    def __init__(self, q: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype) -> None:
        super().__init__()
        self.num_embeddings, self.embedding_dim = q.shape
        self.dtype = dtype  # the activations' dtype, which the lookup returns
        self.register_buffer("qweight", q)
        self.register_buffer("scales", scales)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.qweight[idx].to(self.dtype) * self.scales[idx, None].to(self.dtype)


def onednn_linear_available() -> bool:
    """Whether this torch has oneDNN's prepacked linear (the ops torch.compile's CPU freezing
    pass uses): x86 and aarch64 builds with mkldnn."""
    return (
        torch.backends.mkldnn.is_available()
        and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
        and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    )


class PackedLinear(nn.Module):
    """An fp32 nn.Linear for CPU inference with its weight reordered once into oneDNN's blocked
    layout (for batch-1 rows), multiplied by oneDNN's kernel. The same math as F.linear to
    rounding; why it exists: at batch 1 a linear is a matrix-vector product whose speed is memory
    bandwidth, and torch's default fp32 path (MKL's sgemv) streams weights at about half the rate
    of this one on the AMD CPUs we measured (bench/decode.py, docs/LOG.md). Inference only: the
    op has no backward, and the packed weight has no storage to save or move."""

    packed_weight: torch.Tensor
    bias: torch.Tensor | None

    def __init__(self, lin: nn.Linear) -> None:
        super().__init__()
        if lin.weight.device.type != "cpu" or lin.weight.dtype != torch.float32:
            raise ValueError(
                f"PackedLinear packs fp32 CPU weights, not {lin.weight.dtype} on {lin.weight.device}"
            )
        self.out_features, self.in_features = lin.weight.shape
        self.register_buffer(
            "packed_weight", torch.ops.mkldnn._reorder_linear_weight(lin.weight.detach(), 1)
        )
        self.register_buffer("bias", lin.bias.detach().clone() if lin.bias is not None else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(
            x.contiguous(), self.packed_weight, self.bias, "none", [], ""
        )

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, onednn packed"


@torch.no_grad()
def pack_linears(model: nn.Module) -> list[str]:
    """Replace, in place, every fp32 CPU nn.Linear of `model` with a PackedLinear; return the
    names replaced ([] when this torch has no oneDNN). A tied lm_head gets its own packed copy
    (the embedding keeps the original for lookups)."""
    if not onednn_linear_available():
        return []
    done = []
    for name, lin in [(n, m) for n, m in model.named_modules() if type(m) is nn.Linear]:
        if lin.weight.device.type != "cpu" or lin.weight.dtype != torch.float32:
            continue
        parent_name, _, child = name.rpartition(".")
        setattr(
            model.get_submodule(parent_name) if parent_name else model, child, PackedLinear(lin)
        )
        done.append(name)
    return done


def _use_packed(backend: str, device: torch.device) -> bool:
    if backend not in ("auto", "packed", "dequant"):
        raise ValueError(f"backend={backend!r}: expected auto, packed or dequant")
    if backend == "dequant":
        return False
    ok = device.type == "cpu" and _cpu_kernels_available()
    if backend == "packed" and not ok:
        raise TwofilesError(
            f"packed int8/int4 kernels need a CPU tensor and torch >= 2.6 (got {device.type}, torch {torch.__version__})"
        )
    return ok


# ---------------------------------------------------------------------------------------------
# Whole models


@dataclass
class QuantReport:
    mode: str  # "int8" or "int4"
    group_size: int  # int4 group size (0 for int8)
    layers: dict[str, str] = field(
        default_factory=dict
    )  # module name -> what replaced it, e.g. "int4 packed"
    bytes_before: int = 0  # parameter bytes before (tied tensors counted once)
    bytes_after: int = 0  # parameter + buffer bytes after


def _tensor_bytes(module: nn.Module) -> int:
    seen: set[int] = set()
    total = 0
    for t in module.state_dict(
        keep_vars=True
    ).values():  # persistent tensors only: not the RoPE tables
        key = (
            t.data_ptr() if t.layout == torch.strided else id(t)
        )  # oneDNN-packed weights have no storage
        if key in seen:
            continue
        seen.add(key)
        total += t.numel() * t.element_size()
    return total


@torch.no_grad()
def quantize_model(
    model: Transformer,
    mode: QuantMode,
    *,
    group_size: int = 32,
    embedding: bool = False,
    backend: str = "auto",
) -> QuantReport:
    """Replace, in place, every nn.Linear of `model` (lm_head included) with an int8 or int4 one.
    int4 layers whose in_features is not a multiple of `group_size` become int8 instead (the
    report says which). `embedding=True` also stores the token embedding as int8 rows: it saves
    memory, not time (a lookup reads one row per token). backend: "auto" (packed CPU kernels where
    they apply, dequantize-then-matmul elsewhere), "packed" or "dequant" (to compare them)."""
    if mode not in ("int8", "int4"):
        raise TwofilesError(f"quantize={mode!r}: expected int8 or int4")
    if mode == "int4" and group_size not in INT4_GROUP_SIZES:
        raise TwofilesError(f"group_size={group_size}: expected one of {INT4_GROUP_SIZES}")
    report = QuantReport(
        mode=mode, group_size=group_size if mode == "int4" else 0, bytes_before=_tensor_bytes(model)
    )
    tied = model.lm_head.weight is model.model.embed_tokens.weight
    act_dtype = model.model.embed_tokens.weight.dtype
    targets = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    for name, lin in targets:
        if mode == "int4" and lin.in_features % group_size == 0:
            new: nn.Module = Int4Linear.from_linear(lin, group_size, backend=backend)
            what = "int4"
        else:
            new = Int8Linear.from_linear(lin, backend=backend)
            what = "int8"
        report.layers[name] = f"{what} {'packed' if new.packed else 'dequant'}"
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, new)
    if embedding:
        head = model.lm_head
        if tied and isinstance(head, Int8Linear):
            q, s = head.qweight, head.scales.float() if head.packed else head.scales
        else:
            q, s = quantize_int8(model.model.embed_tokens.weight)
        # the backbone's slot is typed nn.Embedding for training code; any lookup module fits it
        model.model.embed_tokens = Int8Embedding(q, s, act_dtype)  # type: ignore[assignment]
        report.layers["model.embed_tokens"] = "int8 rows" + (
            " (shared with lm_head)" if q is getattr(head, "qweight", None) else ""
        )
    report.bytes_after = _tensor_bytes(model)
    return report


# ---------------------------------------------------------------------------------------------
# The one call verbs make


@dataclass
class InferenceSetup:
    quantize: str  # "none", "int8" or "int4"
    dtype: str  # the weights' dtype for the non-quantized parts ("float32", "bfloat16")
    compiled: bool  # torch.compile applied to the model's forward
    threads: int  # torch's intra-op CPU threads
    reasons: list[str] = field(default_factory=list)  # why each choice was made
    report: QuantReport | None = None  # what quantization replaced
    seconds: float = 0.0  # time spent preparing (quantizing, casting; compile happens lazily)


def prepare_for_inference(
    loaded: LoadedModel | Transformer,
    *,
    quantize: str = "none",
    group_size: int = 32,
    compile: bool = False,
    threads: int | None = None,
    dtype: str = "auto",
    fuse: bool = True,
    pack: bool = True,
) -> InferenceSetup:
    """Get a loaded model (in place) ready to generate: the inference dtype (runtime's precision
    decision: bf16 weights on CUDA, fp32 on CPU), the fused projection layout (`fuse`:
    Transformer.fuse_projections), then weight quantization, or with fp32 weights on CPU oneDNN's
    prepacked linears (`pack`: PackedLinear), CPU threads, and torch.compile of the forward pass
    (compiled lazily, on the first call). The model is for inference afterwards: fused and packed
    layouts are not the training layout, and are not saved."""
    from twofiles.runtime import precision_for

    t0 = time.perf_counter()
    model = loaded if isinstance(loaded, nn.Module) else loaded.model
    if quantize not in MODES:
        raise TwofilesError(f"quantize={quantize!r}: expected one of {', '.join(MODES)}")
    reasons: list[str] = []
    if threads is not None:
        if threads < 1:
            raise TwofilesError(f"threads={threads}: must be >= 1")
        torch.set_num_threads(threads)
        reasons.append(f"{threads} CPU threads: requested")
    device = model.rope_cos.device
    amp, why = precision_for(device, dtype, purpose="inference")
    if amp is not None and model.model.embed_tokens.weight.dtype != amp:
        # Inference has no optimizer state to keep in fp32: cast the weights themselves instead of
        # autocasting. The RoPE tables stay fp32 (each forward casts the rows it uses).
        cos, sin = model.rope_cos, model.rope_sin
        model.to(amp)
        model.rope_cos, model.rope_sin = cos, sin
    reasons.append(
        f"{str(model.model.embed_tokens.weight.dtype).replace('torch.', '')} weights: {why}"
    )
    if fuse:
        n = model.fuse_projections()
        reasons.append(f"fused projections: {n} groups (q/k/v and gate/up, one matmul each)")
    report = None
    if (
        quantize == "none"
        and pack
        and device.type == "cpu"
        and model.model.norm.weight.dtype == torch.float32
    ):
        if compile:  # inductor lowers oneDNN's linear only for weights it froze itself
            reasons.append("fp32 linears: packing left to torch.compile")
        else:
            packed = pack_linears(model)
            reasons.append(
                f"oneDNN packed fp32 linears: {len(packed)}"
                if packed
                else "fp32 linears unpacked: this torch has no oneDNN"
            )
    if quantize != "none":
        report = quantize_model(model, quantize, group_size=group_size)  # type: ignore[arg-type]
        kinds = sorted(set(report.layers.values()))
        reasons.append(
            f"{quantize}: {', '.join(kinds)}; {report.bytes_before / 1e6:.0f} MB -> {report.bytes_after / 1e6:.0f} MB"
        )
    if compile:
        model.compile(dynamic=True)
        reasons.append("torch.compile: requested (compiles on the first calls)")
    return InferenceSetup(
        quantize=quantize,
        dtype=str(model.model.norm.weight.dtype).replace("torch.", ""),
        compiled=compile,
        threads=torch.get_num_threads(),
        reasons=reasons,
        report=report,
        seconds=time.perf_counter() - t0,
    )


__all__ = [
    "MODES",
    "InferenceSetup",
    "Int4Linear",
    "Int8Embedding",
    "Int8Linear",
    "PackedLinear",
    "QuantMode",
    "QuantReport",
    "dequantize_int4",
    "dequantize_int8",
    "onednn_linear_available",
    "pack_linears",
    "prepare_for_inference",
    "quantize_int4",
    "quantize_int8",
    "quantize_model",
]
