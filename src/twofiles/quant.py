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
from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from twofiles import decode_probe
from twofiles.decode_probe import int_kernels_available, onednn_linear_available
from twofiles.errors import TwofilesError

if TYPE_CHECKING:
    from twofiles.artifact import LoadedModel
    from twofiles.model import ModelConfig, Transformer

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


class PackedLinear(nn.Module):
    """An fp32 or bf16 nn.Linear for CPU inference with its weight reordered once into oneDNN's
    blocked layout (for batch-1 rows), multiplied by oneDNN's kernel. The same math as F.linear to
    rounding; why it exists: at batch 1 a linear is a matrix-vector product whose speed is memory
    bandwidth, and torch's default fp32 path (MKL's sgemv) streams weights at about half the rate
    of this one on the AMD CPUs we measured; torch's bf16 F.linear at one row is slower still
    (it reorders the weight on every call: 3-4x this op, decode_probe's figures). Inference only:
    the op has no backward, and the packed weight has no storage to save or move."""

    packed_weight: torch.Tensor
    bias: torch.Tensor | None

    def __init__(self, lin: nn.Linear, dtype: torch.dtype | None = None) -> None:
        """`dtype`: the weight's storage (default: the Linear's own); activations in another
        dtype are cast to it for the product and the result cast back, so a model can keep fp32
        activations, norms and attention around bf16 weights."""
        super().__init__()
        self.dtype = dtype or lin.weight.dtype
        if lin.weight.device.type != "cpu" or self.dtype not in PACKED_DTYPES:
            raise ValueError(
                f"PackedLinear packs fp32 or bf16 CPU weights, not {self.dtype} on {lin.weight.device}"
            )
        self.out_features, self.in_features = lin.weight.shape
        w = lin.weight.detach().to(self.dtype)
        self.register_buffer("packed_weight", torch.ops.mkldnn._reorder_linear_weight(w, 1))
        bias = lin.bias.detach().to(self.dtype).clone() if lin.bias is not None else None
        self.register_buffer("bias", bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == self.dtype:
            return torch.ops.mkldnn._linear_pointwise(
                x.contiguous(), self.packed_weight, self.bias, "none", [], ""
            )
        # fp32 activations, bf16 weights: the activation split into two bf16 rows, hi = x rounded
        # and lo = what rounding lost, in one product (the weight is read once, and a product at
        # batch 1 costs what reading the weight costs) and summed in fp32. Rounding x itself flipped
        # smollm2's greedy reply to a chat question (a 0.152 / 0.140 margin became a tie); with the
        # split only the weights are rounded: top-1 against fp32 0.979 instead of 0.974 (docs/LOG.md).
        rows = x.reshape(-1, self.in_features)
        hi = rows.to(self.dtype)
        lo = (rows - hi.to(rows.dtype)).to(self.dtype)
        y = torch.ops.mkldnn._linear_pointwise(
            torch.cat([hi, lo]), self.packed_weight, None, "none", [], ""
        ).to(x.dtype)
        n = rows.shape[0]
        y = y[:n] + y[n:]
        if self.bias is not None:
            y = y + self.bias.to(x.dtype)
        return y.view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        dt = str(self.dtype).replace("torch.", "")
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, onednn packed {dt}"


PACKED_DTYPES = (torch.float32, torch.bfloat16)


@torch.no_grad()
def pack_linears(model: nn.Module, dtype: torch.dtype | None = None) -> list[str]:
    """Replace, in place, every fp32 or bf16 CPU nn.Linear of `model` with a PackedLinear storing
    its weight in `dtype` (default: as it is); return the names replaced ([] when this torch has
    no oneDNN). A tied lm_head gets its own packed copy (the embedding keeps the original for
    lookups)."""
    if not onednn_linear_available():
        return []
    done = []
    for name, lin in [(n, m) for n, m in model.named_modules() if type(m) is nn.Linear]:
        if lin.weight.device.type != "cpu" or lin.weight.dtype not in PACKED_DTYPES:
            continue
        parent_name, _, child = name.rpartition(".")
        setattr(
            model.get_submodule(parent_name) if parent_name else model,
            child,
            PackedLinear(lin, dtype),
        )
        done.append(name)
    return done


def _use_packed(backend: str, device: torch.device) -> bool:
    if backend not in ("auto", "packed", "dequant"):
        raise ValueError(f"backend={backend!r}: expected auto, packed or dequant")
    if backend == "dequant":
        return False
    ok = device.type == "cpu" and int_kernels_available()
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

LAYOUTS: tuple[str, ...] = ("auto", "packed", "fused", "plain")
# The plain layout (q, k, v, gate and up as separate products) is chosen only when the probe finds
# it this much faster than the fused one: the probe times the products alone, and the fused layout
# also saves three calls' overhead per layer that it does not see (fp32-packed on smollm2: fused
# 18.2 against plain 18.0 ms in the probe, yet the fused model decodes faster), and the probe's
# spread under load is ~5-10%.
PLAIN_MIN_GAIN = 0.87
# Below this many bytes of fp32 weights a model stays in the caches (the smallest L3 of the CPUs
# seen here is 32 MB): its decode step is per-op overhead, which no weight format changes, so it
# is not probed and keeps fp32, fused, packed, torch's threads; the same answer on every run.
SMALL_MODEL_BYTES = 32 * 2**20
INFERENCE_DTYPES: tuple[str, ...] = ("auto", "fp32", "bf16", "fp16")


@dataclass
class InferenceSetup:
    quantize: str  # "none", "int8" or "int4"
    dtype: str  # the linears' weight dtype when not quantized ("float32", "bfloat16")
    compiled: bool  # torch.compile applied to the model's blocks
    threads: int  # torch's intra-op CPU threads
    reasons: list[str] = field(default_factory=list)  # why each choice was made
    report: QuantReport | None = None  # what quantization replaced
    seconds: float = 0.0  # time spent preparing (probe, quantizing, casting; compile is lazy)
    activations: str = "float32"  # the dtype between layers (norms, attention, the KV cache)
    format: str = ""  # the linears' weight format: fp32, fp32-packed, bf16, bf16-packed, int8, int4
    layout: str = ""  # "fused" (q/k/v and gate/up as one matmul each) or "plain"
    # the probe's figures: format -> ms per token of weight products, each at its fastest threads
    # (or at the threads asked for)
    probe_ms: dict[str, float] = field(default_factory=dict)
    probe_seconds: float = 0.0  # time the probe took in this process (0 when read from its cache)
    forced: list[str] = field(default_factory=list)  # the choices a caller made, not the probe

    def to_dict(self) -> dict[str, Any]:
        """The summary `generate --json` reports under "inference"."""
        return {
            "format": self.format,
            "dtype": self.dtype,
            "activations": self.activations,
            "layout": self.layout,
            "quantize": self.quantize,
            "compiled": self.compiled,
            "threads": self.threads,
            "forced": self.forced,
            "probe_ms_per_token": self.probe_ms,
            "probe_seconds": round(self.probe_seconds, 3),
            "prepare_seconds": round(self.seconds, 3),
            "reasons": self.reasons,
        }


def compile_blocks(model: Transformer) -> int:
    """torch.compile each transformer block (regional compilation): the blocks share one code
    object and their weights are graph inputs, so one block's graph serves every layer, and the
    first compile takes seconds where compiling the whole model took half a minute (smollm2, 30
    layers: 15 s cold, 3 s with inductor's on-disk cache, against 32 s; docs/LOG.md). Dynamic
    shapes: the prompt length, position and cache length change without recompiling."""
    for layer in model.model.layers:
        layer.compile(dynamic=True)
    return len(model.model.layers)


def _short(dtype: torch.dtype) -> str:
    return {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}.get(
        dtype, str(dtype)
    )


def _cast(model: Transformer, dtype: torch.dtype) -> None:
    """Weights to `dtype` in place; the RoPE tables stay fp32 (each forward casts the rows it uses)."""
    cos, sin = model.rope_cos, model.rope_sin
    model.to(dtype)
    model.rope_cos, model.rope_sin = cos, sin


def _dense_formats(dtype: str, layout: str, compile: bool | None) -> list[str]:
    """The weight formats a dense (unquantized) CPU model may take under the caller's choices."""
    out = list(decode_probe.available_formats())
    precision = {"fp32": ("fp32",), "bf16": ("bf16",)}.get(dtype, ("fp32", "bf16"))
    out = [f for f in out if f.split("-")[0] in precision]
    if layout == "packed":
        out = [f for f in out if f.endswith("-packed")] or out
    elif layout in ("fused", "plain") or compile:  # inductor cannot take oneDNN's packed weights
        out = [f for f in out if not f.endswith("-packed")]
    return out


def _choose_on_cpu(
    cfg: ModelConfig,
    quantize: str,
    dtype: str,
    layout: str,
    compile: bool | None,
    threads: int | None,
    fuse: bool,
) -> tuple[str, bool, dict[str, float], float, list[str]]:
    """The decode probe's choice for a CPU model: (format, fused, ms per token by format, seconds
    the probe took here, reasons). Sets torch's threads to the fastest count unless `threads`
    was given. The format is "" where nothing was probed (a model that stays in the caches, fp16,
    a torch without the kernels): the caller falls back to runtime's decision."""
    weight_bytes = 4 * cfg.num_params(embeddings=False)
    if weight_bytes < SMALL_MODEL_BYTES:
        return "", fuse, {}, 0.0, [
            f"no decode probe: {weight_bytes / 2**20:.1f} MB of weights stay in the caches, so "
            "per-op overhead, not weight streaming, bounds a step"
        ]  # fmt: skip
    if dtype not in ("auto", "fp32", "bf16"):
        return "", fuse, {}, 0.0, []
    if quantize != "none":
        candidates = [quantize] if quantize in decode_probe.available_formats() else []
    else:
        candidates = _dense_formats(dtype, layout, compile)
    if not candidates:
        return "", fuse, {}, 0.0, []
    dims = (
        cfg.dim, cfg.hidden_dim, cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim,
        cfg.n_layers, cfg.vocab_size,
    )  # fmt: skip
    t0 = time.perf_counter()
    measured = decode_probe.probe_decode(
        decode_probe.decode_shapes(*dims, fused=layout != "plain"),
        candidates,
        threads=[threads] if threads is not None else None,
    )
    probe_s = 0.0 if measured.from_cache else time.perf_counter() - t0
    best = {f: measured.step_s(f, threads) for f in candidates}  # each at its fastest threads
    reasons = []
    if quantize != "none":
        fmt = quantize
    else:
        fmt, why = decode_probe.choose_dense(best)
        reasons.append(f"{fmt} weights: {why}")
    if threads is None:
        n = measured.best_threads(fmt)
        torch.set_num_threads(n)
        reasons.append(f"{n} CPU threads: fastest for {fmt} of {sorted(measured.seconds[fmt])}")
    if layout == "auto":  # the fused layout reads the same bytes in fewer, larger products
        n = torch.get_num_threads()
        plain = decode_probe.probe_decode(
            decode_probe.decode_shapes(*dims, fused=False), [fmt], threads=[n]
        )
        fused_s, plain_s = measured.step_s(fmt, n), plain.step_s(fmt, n)
        fuse = plain_s >= PLAIN_MIN_GAIN * fused_s
        reasons.append(
            f"{'fused' if fuse else 'plain'} layout: fused {fused_s * 1e3:.1f} vs "
            f"plain {plain_s * 1e3:.1f} ms/token of {fmt} weight products"
        )
    where = (
        f"cached {measured.cache_path}" if measured.cache_path else measured.note or "not cached"
    )
    where += f", probed {measured.probed_at}" if measured.probed_at else ""
    reasons.append(f"decode probe: {where}" + (f", {probe_s:.1f}s" if probe_s else ""))
    return fmt, fuse, {f: round(v * 1e3, 2) for f, v in best.items()}, probe_s, reasons


def prepare_for_inference(
    loaded: LoadedModel | Transformer,
    *,
    quantize: str = "none",
    group_size: int = 32,
    compile: bool | None = None,
    threads: int | None = None,
    dtype: str = "auto",
    layout: str = "auto",
    probe: bool = True,
) -> InferenceSetup:
    """Get a loaded model (in place) ready to generate, choosing what is fastest on this machine.

    On CPU a short measured probe (decode_probe: one token's weight products in each format and
    thread count, at the model's own shapes, cached per machine) picks the weights' format, fp32
    or bf16, oneDNN-packed or not, the fused or plain projection layout, and the thread count; bf16
    only where it is at least BF16_MIN_GAIN faster, since it rounds the weights. Quantized models
    (int8 / int4, the caller's choice) get the packed kernels, the probe's thread count and, where
    inductor can run (a C++ compiler), torch.compile of each block: the eager int4 step is a third
    Python overhead. On CUDA: bf16 weights where supported (runtime), fused, uncompiled unless asked.

    Every argument other than "auto" / None forces that choice: dtype fp32|bf16|fp16, layout
    packed|fused|plain, compile True|False, threads N. `probe=False` skips the probe (fused fp32
    packed, the measured default of the AVX2 / AVX-512 CPUs) for callers that must not time
    anything. The model is for inference afterwards: fused and packed layouts are not the training
    layout, and are not saved. The returned InferenceSetup says what was chosen and why."""
    from twofiles.runtime import can_compile, precision_for

    t0 = time.perf_counter()
    model = loaded if isinstance(loaded, nn.Module) else loaded.model
    if quantize not in MODES:
        raise TwofilesError(f"quantize={quantize!r}: expected one of {', '.join(MODES)}")
    if layout not in LAYOUTS:
        raise TwofilesError(f"layout={layout!r}: expected one of {', '.join(LAYOUTS)}")
    if dtype not in INFERENCE_DTYPES:
        raise TwofilesError(f"dtype={dtype!r}: expected one of {', '.join(INFERENCE_DTYPES)}")
    if threads is not None and threads < 1:
        raise TwofilesError(f"threads={threads}: must be >= 1")
    forced = [
        name
        for name, given in (
            ("dtype", dtype != "auto"),
            ("layout", layout != "auto"),
            ("compile", compile is not None),
            ("threads", threads is not None),
        )
        if given
    ]
    reasons: list[str] = []
    device = model.rope_cos.device
    cfg = model.config
    cpu = device.type == "cpu"
    stored = model.model.norm.weight.dtype
    fmt = ""
    probe_ms: dict[str, float] = {}
    probe_s = 0.0
    fuse = layout in ("auto", "packed", "fused")
    if threads is not None:
        torch.set_num_threads(threads)
        reasons.append(f"{threads} CPU threads: requested")

    if cpu and probe:
        fmt, fuse, probe_ms, probe_s, chosen = _choose_on_cpu(
            cfg, quantize, dtype, layout, compile, threads, fuse
        )
        reasons += chosen

    if quantize == "none":
        if not fmt:  # no probe (CUDA / MPS, fp16, small, probe=False): runtime's decision
            amp, why = precision_for(
                device, "fp32" if dtype == "auto" and cpu else dtype, purpose="inference"
            )
            fmt = _short(amp or torch.float32)
            packable = fmt != "fp16" and onednn_linear_available()
            if cpu and layout in ("auto", "packed") and not compile and packable:
                fmt += "-packed"
            reasons.append(f"{fmt} weights: {why if not (cpu and dtype == 'auto') else 'no probe'}")
        pack = fmt.endswith("-packed")
        weights = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(
            fmt.split("-")[0], torch.float32
        )
        # packed bf16 weights keep fp32 activations (norms, attention, the KV cache): torch's bf16
        # attention at one query row is 5-9x its fp32 (68 against 14 us at 128 cached tokens,
        # 474 against 55 at 1024; docs/LOG.md), and the residual stream keeps its precision
        want = stored if pack else weights
    else:  # quantized: activations stay in the stored dtype unless asked (the kernels cast)
        pack = False
        fmt = fmt or quantize
        want = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(dtype, stored)
        if dtype == "auto" and not cpu:
            amp, why = precision_for(device, "auto", purpose="inference")
            want = amp or stored
        weights = want
    if want != stored:
        _cast(model, want)
    if fuse:
        n = model.fuse_projections()
        reasons.append(f"fused projections: {n} groups (q/k/v and gate/up, one matmul each)")
    report = None
    if pack:
        packed = pack_linears(model, weights)  # packed formats are offered only with oneDNN
        reasons.append(
            f"oneDNN packed {_short(weights)} linears: {len(packed)}, {_short(want)} activations"
        )
    elif quantize == "none" and cpu and compile:
        reasons.append("linears unpacked: torch.compile cannot take oneDNN's packed weights")
    if quantize != "none":
        report = quantize_model(model, quantize, group_size=group_size)  # type: ignore[arg-type]
        kinds = sorted(set(report.layers.values()))
        reasons.append(
            f"{quantize}: {', '.join(kinds)}; {report.bytes_before / 1e6:.0f} MB -> {report.bytes_after / 1e6:.0f} MB"
        )
    do_compile = bool(compile)
    if compile is None and quantize != "none" and cpu:
        ok, why = can_compile(device)
        do_compile = ok
        reasons.append(
            "torch.compile per block: the quantized step is otherwise a third Python overhead; "
            + why
            if ok
            else f"eager: {why}"
        )
        if ok:  # chosen, not asked for: a compile that fails falls back to eager, not to an error
            import torch._dynamo.config as dynamo_config

            dynamo_config.suppress_errors = True
    elif compile:
        reasons.append("torch.compile per block: requested")
    if do_compile:
        compile_blocks(model)
    return InferenceSetup(
        quantize=quantize,
        dtype=str(weights).replace("torch.", ""),
        activations=str(model.model.norm.weight.dtype).replace("torch.", ""),
        compiled=do_compile,
        threads=torch.get_num_threads(),
        reasons=reasons,
        report=report,
        seconds=time.perf_counter() - t0,
        format=fmt,
        layout="fused" if fuse else "plain",
        probe_ms=probe_ms,
        probe_seconds=probe_s,
        forced=forced,
    )


__all__ = [
    "INFERENCE_DTYPES",
    "LAYOUTS",
    "MODES",
    "InferenceSetup",
    "Int4Linear",
    "Int8Embedding",
    "Int8Linear",
    "PackedLinear",
    "QuantMode",
    "QuantReport",
    "compile_blocks",
    "dequantize_int4",
    "dequantize_int8",
    "onednn_linear_available",
    "pack_linears",
    "prepare_for_inference",
    "quantize_int4",
    "quantize_int8",
    "quantize_model",
]
