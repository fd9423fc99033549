"""The numbers the field reports for a sparse autoencoder, on held-out text.

    L0                   mean number of features active per token
    explained variance   1 - sum |x - x_hat|^2 / sum |x - mean(x)|^2 (over tokens and dims)
    CE-loss recovered    (L_zero - L_sae) / (L_zero - L_clean): the model's next-token loss with
                         the SAE's reconstruction spliced in at the hook, between the clean model
                         (1.0) and the hook's activation zero-ablated (0.0)
    dead fraction        features that fired on none of the last N training tokens

The splice and the ablation leave BOS positions as they are (the SAE is neither trained nor judged
on them, sae/activations.py says why), and targets that are BOS are not scored. What it leaves to
others: training (sae/train.py), the hooked forward (inspect.hooks).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from twofiles.inspect.hooks import HookPoint, run_with_hooks


def l0(features: torch.Tensor) -> float:
    """Mean count of non-zero features per row of `features` [n, d_sae]."""
    return float((features > 0).sum(-1).float().mean().item())


def explained_variance(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    """1 - residual variance / variance, summed over dims, for rows x [n, d]."""
    x, x_hat = x.detach(), x_hat.detach()
    resid = (x - x_hat).double().pow(2).sum()
    total = (x - x.mean(0, keepdim=True)).double().pow(2).sum()
    return float(1.0 - resid / total.clamp_min(1e-30))


def ce_loss_recovered(clean: float, sae: float, zero: float) -> float:
    """(L_zero - L_sae) / (L_zero - L_clean); NaN when ablating the hook costs nothing."""
    gap = zero - clean
    return (zero - sae) / gap if abs(gap) > 1e-12 else float("nan")


@dataclass
class SplicedLosses:
    clean: float  # the model's own next-token loss (nats per token)
    sae: float  # with the reconstruction spliced in at the hook
    zero: float  # with the hook's activation set to zero
    tokens: int  # targets scored

    @property
    def recovered(self) -> float:
        return ce_loss_recovered(self.clean, self.sae, self.zero)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ce_loss_clean": self.clean,
            "ce_loss_sae": self.sae,
            "ce_loss_zero": self.zero,
            "ce_loss_recovered": self.recovered,
            "ce_tokens": self.tokens,
        }


def spliced_losses(
    model: Any,
    windows: np.ndarray | torch.Tensor,
    hook_name: str,
    reconstruct: Callable[[torch.Tensor], torch.Tensor],
    bos_id: int,
    *,
    batch: int = 8,
) -> SplicedLosses:
    """The clean, spliced and zero-ablated next-token losses over `windows` [N, T];
    `reconstruct` maps raw activations [n, d] to their reconstruction [n, d]."""
    ids_all = torch.as_tensor(windows)
    sums = {"clean": 0.0, "sae": 0.0, "zero": 0.0}
    count = 0
    m = model.model if hasattr(model, "tokenizer") else model
    device = m.rope_cos.device
    for i in range(0, len(ids_all), batch):
        ids = ids_all[i : i + batch].to(device)
        keep = ids != bos_id  # [B, T]: positions the splice touches
        targets = ids[:, 1:].masked_fill(ids[:, 1:] == bos_id, -100)

        def splice(x: torch.Tensor, hook: HookPoint, keep: torch.Tensor = keep) -> torch.Tensor:
            out = x.clone()
            out[keep] = reconstruct(x[keep].float()).to(x.dtype)
            return out

        def ablate(x: torch.Tensor, hook: HookPoint, keep: torch.Tensor = keep) -> torch.Tensor:
            return x.masked_fill(keep.unsqueeze(-1), 0.0)

        with torch.no_grad():
            for key, hooks in (
                ("clean", []),
                ("sae", [(hook_name, splice)]),
                ("zero", [(hook_name, ablate)]),
            ):
                logits = run_with_hooks(m, ids, hooks)[:, :-1]
                sums[key] += F.cross_entropy(
                    logits.reshape(-1, logits.shape[-1]),
                    targets.reshape(-1),
                    reduction="sum",
                    ignore_index=-100,
                ).item()
        count += int((targets != -100).sum().item())
    n = max(count, 1)
    return SplicedLosses(sums["clean"] / n, sums["sae"] / n, sums["zero"] / n, count)
