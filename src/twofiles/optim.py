"""Optimizers and learning-rate schedules.

What it owns: splitting a Transformer's parameters into groups, the Muon optimizer for hidden
weight matrices (Keller Jordan, 2024: momentum orthogonalised by a Newton-Schulz iteration), AdamW
for everything else, and warm-up + cosine / WSD (warm-up, stable, decay) schedules as pure
functions of the step. What it leaves to others: the training loop and the model.

Muon is not a torch.optim built-in in every torch we support, so it is written here (~40 lines);
AdamW is torch's own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class OptimConfig:
    optimizer: str = "muon"  # "muon" (Muon for hidden matrices + AdamW for the rest) or "adamw"
    lr: float = 3e-3  # AdamW peak LR (embeddings, head, norms; everything under "adamw")
    matrix_lr: float = 0.02  # Muon peak LR for hidden matrices
    embed_lr: float | None = None  # AdamW LR for the embedding table; None = lr
    weight_decay: float = 0.0  # decoupled weight decay on matrices (AdamW groups: matrices only)
    beta1: float = 0.9
    beta2: float = 0.95
    momentum: float = 0.95  # Muon momentum (Nesterov)
    grad_clip: float = 1.0  # global grad-norm clip; 0 disables
    schedule: str = "wsd"  # "cosine" or "wsd"
    warmup_steps: int = 20  # linear warm-up steps
    decay_frac: float = 0.4  # WSD: final fraction of steps that decays to min_lr_frac
    min_lr_frac: float = 0.0  # LR at the end, as a fraction of the peak


def lr_factor(step: int, total_steps: int, cfg: OptimConfig) -> float:
    """Multiplier of the peak LR at `step` (0-based) of `total_steps`."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.schedule == "cosine":
        progress = (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps)
        progress = min(progress, 1.0)
        return cfg.min_lr_frac + (1 - cfg.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * progress))
    if cfg.schedule == "wsd":
        decay_start = int(total_steps * (1 - cfg.decay_frac))
        if step < decay_start:
            return 1.0
        progress = (step - decay_start) / max(1, total_steps - decay_start)
        return cfg.min_lr_frac + (1 - cfg.min_lr_frac) * (1 - min(progress, 1.0))
    if cfg.schedule == "constant":
        return 1.0
    raise ValueError(f"unknown schedule {cfg.schedule!r}")


def zeropower_newton_schulz(
    G: torch.Tensor, steps: int = 5, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """Approximately orthogonalise G (the nearest semi-orthogonal matrix, U V^T of its SVD) with a
    quintic Newton-Schulz iteration whose coefficients (3.4445, -4.7750, 2.0315) maximise the
    slope at zero (Keller Jordan's Muon). Runs in `dtype`; by default bf16 on CUDA, fp32
    elsewhere. The iteration only needs the singular values pushed towards 1, not digits, so bf16
    loses nothing measurable (docs/LOG.md, 2026-12-06: the precision A/B)."""
    a, b, c = 3.4445, -4.7750, 2.0315
    if dtype is None:
        dtype = torch.bfloat16 if G.is_cuda else torch.float32
    X = G.to(dtype)
    transposed = X.shape[-2] > X.shape[-1]
    if transposed:
        X = X.mT
    X = X / (X.norm(dim=(-2, -1), keepdim=True) + 1e-7)
    for _ in range(steps):
        A = X @ X.mT
        B = b * A + c * A @ A
        X = a * X + B @ X
    if transposed:
        X = X.mT
    return X.to(G.dtype)


class Muon(torch.optim.Optimizer):
    """Momentum + Newton-Schulz orthogonalisation, for 2-D hidden weight matrices only.

    The update is scaled by sqrt(max(1, rows/cols)) so that its RMS does not shrink for tall
    matrices (as in the reference implementation)."""

    def __init__(
        self,
        params: list[nn.Parameter],
        lr: float = 0.02,
        momentum: float = 0.95,
        weight_decay: float = 0.0,
        ns_steps: int = 5,
        ns_dtype: torch.dtype | None = None,  # Newton-Schulz's (None: bf16 on CUDA, else fp32)
    ) -> None:
        super().__init__(
            params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, ns_steps=ns_steps)
        )
        self.ns_dtype = ns_dtype

    @torch.no_grad()
    def step(self, closure: None = None) -> None:  # type: ignore[override]
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                buf = state["momentum_buffer"]
                buf.lerp_(p.grad, 1 - group["momentum"])
                g = p.grad.lerp(buf, group["momentum"])  # Nesterov
                update = zeropower_newton_schulz(g, group["ns_steps"], self.ns_dtype)
                scale = max(1.0, p.shape[0] / p.shape[1]) ** 0.5
                if group["weight_decay"]:
                    p.mul_(1 - group["lr"] * group["weight_decay"])
                p.add_(update, alpha=-group["lr"] * scale)


