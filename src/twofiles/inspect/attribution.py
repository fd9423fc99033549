"""Direct logit attribution: how much each attention head and each MLP writes, straight into the
residual stream, towards one token's logit (or the difference of two logits) at the last position.

The final residual stream is a sum: the embedding, plus every block's attention output (itself a
sum over heads: head h's z times its slice of o_proj), plus every block's MLP output. The logit
is `W_U[t] . (g * x / rms(x))`, linear in x once the final norm's scale 1 / rms(x) is frozen at
its value on this prompt, which is what TransformerLens's `cache.stack_head_results` followed by
`apply_ln_to_stack` does. With the scale frozen the parts add up to the logit exactly; what
the attribution leaves out is indirect effects (a head that matters by changing what a later
head reads shows up in that later head).

What it owns: the numbers (`direct_logit_attribution`) and their pictures (`attribution_figure`).
What it leaves to others: the activations (hooks.run_with_cache) and the files (the CLI).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from twofiles.inspect.hooks import as_transformer, run_with_cache


@dataclass
class AttributionResult:
    """Each component's direct contribution to `logit` (all in logit units)."""

    target: int
    against: int | None  # None: the target's logit alone; else the logit difference
    heads: torch.Tensor  # [n_layers, n_heads]
    mlps: torch.Tensor  # [n_layers]
    embed: float  # the token embedding's own contribution
    logit: float  # the model's actual logit (difference) at the last position
    scale: float  # the final norm's frozen 1 / rms(x) at the last position

    @property
    def total(self) -> float:
        """The sum of every part: equals `logit` (up to float rounding)."""
        return float(self.heads.double().sum() + self.mlps.double().sum()) + self.embed

    def top(self, n: int = 10) -> list[tuple[str, float]]:
        """The `n` parts with the largest contributions in absolute value, as (name, value)."""
        parts = [("embed", self.embed)]
        L, H = self.heads.shape
        parts += [(f"L{i}H{h}", float(self.heads[i, h])) for i in range(L) for h in range(H)]
        parts += [(f"MLP{i}", float(self.mlps[i])) for i in range(L)]
        return sorted(parts, key=lambda p: -abs(p[1]))[:n]


def direct_logit_attribution(
    model: Any, ids: Sequence[int] | torch.Tensor, target: int, against: int | None = None
) -> AttributionResult:
    """The direct logit attribution of `ids` [T] on `model` (a Transformer or LoadedModel) to
    token `target` at the last position, or to the logit difference target - against."""
    m = as_transformer(model)
    n, nh, hd = m.config.n_layers, m.config.n_heads, m.config.head_dim
    last = f"blocks.{n - 1}.hook_resid_post"
    names = ["hook_embed", last]
    names += [f"blocks.{i}.attn.hook_z" for i in range(n)]
    names += [f"blocks.{i}.hook_mlp_out" for i in range(n)]
    logits, cache = run_with_cache(m, ids, names=names)
    with torch.no_grad():
        W_U = m.lm_head.weight  # [V, d]
        direction = W_U[target] if against is None else W_U[target] - W_U[against]
        x = cache[last][0, -1].float()
        scale = torch.rsqrt(x.pow(2).mean() + m.model.norm.eps)
        # the final norm's weight and frozen scale folded into the unembedding direction: [d]
        d = (direction.float() * m.model.norm.weight.float()) * scale
        heads = torch.zeros(n, nh)
        mlps = torch.zeros(n)
        for i, layer in enumerate(m.model.layers):
            W_O = layer.self_attn.o_proj.weight.float().view(-1, nh, hd)  # [d_model, H, hd]
            z = cache[f"blocks.{i}.attn.hook_z"][0, -1].float()  # [H, hd]
            per_head = torch.einsum("hk,dhk->hd", z, W_O)  # [H, d_model]: head h's slice of o_proj
            heads[i] = (per_head @ d).cpu()
            mlps[i] = (cache[f"blocks.{i}.hook_mlp_out"][0, -1].float() @ d).cpu()
        embed = float(cache["hook_embed"][0, -1].float() @ d)
        out = logits[0, -1]
        logit = out[target] if against is None else out[target] - out[against]
    return AttributionResult(
        target=target,
        against=against,
        heads=heads,
        mlps=mlps,
        embed=embed,
        logit=float(logit),
        scale=float(scale),
    )


def attribution_figure(result: AttributionResult, title: str) -> Any:
    """A matplotlib figure: a layer x head heatmap of the heads' contributions (diverging, zero
    white) beside a bar chart of each layer's MLP (and the embedding)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    L, H = result.heads.shape
    fig, (ax_h, ax_m) = plt.subplots(
        1,
        2,
        figsize=(3.0 + 0.45 * H + 4.0, 1.6 + 0.28 * L),
        gridspec_kw={"width_ratios": [max(H, 2), 4]},
    )
    lim = max(float(result.heads.abs().max()), 1e-6)
    im = ax_h.imshow(result.heads.numpy(), cmap="RdBu", vmin=-lim, vmax=lim, aspect="auto")
    ax_h.set_title("attention heads")
    ax_h.set_xlabel("head")
    ax_h.set_ylabel("layer")
    ax_h.set_xticks(range(H))
    ax_h.set_yticks(range(L), [str(i) for i in range(L)], fontsize=7)
    fig.colorbar(im, ax=ax_h, fraction=0.046, label="logit contribution")
    values = [result.embed, *result.mlps.tolist()]
    labels = ["embed", *(f"MLP{i}" for i in range(L))]
    colors = ["#b2182b" if v < 0 else "#2166ac" for v in values]
    ax_m.barh(range(len(values)), values, color=colors)
    ax_m.set_yticks(range(len(values)), labels, fontsize=7)
    ax_m.invert_yaxis()
    ax_m.axvline(0.0, color="#444", lw=0.8)
    ax_m.set_title("MLPs and the embedding")
    ax_m.set_xlabel("logit contribution")
    fig.suptitle(title, fontsize=10)
    return fig
