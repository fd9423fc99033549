"""The model: a Llama-style decoder-only transformer, as plain math.

What it owns: ModelConfig, the Transformer module, weight initialisation, a static KV cache for
decoding, and the FLOP count used for MFU. What it leaves to others: device and dtype (runtime),
compile / DDP (applied from outside by the trainer), optimizers (optim), I/O (artifact, formats),
sampling (engine).

Notable choices:
- Parameter names equal Hugging Face `LlamaForCausalLM`'s (`model.layers.0.self_attn.q_proj.weight`
  ...), and RoPE uses the same "rotate half" layout, so import/export to HF is the identity map.
- RMSNorm pre-norm, rotary position embeddings, grouped-query attention, SwiGLU MLP, optional
  tied input/output embeddings, optional qkv bias (Qwen2-style).
- Output projections of each block (o_proj, down_proj) start at zero, so at step 0 every block is
  the identity and the model is a bigram model (modded-nanogpt; speeds up early training).
- The loss is computed on fp32 logits whatever the autocast dtype.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class ModelConfig:
    vocab_size: int = 4096  # tokens in the vocabulary (specials included)
    dim: int = 256  # residual stream width (HF: hidden_size)
    n_layers: int = 4  # transformer blocks (HF: num_hidden_layers)
    n_heads: int = 4  # query heads (HF: num_attention_heads)
    n_kv_heads: int = 4  # key/value heads; < n_heads is grouped-query attention
    hidden_dim: int = 768  # SwiGLU inner width (HF: intermediate_size)
    max_seq_len: int = 256  # longest context the model is trained / run at
    rope_theta: float = 10000.0  # RoPE base
    norm_eps: float = 1e-5  # RMSNorm epsilon
    tie_embeddings: bool = False  # share embed_tokens and lm_head
    qkv_bias: bool = False  # bias on q/k/v projections (Qwen2-style checkpoints)
    # Llama 3.1+ RoPE frequency scaling, HF's dict: {"rope_type": "llama3", "factor",
    # "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"}; None = plain RoPE
    rope_scaling: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.dim % self.n_heads:
            raise ValueError(f"dim={self.dim} is not divisible by n_heads={self.n_heads}")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(
                f"n_heads={self.n_heads} is not divisible by n_kv_heads={self.n_kv_heads}"
            )
        if (self.dim // self.n_heads) % 2:
            raise ValueError("head dimension must be even for RoPE")
        if self.rope_scaling is not None:
            check_rope_scaling(self.rope_scaling)

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown model config fields: {sorted(unknown)}")
        return cls(**d)

    def num_params(self, *, embeddings: bool = True) -> int:
        d, h, L, V = self.dim, self.hidden_dim, self.n_layers, self.vocab_size
        kv = self.n_kv_heads * self.head_dim
        per_layer = d * d * 2 + d * kv * 2 + 3 * d * h + 2 * d
        if self.qkv_bias:
            per_layer += d + 2 * kv
        n = L * per_layer + d
        if embeddings:
            n += V * d * (1 if self.tie_embeddings else 2)
        else:
            n += V * d  # lm_head is a matmul (tied or not): only the embedding lookup is excluded
        return n

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token (forward + backward): 6 per matmul parameter plus 12 * L * d * T
        for attention scores and values (PaLM appendix B, the usual MFU convention; it counts the
        full T x T score matrix, not the causal half)."""
        return 6 * self.num_params(embeddings=False) + 12 * self.n_layers * self.dim * seq_len


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


LLAMA3_KEYS = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")


def check_rope_scaling(scaling: Any) -> None:
    """ValueError unless `scaling` is a usable Llama 3 RoPE scaling dict."""
    if not isinstance(scaling, dict) or scaling.get("rope_type", scaling.get("type")) != "llama3":
        raise ValueError(f"rope_scaling {scaling!r} is not supported (rope_type 'llama3' is)")
    vals: list[Any] = [scaling.get(k) for k in LLAMA3_KEYS]
    if not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < float("inf")
        for v in vals
    ):
        raise ValueError(
            f"rope_scaling needs positive numbers {', '.join(LLAMA3_KEYS)}: {scaling!r}"
        )
    if not vals[2] > vals[1]:
        raise ValueError("rope_scaling: high_freq_factor must exceed low_freq_factor")


def rope_inv_freq(
    head_dim: int,
    theta: float,
    scaling: dict[str, Any] | None = None,
    device: torch.device | None = None,
) -> torch.Tensor:
    """RoPE frequencies [head_dim / 2]. With Llama 3 scaling (Llama 3.1 paper / HF
    `_compute_llama3_parameters`): wavelengths shorter than original_context / high_freq_factor
    keep their frequency, those longer than original_context / low_freq_factor are slowed by
    `factor`, and the band between is interpolated smoothly."""
    inv_freq = 1.0 / (
        theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim)
    )
    if scaling is None:
        return inv_freq
    factor, low, high, old_len = (scaling[k] for k in LLAMA3_KEYS)
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < old_len / high) * ~(wavelen > old_len / low)
    return torch.where(medium, smoothed, scaled)


