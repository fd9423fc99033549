"""Neurons: the contexts in a corpus that most activate chosen units of one layer.

What it owns: cutting token ids into windows, a streaming top-k over a corpus (per neuron the k
largest activations, each with the tokens around it and the neuron's value on each of them:
memory stays O(neurons x k x context) however long the corpus), streaming statistics (max, mean,
share of positive values, a histogram), and picking the neurons worth showing. What it leaves to
others: reading the corpus (the CLI; this package does not import data), the pictures (the CLI's
PNG and HTML through render.py), the activations themselves (hooks.run_with_hooks).

A "neuron" is one coordinate of a hook point with a neuron axis: by default the MLP's
`blocks.{L}.mlp.hook_post` (silu(gate) * up, d_mlp of them), or any [B, T, N] point such as
`hook_resid_post` (the residual stream's dimensions, which are not privileged: read them with
that in mind).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from twofiles.inspect.hooks import activation_at, as_transformer, hook_names, long_name


@dataclass
class Context:
    """One top-activating occurrence: the tokens around it and the neuron on each of them."""

    activation: float  # the neuron's value at the activating token
    offset: int  # the activating token's index in the stream of windowed tokens
    ids: list[int]  # the context's token ids (the activating token is ids[position])
    position: int
    values: list[float]  # the neuron's value on each token of `ids`


@dataclass
class Neuron:
    index: int
    max: float
    mean: float
    positive: float  # share of tokens where the neuron is > 0
    histogram: list[int]  # counts per bin; the end bins also hold everything beyond them
    edges: list[float]  # len(histogram) + 1 bin edges
    contexts: list[Context]  # best first


@dataclass
class NeuronScan:
    """The result of scanning a corpus at one hook point."""

    hook: str  # full hook name, e.g. "blocks.3.mlp.hook_post"
    width: int  # neurons at this point
    tokens: int  # tokens scored (windows' first bos excluded)
    windows: int
    selection: str  # how `neurons` were chosen
    neurons: list[Neuron] = field(default_factory=list)

    def summary(self, tokenizer: Any) -> dict[str, Any]:
        """JSON-ready: per neuron its statistics and its best context as text."""
        out = []
        for n in self.neurons:
            best = n.contexts[0] if n.contexts else None
            out.append(
                {
                    "neuron": n.index,
                    "max": round(n.max, 5),
                    "mean": round(n.mean, 5),
                    "positive": round(n.positive, 4),
                    "top_token": tokenizer.decode([best.ids[best.position]]) if best else None,
                    "top_context": tokenizer.decode(best.ids) if best else None,
                }
            )
        return {
            "hook": self.hook,
            "width": self.width,
            "tokens": self.tokens,
            "windows": self.windows,
            "selection": self.selection,
            "neurons": out,
        }


def token_windows(
    ids: Sequence[int], window: int, *, bos: int | None = None, limit: int | None = None
) -> list[list[int]]:
    """`ids` cut into consecutive windows of `window` tokens (a last short one dropped), each
    starting with `bos` when given (then `window - 1` corpus tokens per window), at most
    `limit` corpus tokens in all."""
    step = window - (bos is not None)
    if step < 1:
        raise ValueError(f"window {window} is too short")
    ids = list(ids[:limit] if limit is not None else ids)
    head = [bos] if bos is not None else []
    return [head + ids[i : i + step] for i in range(0, len(ids) - step + 1, step)]


def resolve_hook(model: Any, layer: int, hook: str = "mlp.hook_post") -> str:
    """The full name of `hook` at `layer` ("post", "mlp.hook_post", "resid_post", ...), checked
    against the model's hook points."""
    n = as_transformer(model).config.n_layers
    if not 0 <= layer < n:
        raise ValueError(f"layer {layer} is out of range: the model has layers 0..{n - 1}")
    name = long_name((hook, layer)) if not hook.startswith("blocks.") else hook
    if name not in hook_names(model):
        raise ValueError(f"no hook point {name!r} (see twofiles.inspect.hook_names)")
    return name


class TopK:
    """Per neuron the k largest values seen so far, with their contexts: merging a batch keeps
    only the batch's own top k per neuron, then the best k of old and new."""

    def __init__(self, width: int, k: int, before: int, after: int) -> None:
        self.k, self.before, self.after = k, before, after
        span = before + 1 + after
        self.values = torch.full((width, 0), float("-inf"))
        self.offsets = torch.zeros((width, 0), dtype=torch.long)
        self.ids = torch.zeros((width, 0, span), dtype=torch.long)
        self.ctx = torch.zeros((width, 0, span))

    def add(
        self, acts: torch.Tensor, ids: torch.Tensor, offsets: torch.Tensor, first: int = 0
    ) -> None:
        """acts [B, T, N], ids [B, T], offsets [B, T]: each token's index in the whole stream;
        positions before `first` are shown in contexts but never scored."""
        B, T, N = acts.shape
        kk = min(self.k, B * T)
        scores = acts
        if first:
            scores = acts.clone()
            scores[:, :first] = float("-inf")
        top_vals, flat = scores.reshape(B * T, N).topk(kk, dim=0)  # [kk, N]
        top_vals, flat = top_vals.T, flat.T  # [N, kk]
        b, t = flat // T, flat % T
        # contexts: positions t-before..t+after of the same window, padded with id -1 / nan
        rel = torch.arange(-self.before, self.after + 1)
        pos = t.unsqueeze(-1) + rel  # [N, kk, span]
        inside = (pos >= 0) & (pos < T)
        pos_c = pos.clamp(0, T - 1)
        bb = b.unsqueeze(-1).expand_as(pos_c)
        ctx_ids = torch.where(inside, ids[bb, pos_c], -1)
        neuron = torch.arange(N).view(N, 1, 1).expand_as(pos_c)
        ctx_vals = torch.where(inside, acts[bb, pos_c, neuron], float("nan"))
        values = torch.cat([self.values, top_vals], dim=1)
        keep = values.topk(min(self.k, values.shape[1]), dim=1).indices  # [N, k]
        self.values = values.gather(1, keep)
        self.offsets = torch.cat([self.offsets, offsets[b, t]], dim=1).gather(1, keep)
        span = keep.unsqueeze(-1).expand(-1, -1, rel.numel())
        self.ids = torch.cat([self.ids, ctx_ids], dim=1).gather(1, span)
        self.ctx = torch.cat([self.ctx, ctx_vals], dim=1).gather(1, span)

    def contexts(self, neuron: int) -> list[Context]:
        out = []
        for j in range(self.values.shape[1]):
            v = float(self.values[neuron, j])
            if v == float("-inf"):
                continue
            ids, vals = self.ids[neuron, j], self.ctx[neuron, j]
            present = ids >= 0
            first = int(present.nonzero()[0])
            out.append(
                Context(
                    activation=v,
                    offset=int(self.offsets[neuron, j]),
                    ids=[int(i) for i in ids[present]],
                    position=self.before - first,
                    values=[float(x) for x in vals[present]],
                )
            )
        return out


