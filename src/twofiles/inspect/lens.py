"""The logit lens (nostalgebraist, 2020): read the residual stream after every block through the
model's own final norm and unembedding, as if the model stopped there.

What it owns: the lens's numbers (per layer and position: the top tokens and their
probabilities, and the probability of the token that actually comes next). What it leaves to
others: the pictures (the CLI's PNG and HTML, the web UI's Inside page) and the activations
(hooks.run_with_cache).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from twofiles.inspect.hooks import as_transformer, run_with_cache


@dataclass
class LensResult:
    """The lens at every layer (row 0: the embeddings, row i: after block i, the last row equals
    the model's own output) and position."""

    layers: list[str]  # row labels: "embed", "block 0", ..., "block n-1"
    top_ids: torch.Tensor  # [n_layers + 1, T, k] the k most likely next tokens
    top_probs: torch.Tensor  # [n_layers + 1, T, k] their probabilities
    next_prob: torch.Tensor  # [n_layers + 1, T - 1] probability of the token that comes next
    entropy: torch.Tensor  # [n_layers + 1, T] of the lens's distribution, in bits

    def to_dict(self, tokenizer: Any, ids: Sequence[int]) -> dict[str, Any]:
        """JSON-ready: the input tokens as text, and per layer and position the top tokens."""
        return {
            "tokens": [tokenizer.decode([int(t)]) for t in ids],
            "layers": self.layers,
            "top": [
                [
                    [
                        {"token": tokenizer.decode([int(t)]), "id": int(t), "p": float(p)}
                        for t, p in zip(ids_k, probs_k, strict=True)
                    ]
                    for ids_k, probs_k in zip(layer_ids, layer_probs, strict=True)
                ]
                for layer_ids, layer_probs in zip(self.top_ids, self.top_probs, strict=True)
            ],
            "next_prob": self.next_prob.tolist(),
            "entropy_bits": self.entropy.tolist(),
        }


def logit_lens(model: Any, ids: Sequence[int] | torch.Tensor, k: int = 5) -> LensResult:
    """The logit lens of one sequence `ids` [T] on `model` (a Transformer or LoadedModel)."""
    m = as_transformer(model)
    n = m.config.n_layers
    names = ["hook_embed", *(f"blocks.{i}.hook_resid_post" for i in range(n))]
    _, cache = run_with_cache(m, ids, names=names)
    t = torch.as_tensor(ids if isinstance(ids, torch.Tensor) else list(ids)).reshape(-1)
    rows: list[tuple[torch.Tensor, ...]] = []
    with torch.no_grad():
        # one layer at a time: all at once is [n + 1, T, V] floats, several times over (log_softmax,
        # exp): ~5 GB at SmolLM2's 31 x 256 positions x 49152 tokens
        for name in names:
            logits = m.lm_head(m.model.norm(cache[name][0])).float()  # [T, V]
            logp = F.log_softmax(logits, dim=-1)
            top = logp.topk(min(k, logp.shape[-1]), dim=-1)
            nxt = t[1:].to(logp.device)
            next_logp = logp[:-1].gather(-1, nxt.view(-1, 1)).squeeze(-1)  # [T - 1]
            entropy = -(logp.exp() * logp).sum(-1) / math.log(2.0)
            rows.append((top.indices, top.values.exp(), next_logp.exp(), entropy))
    top_ids, top_probs, next_prob, entropy = (torch.stack(x).cpu() for x in zip(*rows))
    return LensResult(
        layers=["embed", *(f"block {i}" for i in range(n))],
        top_ids=top_ids,
        top_probs=top_probs,
        next_prob=next_prob,
        entropy=entropy,
    )


def lens_figure(
    result: LensResult,
    tokens: Sequence[str],
    top_tokens: Sequence[Sequence[str]],
    *,
    max_positions: int = 40,
) -> Any:
    """A matplotlib figure: layers (rows, the embeddings at the bottom) x positions, each cell
    coloured by the lens's probability of the token that actually comes next and labelled with
    the lens's top token; the last column, which has no next token, is coloured by the top
    token's own probability. Only the last `max_positions` positions are drawn (cell labels stop
    being readable past that; the HTML page has them all)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from twofiles.inspect.render import plot_label

    rows, T = result.top_ids.shape[:2]
    start = max(0, T - max_positions)
    values = torch.cat([result.next_prob, result.top_probs[:, -1:, 0]], dim=1)[:, start:]
    C = T - start
    fig, ax = plt.subplots(figsize=(2.0 + 0.62 * C, 1.2 + 0.3 * rows))
    im = ax.imshow(values.numpy(), cmap="Blues", vmin=0.0, vmax=1.0, aspect="auto", origin="lower")
    for r in range(rows):
        for c in range(C):
            label = plot_label(top_tokens[r][start + c])
            label = label if len(label) <= 7 else label[:6] + "\u2026"
            color = "white" if float(values[r, c]) > 0.55 else "black"
            ax.text(c, r, label, ha="center", va="center", fontsize=6, color=color)
    ax.set_yticks(range(rows), result.layers, fontsize=7)
    xlabels = [plot_label(t) for t in tokens[start:]]
    ax.set_xticks(range(C), xlabels, rotation=90, fontsize=7)
    skipped = f" (the last {C} of {T})" if start else ""
    ax.set_xlabel(f"input position{skipped}; the last column: the top token's own probability")
    fig.colorbar(im, ax=ax, fraction=0.03, label="p(actual next token)")
    ax.set_title("logit lens: the top token at each layer and position", fontsize=10)
    return fig
