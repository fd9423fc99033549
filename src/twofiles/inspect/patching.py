"""Activation patching (Meng et al. 2022, "Locating and editing factual associations"; Wang et al.
2022, "Interpretability in the wild"): run the corrupted prompt, copy in one activation from the
clean run, and see how much of the clean behaviour comes back.

The behaviour is the logit difference target - against at the last position; a patch's score is
the normalised difference recovered, (patched - corrupted) / (clean - corrupted): 0 when the patch
changes nothing, 1 when it restores the clean run's answer fully. Both prompts must tokenize to
the same length, so that position p of one lines up with position p of the other.

What it owns: the patching sweeps (`activation_patching`: one cell per layer and position, or per
layer and head), a single patched run (`recovered`), and the heatmap (`patching_figure`). What it
leaves to others: the hooked forward (hooks.run_with_hooks) and the files (the CLI).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from twofiles.errors import BadInputError
from twofiles.inspect.hooks import HookPoint, as_transformer, run_with_cache, run_with_hooks

LOGITS_BUDGET = 1 << 27  # fp32 logits per batch of patched runs (512 MiB)

# what can be patched -> the hook at block i (heads: each head's z, all positions at once)
WHAT = {
    "resid_pre": "hook_resid_pre",
    "attn_out": "hook_attn_out",
    "mlp_out": "hook_mlp_out",
    "heads": "attn.hook_z",
}


@dataclass
class PatchResult:
    """A sweep's scores: rows are layers; columns are positions, or heads for what="heads"."""

    what: str
    layers: list[int]  # the block index of each row
    scores: torch.Tensor  # [len(layers), T] or [len(layers), n_heads]: the normalised logit
    # difference recovered
    clean_diff: float  # logit(target) - logit(against) at the last position, clean run
    corrupt_diff: float  # the same on the corrupted run
    target: int
    against: int

    def best(self, n: int = 5) -> list[tuple[int, int, float]]:
        """The `n` cells that recover the most, as (layer, position or head, score)."""
        flat = self.scores.flatten()
        idx = flat.argsort(descending=True)[:n]
        cols = self.scores.shape[1]
        return [(self.layers[int(i) // cols], int(i) % cols, float(flat[i])) for i in idx]


def _tokens(ids: Sequence[int] | torch.Tensor) -> torch.Tensor:
    t = ids if isinstance(ids, torch.Tensor) else torch.tensor(list(ids))
    return t.reshape(-1)


def _diff(logits: torch.Tensor, target: int, against: int) -> torch.Tensor:
    """The logit difference at the last position of each row: [B]."""
    return logits[:, -1, target] - logits[:, -1, against]


def check_same_length(clean: Sequence[int], corrupt: Sequence[int]) -> None:
    """Patching lines positions up: both prompts must have the same number of tokens."""
    if len(clean) != len(corrupt):
        raise BadInputError(
            f"the clean prompt is {len(clean)} tokens and the corrupted prompt {len(corrupt)}: "
            "patching lines up positions, so both must tokenize to the same length (swap words "
            "for words of the same token count, e.g. one name for another)"
        )


def recovered(
    model: Any,
    clean: Sequence[int] | torch.Tensor,
    corrupt: Sequence[int] | torch.Tensor,
    target: int,
    against: int,
    names: Iterable[str],
    positions: Sequence[int] | None = None,
) -> float:
    """The normalised logit difference recovered when the clean activations at `names` (full
    hook names) are patched into the corrupted run, at `positions` (None: all of them)."""
    m = as_transformer(model)
    clean_t, corrupt_t = _tokens(clean), _tokens(corrupt)
    check_same_length(clean_t.tolist(), corrupt_t.tolist())
    names = list(names)
    clean_logits, cache = run_with_cache(m, clean_t, names=names)
    pos = slice(None) if positions is None else list(positions)

    def patch(x: torch.Tensor, hook: HookPoint) -> torch.Tensor:
        x = x.clone()
        x[:, pos] = cache[hook.name][:, pos]
        return x

    with torch.no_grad():
        corrupt_logits = run_with_hooks(m, corrupt_t)
        patched = run_with_hooks(m, corrupt_t, [(n, patch) for n in names])
    c, k, p = (float(_diff(x, target, against)[0]) for x in (clean_logits, corrupt_logits, patched))
    _check_gap(c, k)
    return (p - k) / (c - k)


def _check_gap(clean_diff: float, corrupt_diff: float) -> None:
    if abs(clean_diff - corrupt_diff) < 1e-6:
        raise BadInputError(
            f"the clean and corrupted prompts give the same logit difference ({clean_diff:.4g}): "
            "there is nothing to recover; choose a target and a foil the two prompts disagree on"
        )


def activation_patching(
    model: Any,
    clean: Sequence[int] | torch.Tensor,
    corrupt: Sequence[int] | torch.Tensor,
    target: int,
    against: int,
    what: str = "resid_pre",
    *,
    layers: Sequence[int] | None = None,
    batch_size: int = 32,
    progress: bool = False,
) -> PatchResult:
    """Patch each clean activation of kind `what` (resid_pre, attn_out, mlp_out: one cell per
    layer and position; heads: one cell per layer and head, at every position) into the corrupted
    run, one cell at a time, at `layers` (default all), and score each by the normalised logit
    difference recovered. The cells of a layer run as one batch (`batch_size` rows at most, fewer
    when their logits would pass LOGITS_BUDGET)."""
    if what not in WHAT:
        raise BadInputError(f"--what {what!r}: choose one of {', '.join(WHAT)}")
    m = as_transformer(model)
    clean_t, corrupt_t = _tokens(clean), _tokens(corrupt)
    check_same_length(clean_t.tolist(), corrupt_t.tolist())
    n, T = m.config.n_layers, len(clean_t)
    chosen = list(range(n)) if layers is None else list(layers)
    bad = [i for i in chosen if not 0 <= i < n]
    if bad or not chosen:
        raise BadInputError(f"layers {chosen}: choose among 0..{n - 1}")
    names = [f"blocks.{i}.{WHAT[what]}" for i in chosen]
    clean_logits, cache = run_with_cache(m, clean_t, names=names)
    with torch.no_grad():
        corrupt_logits = run_with_hooks(m, corrupt_t)
    clean_diff = float(_diff(clean_logits, target, against)[0])
    corrupt_diff = float(_diff(corrupt_logits, target, against)[0])
    _check_gap(clean_diff, corrupt_diff)
    cols = m.config.n_heads if what == "heads" else T
    scores = torch.zeros(len(chosen), cols)
    rows: Iterable[int] = range(len(chosen))
    if progress:
        from tqdm.auto import tqdm

        rows = tqdm(rows, desc=f"patching {what}", unit="layer")
    # each patched run returns logits at every position (only the last is read): cap the batch
    # so that they stay near LOGITS_BUDGET floats
    batch = max(1, min(batch_size, LOGITS_BUDGET // (T * m.config.vocab_size)))
    for i in rows:
        for start in range(0, cols, batch):
            cells = list(range(start, min(start + batch, cols)))
            patched = _patch_cells(m, corrupt_t, names[i], cache[names[i]], cells, what)
            diffs = _diff(patched, target, against).float().cpu()
            scores[i, cells] = (diffs - corrupt_diff) / (clean_diff - corrupt_diff)
    return PatchResult(
        what=what,
        layers=chosen,
        scores=scores,
        clean_diff=clean_diff,
        corrupt_diff=corrupt_diff,
        target=target,
        against=against,
    )


def _patch_cells(
    m: Any, corrupt: torch.Tensor, name: str, clean_act: torch.Tensor, cells: list[int], what: str
) -> torch.Tensor:
    """Logits of len(cells) corrupted runs in one batch, row b patched at cell cells[b] (a
    position, or a head for what="heads")."""

    def patch(x: torch.Tensor, hook: HookPoint) -> torch.Tensor:
        x = x.clone()
        for b, c in enumerate(cells):
            if what == "heads":  # z: [B, T, H, hd]
                x[b, :, c] = clean_act[0, :, c].to(x.dtype)
            else:  # [B, T, d_model]
                x[b, c] = clean_act[0, c].to(x.dtype)
        return x

    batch = corrupt.unsqueeze(0).expand(len(cells), -1)
    with torch.no_grad():
        return run_with_hooks(m, batch, [(name, patch)])


def patching_figure(
    result: PatchResult, columns: Sequence[str], title: str, *, max_labels: int = 60
) -> Any:
    """A matplotlib figure: the layer x position (or head) heatmap of the recovered fraction,
    diverging around 0 (blue: towards the clean answer), `columns` labelling the x axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    L, C = result.scores.shape
    lim = max(1.0, float(result.scores.abs().max()))
    fig, ax = plt.subplots(figsize=(2.5 + 0.42 * C, 1.6 + 0.26 * L))
    im = ax.imshow(result.scores.numpy(), cmap="RdBu", vmin=-lim, vmax=lim, aspect="auto")
    ax.set_ylabel("layer")
    ax.set_yticks(range(L), [str(i) for i in result.layers], fontsize=7)
    if max_labels >= C:
        ax.set_xticks(range(C), list(columns), rotation=90, fontsize=7)
    ax.set_xlabel("head" if result.what == "heads" else "position (clean / corrupted token)")
    if L * C <= 300:
        for i in range(L):
            for j in range(C):
                v = float(result.scores[i, j])
                if abs(v) >= 0.05:
                    color = "white" if abs(v) > 0.6 * lim else "black"
                    ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=6, color=color)
    fig.colorbar(im, ax=ax, fraction=0.046, label="logit difference recovered")
    ax.set_title(title, fontsize=10)
    return fig


__all__ = [
    "WHAT",
    "PatchResult",
    "activation_patching",
    "check_same_length",
    "patching_figure",
    "recovered",
]