def rope_tables(
    head_dim: int,
    max_len: int,
    theta: float,
    device: torch.device | None = None,
    *,
    scaling: dict[str, Any] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables [max_len, head_dim] in HF's rotate-half layout (frequencies repeated twice)."""
    inv_freq = rope_inv_freq(head_dim, theta, scaling, device)
    t = torch.arange(max_len, dtype=torch.float32, device=device)
    freqs = torch.outer(t, inv_freq)
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos(), emb.sin()


def fold_rope_sign(sin: torch.Tensor) -> torch.Tensor:
    """sin [..., hd] with its first half negated: the table apply_rope takes."""
    half = sin.shape[-1] // 2
    return torch.cat([-sin[..., :half], sin[..., half:]], dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin_folded: torch.Tensor) -> torch.Tensor:
    """Rotate-half RoPE: x * cos + cat(-x2, x1) * sin, written as x * cos + roll(x) * sin_folded
    (sin_folded = fold_rope_sign(sin), made once per forward): bit-identical, and one roll where
    two slices, a negation and a concatenation were, for q and k in every layer of every decode step.
    x: [B, H, T, hd]; cos / sin_folded: [T, hd] or [B, 1, T, hd]."""
    return x * cos + x.roll(x.shape[-1] // 2, dims=-1) * sin_folded


class KVWrites:
    """How attention writes keys and values into buffers k / v [B, n_kv_heads, slots, head_dim]:
    KVCache holds them, and the batched decoder's views of some rows of a cache share the code."""

    k: torch.Tensor
    v: torch.Tensor

    def update(
        self, pos: int, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k/v [B, Hkv, T, hd] at slots pos..pos+T of every row; return the filled prefix."""
        T = k.shape[2]
        self.k[:, :, pos : pos + T] = k
        self.v[:, :, pos : pos + T] = v
        return self.k[:, :, : pos + T], self.v[:, :, : pos + T]

    def update_at(
        self, positions: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k/v [B, Hkv, T, hd] at each row's own slots positions [B, T]; return the whole
        cache (the caller's attention mask says which slots each query may see)."""
        B, H, T, D = k.shape
        index = positions[:, None, :, None].expand(B, H, T, D)
        self.k.scatter_(2, index, k)
        self.v.scatter_(2, index, v)
        return self.k, self.v


class KVCache(KVWrites, nn.Module):
    """Static per-layer key/value buffers [B, n_kv_heads, max_len, head_dim] (gpt-fast style)."""

    def __init__(
        self,
        batch: int,
        n_kv_heads: int,
        max_len: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        shape = (batch, n_kv_heads, max_len, head_dim)
        self.register_buffer("k", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype, device=device), persistent=False)


@torch.no_grad()
def stack_linears(*parts: nn.Module) -> nn.Linear | None:
    """One nn.Linear whose output is the parts' outputs concatenated (weights and biases stacked
    along the output dimension), or None unless every part is a plain nn.Linear."""
    linears = [p for p in parts if type(p) is nn.Linear]
    if len(linears) != len(parts):
        return None
    w = linears[0].weight
    fused = nn.Linear(
        w.shape[1],
        sum(p.out_features for p in linears),
        bias=linears[0].bias is not None,
        device=w.device,
        dtype=w.dtype,
    )
    fused.weight.copy_(torch.cat([p.weight for p in linears]))
    if fused.bias is not None:
        fused.bias.copy_(torch.cat([p.bias for p in linears]))
    return fused.requires_grad_(w.requires_grad)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        kv_dim = cfg.n_kv_heads * cfg.head_dim
        self.q_proj = nn.Linear(cfg.dim, cfg.dim, bias=cfg.qkv_bias)
        self.k_proj = nn.Linear(cfg.dim, kv_dim, bias=cfg.qkv_bias)
        self.v_proj = nn.Linear(cfg.dim, kv_dim, bias=cfg.qkv_bias)
        self.o_proj = nn.Linear(cfg.dim, cfg.dim, bias=False)
        self.qkv_proj: nn.Module | None = None  # the inference layout (fuse_projections)

    @torch.no_grad()
    def fuse_projections(self) -> bool:
        """Switch to the inference layout: q, k and v come from one matmul over the stacked
        [q; k; v] weight (and bias), read in one pass instead of three. The separate projections
        go (the state dict changes: fuse only a model you will not train or save). False, and
        nothing changed, when a projection is not a plain nn.Linear (e.g. LoRA-wrapped)."""
        if self.qkv_proj is not None:
            return True
        fused = stack_linears(self.q_proj, self.k_proj, self.v_proj)
        if fused is None:
            return False
        self.qkv_proj = fused
        self.q_proj = self.k_proj = self.v_proj = None  # type: ignore[assignment]
        return True

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        cache: KVWrites | None,
        pos: int,
        positions: torch.Tensor | None = None,
        attn_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        B, T, _ = x.shape
        if self.qkv_proj is not None:
            kv_dim = self.n_kv_heads * self.head_dim
            q, k, v = self.qkv_proj(x).split((self.n_heads * self.head_dim, kv_dim, kv_dim), dim=-1)
        else:
            q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        q = q.view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # [B, H, T, hd]
        k = k.view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)  # [B, Hkv, T, hd]
        v = v.view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        q, k = (
            apply_rope(q, cos, sin),
            apply_rope(k, cos, sin),
        )  # sin comes sign-folded (hidden_states)
        if cache is not None:
            k, v = (
                cache.update_at(positions, k, v)
                if positions is not None
                else cache.update(pos, k, v)
            )
        gqa = (
            self.n_kv_heads != self.n_heads
        )  # SDPA broadcasts kv heads without copies (torch >= 2.5)
        S = k.shape[2]
        if attn_mask is not None:  # the caller decides who sees whom (packing, ragged batches)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, enable_gqa=gqa)
        elif S == T:  # no cached prefix: plain causal attention
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
        elif T == 1:  # one new token attends to everything so far
            y = F.scaled_dot_product_attention(q, k, v, enable_gqa=gqa)
        else:  # a chunk after a cached prefix: query i sees keys <= pos + i
            mask = torch.ones(T, S, dtype=torch.bool, device=x.device).tril(diagonal=S - T)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)
        y = y.transpose(1, 2).reshape(B, T, -1)  # [B, T, dim]
        return self.o_proj(y)


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(cfg.dim, cfg.hidden_dim, bias=False)
        self.up_proj = nn.Linear(cfg.dim, cfg.hidden_dim, bias=False)
        self.down_proj = nn.Linear(cfg.hidden_dim, cfg.dim, bias=False)
        self.gate_up_proj: nn.Module | None = None  # the inference layout (fuse_projections)

    @torch.no_grad()
    def fuse_projections(self) -> bool:
        """Like Attention.fuse_projections: gate and up from one matmul over [gate; up]."""
        if self.gate_up_proj is not None:
            return True
        fused = stack_linears(self.gate_proj, self.up_proj)
        if fused is None:
            return False
        self.gate_up_proj = fused
        self.gate_proj = self.up_proj = None  # type: ignore[assignment]
        return True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gate_up_proj is not None:
            gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
            return self.down_proj(F.silu(gate) * up)
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.mlp = MLP(cfg)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        cache: KVWrites | None,
        pos: int,
        positions: torch.Tensor | None = None,
        attn_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, cache, pos, positions, attn_mask)
        return x + self.mlp(self.post_attention_layernorm(x))


