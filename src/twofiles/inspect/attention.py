"""Attention patterns per layer and head, and the classic one-number summaries of each head.

What it owns: the patterns of one prompt (`attention_patterns`), each head's previous-token
score and its attention to the first token, and the induction score on a repeated random
sequence (Olsson et al. 2022, "In-context learning and induction heads"). What it leaves to
others: the activations (hooks.run_with_cache) and the pictures (`attention_figure` here draws
the grid; the CLI writes the files and the page).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from twofiles.inspect.hooks import as_transformer, run_with_cache


@dataclass
class AttentionResult:
    """The patterns of one sequence at the chosen layers, with a summary per head."""

    layers: list[int]  # the block indices kept, in order
    patterns: torch.Tensor  # [len(layers), heads, T, T] row = query position, column = key
    prev_token: torch.Tensor  # [len(layers), heads] mean attention from t to t - 1 (t >= 1)
    first_token: torch.Tensor  # [len(layers), heads] mean attention to position 0 (the bos)
    induction: torch.Tensor | None = None  # [len(layers), heads], when asked (induction_scores)

    def head_table(self) -> list[dict[str, Any]]:
        """One row per (layer, head) with its scores, JSON-ready."""
        rows = []
        for li, layer in enumerate(self.layers):
            for h in range(self.patterns.shape[1]):
                row: dict[str, Any] = {
                    "layer": layer,
                    "head": h,
                    "prev_token": round(float(self.prev_token[li, h]), 4),
                    "first_token": round(float(self.first_token[li, h]), 4),
                }
                if self.induction is not None:
                    row["induction"] = round(float(self.induction[li, h]), 4)
                rows.append(row)
        return rows


def _check_layers(n: int, layers: Sequence[int] | None) -> list[int]:
    chosen = list(range(n)) if layers is None else list(layers)
    bad = [i for i in chosen if not 0 <= i < n]
    if bad:
        raise ValueError(f"layer {bad[0]} does not exist: the model has layers 0..{n - 1}")
    return chosen


def attention_patterns(
    model: Any, ids: Sequence[int] | torch.Tensor, layers: Sequence[int] | None = None
) -> AttentionResult:
    """The attention patterns of `ids` [T] at `layers` (default all) of `model` (a Transformer
    or LoadedModel), with each head's previous-token and first-token scores."""
    m = as_transformer(model)
    chosen = _check_layers(m.config.n_layers, layers)
    _, cache = run_with_cache(m, ids, names=[("pattern", i) for i in chosen])
    pats = torch.stack([cache["pattern", i][0] for i in chosen]).float().cpu()  # [L, H, T, T]
    T = pats.shape[-1]
    if T > 1:
        prev = pats.diagonal(offset=-1, dim1=-2, dim2=-1).mean(-1)  # pattern[t, t - 1], t >= 1
    else:
        prev = torch.zeros(pats.shape[:2])
    first = pats[..., 0].mean(-1)
    return AttentionResult(layers=chosen, patterns=pats, prev_token=prev, first_token=first)


def induction_scores(
    model: Any,
    layers: Sequence[int] | None = None,
    *,
    length: int = 20,
    bos_id: int | None = None,
    seed: int = 0,
) -> torch.Tensor:
    """Each head's induction score [len(layers), heads]: on a random sequence of `length` tokens
    repeated twice (after `bos_id` if given), the mean attention from a token in the second copy
    to the token just after its first occurrence, which is what an induction head attends to so
    that it can predict that token again."""
    m = as_transformer(model)
    chosen = _check_layers(m.config.n_layers, layers)
    g = torch.Generator().manual_seed(seed)
    # skip the lowest ids: special tokens and single bytes, which rarely carry text on their own
    low = min(256, m.config.vocab_size // 2)
    rand = torch.randint(low, m.config.vocab_size, (length,), generator=g)
    prefix = [] if bos_id is None else [bos_id]
    ids = torch.tensor([*prefix, *rand.tolist(), *rand.tolist()])
    if len(ids) > m.config.max_seq_len:
        raise ValueError(
            f"the induction sequence ({len(ids)} tokens) exceeds the model's context of "
            f"{m.config.max_seq_len}: use a shorter length"
        )
    _, cache = run_with_cache(m, ids, names=[("pattern", i) for i in chosen])
    pats = torch.stack([cache["pattern", i][0] for i in chosen]).float().cpu()  # [L, H, T, T]
    off = len(prefix)
    queries = torch.arange(off + length, off + 2 * length)  # the second copy
    keys = queries - length + 1  # the token after the same token's first occurrence
    return pats[:, :, queries, keys].mean(-1)


def attention_figure(
    result: AttentionResult,
    tokens: Sequence[str],
    heads: Sequence[int] | None = None,
    *,
    max_labels: int = 40,
) -> Any:
    """A matplotlib figure: a grid of heatmaps, one row per layer and one column per head, the
    tokens on the axes (labels are left out beyond `max_labels` tokens: they would overlap)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = list(range(result.patterns.shape[1])) if heads is None else list(heads)
    rows = len(result.layers)
    T = result.patterns.shape[-1]
    cell = 2.2 if T <= 12 else 3.2 if T <= 30 else 4.0
    fig, axes = plt.subplots(
        rows, len(cols), figsize=(cell * len(cols), cell * rows), squeeze=False
    )
    labels = max_labels >= T
    size = 7 if T <= 16 else 5
    for r, layer in enumerate(result.layers):
        for c, h in enumerate(cols):
            ax = axes[r][c]
            ax.imshow(result.patterns[r, h].numpy(), cmap="Blues", vmin=0.0, vmax=1.0)
            ax.set_title(f"L{layer} H{h}", fontsize=9)
            if labels:
                ax.set_xticks(range(T), tokens, rotation=90, fontsize=size)
                ax.set_yticks(range(T), tokens, fontsize=size)
            else:
                ax.set_xticks([])
                ax.set_yticks([])
    return fig


def head_scores_figure(result: AttentionResult) -> Any:
    """A matplotlib figure: layer x head heatmaps of the scores (previous token, first token,
    induction when computed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("previous token", result.prev_token), ("first token", result.first_token)]
    if result.induction is not None:
        panels.append(("induction", result.induction))
    L, H = result.prev_token.shape
    fig, axes = plt.subplots(
        1, len(panels), figsize=(1.2 + 0.45 * H * len(panels) + 1.2, 1.0 + 0.3 * L), squeeze=False
    )
    for ax, (title, values) in zip(axes[0], panels, strict=True):
        im = ax.imshow(values.numpy(), cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        ax.set_xticks(range(H))
        ax.set_yticks(range(L), [str(i) for i in result.layers], fontsize=7)
        fig.colorbar(im, ax=ax, fraction=0.046)
    return fig