def build_optimizers(
    model: nn.Module, cfg: OptimConfig, matmul_dtype: torch.dtype | None = None
) -> list[torch.optim.Optimizer]:
    """One or two optimizers over disjoint parameter groups. Each group stores its peak LR in
    `initial_lr` so the schedule can set `lr = initial_lr * factor`. `matmul_dtype` is the run's
    reduced precision (runtime.precision_for; None: fp32): Muon's Newton-Schulz matmuls use it
    too, while every optimizer state and the weights stay fp32."""
    embed, head, matrices, vectors = [], [], [], []
    seen: set[int] = set()
    for name, p in model.named_parameters():
        if id(p) in seen or not p.requires_grad:
            continue
        seen.add(id(p))
        if name.endswith("embed_tokens.weight"):
            embed.append(p)
        elif name.endswith("lm_head.weight"):
            head.append(p)
        elif p.ndim == 2:
            matrices.append(p)
        else:
            vectors.append(p)
    embed_lr = cfg.embed_lr if cfg.embed_lr is not None else cfg.lr
    adam_groups = [
        dict(params=embed, lr=embed_lr, weight_decay=0.0),
        dict(params=head, lr=cfg.lr, weight_decay=0.0),
        dict(params=vectors, lr=cfg.lr, weight_decay=0.0),
    ]
    optimizers: list[torch.optim.Optimizer] = []
    if cfg.optimizer == "muon":
        muon = Muon(
            matrices,
            lr=cfg.matrix_lr,
            momentum=cfg.momentum,
            weight_decay=cfg.weight_decay,
            # fp16's range is no place for an iteration that squares: bf16 or the default
            ns_dtype=torch.bfloat16 if matmul_dtype == torch.bfloat16 else None,
        )
        optimizers.append(muon)
    elif cfg.optimizer == "adamw":
        adam_groups.append(dict(params=matrices, lr=cfg.lr, weight_decay=cfg.weight_decay))
    else:
        raise ValueError(f"unknown optimizer {cfg.optimizer!r} (expected 'muon' or 'adamw')")
    adam_groups = [g for g in adam_groups if g["params"]]
    # The fused kernel makes one pass over each tensor instead of one per operation: on
    # SmolLM2-135M (2 CPU threads) a step takes 37 ms against foreach's 300 ms (TRL's default,
    # adamw_torch_fused). It needs float parameters on CPU or CUDA; elsewhere (MPS) foreach.
    params: list[torch.Tensor] = [p for g in adam_groups for p in g["params"]]  # type: ignore[attr-defined]
    fused = all(p.device.type in ("cpu", "cuda") and p.dtype.is_floating_point for p in params)
    optimizers.insert(
        0,
        torch.optim.AdamW(
            adam_groups,
            betas=(cfg.beta1, cfg.beta2),
            eps=1e-8,
            foreach=not fused,
            fused=fused,
        ),
    )
    for opt in optimizers:
        for g in opt.param_groups:
            g["initial_lr"] = g["lr"]
    return optimizers


def set_lr(optimizers: list[torch.optim.Optimizer], factor: float) -> None:
    for opt in optimizers:
        for g in opt.param_groups:
            g["lr"] = g["initial_lr"] * factor