class Backbone(nn.Module):
    """Holds what HF calls `model.*`: embeddings, blocks, final norm."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.dim)
        # typed as what it holds (a ModuleList at run time) so code over the blocks type-checks
        self.layers = cast(
            "Sequence[Block]", nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        )
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)


class Transformer(nn.Module):
    rope_cos: torch.Tensor
    rope_sin: torch.Tensor

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.config = cfg
        self.model = Backbone(cfg)
        self.lm_head = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        cos, sin = rope_tables(
            cfg.head_dim, cfg.max_seq_len, cfg.rope_theta, scaling=cfg.rope_scaling
        )
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

    @torch.no_grad()
    def init_weights(self, seed: int | None = None) -> None:
        """Initialise every parameter in one place (so the model can be built on the meta device)."""
        g = torch.Generator(device="cpu")
        if seed is not None:
            g.manual_seed(seed)
        cfg = self.config
        # Module.to_empty() (meta-device build) replaces parameters and unties them
        if cfg.tie_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

        def normal_(p: torch.Tensor, std: float) -> None:
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float32).mul_(std).to(p.dtype))

        normal_(self.model.embed_tokens.weight, 1.0 if not cfg.tie_embeddings else 0.02)
        for layer in self.model.layers:
            for lin in (
                layer.self_attn.q_proj,
                layer.self_attn.k_proj,
                layer.self_attn.v_proj,
                layer.mlp.gate_proj,
                layer.mlp.up_proj,
            ):
                # uniform-variance fan-in init: std = 1/sqrt(fan_in)
                normal_(lin.weight, lin.weight.shape[1] ** -0.5)
                if lin.bias is not None:
                    lin.bias.zero_()
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
            layer.input_layernorm.weight.fill_(1.0)
            layer.post_attention_layernorm.weight.fill_(1.0)
        self.model.norm.weight.fill_(1.0)
        if not cfg.tie_embeddings:
            normal_(self.lm_head.weight, 0.001)
        self.init_buffers()

    @torch.no_grad()
    def init_buffers(self) -> None:
        """(Re)compute the non-persistent RoPE tables, e.g. after building on the meta device."""
        cfg = self.config
        cos, sin = rope_tables(
            cfg.head_dim,
            cfg.max_seq_len,
            cfg.rope_theta,
            device=self.rope_cos.device,
            scaling=cfg.rope_scaling,
        )
        self.rope_cos.copy_(cos)
        self.rope_sin.copy_(sin)

    def hidden_states(
        self,
        idx: torch.Tensor,
        caches: Sequence[KVWrites] | None = None,
        pos: int = 0,
        *,
        positions: torch.Tensor | None = None,
        attn_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Final-norm hidden states [B, T, dim] for token ids idx [B, T].

        Positions are pos..pos+T-1 for every row, or each token's own `positions` [B, T] (RoPE
        angle and, with caches, the cache slot its k/v go to). `attn_mask` (bool, broadcastable
        to [B, 1, T, S], True = may attend) replaces the default causal rule; S is T without
        caches, pos+T with caches and no `positions`, the caches' full length with `positions`
        (the mask then picks each row's slots). A query row that may attend to nothing gives NaN:
        let padding queries see themselves."""
        T = idx.shape[1]
        if positions is not None:
            if positions.shape != idx.shape:
                raise ValueError(
                    f"positions {tuple(positions.shape)} must match idx {tuple(idx.shape)}"
                )
            if caches is not None and attn_mask is None:
                raise ValueError("positions with caches needs an attn_mask over the cache slots")
            cos, sin = (
                self.rope_cos[positions].unsqueeze(1),
                self.rope_sin[positions].unsqueeze(1),
            )  # [B, 1, T, hd]
        else:
            if pos + T > self.rope_cos.shape[0]:
                raise ValueError(
                    f"sequence of {pos + T} tokens exceeds max_seq_len={self.rope_cos.shape[0]}"
                )
            cos, sin = self.rope_cos[pos : pos + T], self.rope_sin[pos : pos + T]  # [T, hd]
        x = self.model.embed_tokens(idx)
        cos, sin = (
            cos.to(x.dtype),
            fold_rope_sign(sin.to(x.dtype)),
        )  # the activations' dtype, whatever stores the embedding (it may be quantized)
        for i, layer in enumerate(self.model.layers):
            x = layer(
                x, cos, sin, caches[i] if caches is not None else None, pos, positions, attn_mask
            )
        return self.model.norm(x)

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        *,
        caches: Sequence[KVWrites] | None = None,
        pos: int = 0,
        positions: torch.Tensor | None = None,
        attn_mask: torch.Tensor | None = None,
        reduction: str = "mean",
    ) -> torch.Tensor:
        """Logits [B, T, V] (fp32) when targets is None, else the cross-entropy loss over targets
        (ignore_index=-1); reduction="none" gives the per-token loss [B, T]. `positions` and
        `attn_mask`: see hidden_states (packing several documents in a row, ragged batches)."""
        h = self.hidden_states(idx, caches, pos, positions=positions, attn_mask=attn_mask)
        logits = self.lm_head(h).float()
        if targets is None:
            return logits
        loss = F.cross_entropy(
            logits.view(-1, logits.shape[-1]),
            targets.reshape(-1),
            ignore_index=-1,
            reduction=reduction,
        )
        return loss.view(targets.shape) if reduction == "none" else loss

    def fuse_projections(self) -> int:
        """The inference layout for every block (Attention/MLP.fuse_projections): 4 matmuls per
        layer instead of 7, each reading a larger weight in one pass. At batch 1 a decode step is
        a chain of matrix-vector products whose speed is memory bandwidth, and fewer, larger
        ones stream better. Returns how many groups are fused, attention and MLP counting one each
        per layer (LoRA-wrapped projections are left as they are)."""
        return sum(
            int(layer.self_attn.fuse_projections()) + int(layer.mlp.fuse_projections())
            for layer in self.model.layers
        )

    def new_caches(
        self, batch: int, max_len: int | None = None, dtype: torch.dtype | None = None
    ) -> list[KVCache]:
        cfg = self.config
        w = (
            self.model.norm.weight
        )  # the activations' dtype: norms are never quantized, Linears and embeddings may be
        max_len = max_len or cfg.max_seq_len
        return [
            KVCache(batch, cfg.n_kv_heads, max_len, cfg.head_dim, dtype or w.dtype, w.device)
            for _ in range(cfg.n_layers)
        ]


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = [
    "KVCache",
    "ModelConfig",
    "RMSNorm",
    "Transformer",
    "apply_rope",
    "check_rope_scaling",
    "count_params",
    "rope_inv_freq",
    "rope_tables",
]