def scan_neurons(
    model: Any,
    windows: Sequence[Sequence[int]],
    hook: str,
    *,
    neurons: Sequence[int] | None = None,
    top: int = 8,
    k: int = 10,
    before: int = 16,
    after: int = 4,
    batch_size: int = 16,
    skip_first: bool = False,
    bins: int = 40,
    progress: Callable[[int], object] | None = None,
) -> NeuronScan:
    """Run `model` over `windows` (equal-length token id lists) and keep, per neuron of `hook`
    (a full name), its top-`k` contexts and statistics. `neurons` picks the neurons to report;
    without it the `top` neurons with the largest maximum activation are reported.
    `skip_first` leaves each window's first position out of the scoring (a bos there carries
    the attention-sink activations, huge in some neurons and telling nothing about the text).
    `progress(n)` is told the tokens done after each batch."""
    m = as_transformer(model)
    device = m.rope_cos.device
    if not windows:
        raise ValueError("no windows to scan (is the corpus shorter than one window?)")
    T = len(windows[0])
    state: TopK | None = None
    total = torch.zeros(0, dtype=torch.float64)
    positive = torch.zeros(0, dtype=torch.float64)
    hist = torch.zeros(0)
    lo = hi = torch.zeros(0)
    count = 0
    for start in range(0, len(windows), batch_size):
        chunk = windows[start : start + batch_size]
        ids = torch.tensor([list(w) for w in chunk], dtype=torch.long)  # [B, T]
        act = activation_at(m, ids.to(device), hook)
        if act.dim() != 3:
            raise ValueError(
                f"{hook} has shape {tuple(act.shape)}: neurons need a [batch, position, neuron] "
                "point (mlp.hook_post, hook_resid_post, ...)"
            )
        act = act.float().cpu()
        B, _, N = act.shape
        if state is None:
            state = TopK(N, k, before, after)
            total = torch.zeros(N, dtype=torch.float64)
            positive = torch.zeros(N, dtype=torch.float64)
            hist = torch.zeros(N, bins)
            # bin edges from the first batch, widened: a later, larger value lands in an end bin
            span = act[:, int(skip_first) :].reshape(-1, N)
            lo, hi = span.min(0).values, span.max(0).values
            pad = (hi - lo).clamp_min(1e-6) * 0.5
            lo, hi = lo - pad, hi + pad
        scored = act[:, int(skip_first) :].reshape(-1, N)
        total += scored.sum(0, dtype=torch.float64)
        positive += (scored > 0).sum(0, dtype=torch.float64)
        count += scored.shape[0]
        which = ((scored - lo) / (hi - lo) * bins).long().clamp(0, bins - 1)  # [n, N]
        hist.scatter_add_(1, which.T, torch.ones_like(which.T, dtype=hist.dtype))
        offsets = (torch.arange(start, start + B).view(B, 1) * T + torch.arange(T)).long()
        state.add(act, ids, offsets, first=int(skip_first))
        if progress is not None:
            progress(B * T)
    assert state is not None
    width = state.values.shape[0]
    if neurons is not None:
        bad = [n for n in neurons if not 0 <= n < width]
        if bad:
            raise ValueError(f"neuron {bad[0]} is out of range: {hook} has neurons 0..{width - 1}")
        chosen, selection = list(neurons), "given"
    else:
        chosen = state.values[:, 0].topk(min(top, width)).indices.tolist()
        selection = f"the {len(chosen)} with the largest maximum activation"
    report = []
    for n in chosen:
        edges = torch.linspace(float(lo[n]), float(hi[n]), bins + 1)
        report.append(
            Neuron(
                index=int(n),
                max=float(state.values[n, 0]),
                mean=float(total[n] / max(count, 1)),
                positive=float(positive[n] / max(count, 1)),
                histogram=[int(c) for c in hist[n]],
                edges=[float(e) for e in edges],
                contexts=state.contexts(n),
            )
        )
    return NeuronScan(
        hook=hook,
        width=width,
        tokens=count,
        windows=len(windows),
        selection=selection,
        neurons=report,
    )
