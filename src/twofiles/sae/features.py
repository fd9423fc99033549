"""Feature dashboards: what makes each feature of a sparse autoencoder fire, and what it does.

What it owns: one streaming pass of the model over a corpus (the activations at the SAE's hook,
encoded in batches; per feature only running numbers are kept: firings, sum, maximum, a log-binned
histogram, the top activating positions and a uniform sample of its firings), a second pass over
the few windows the pages show (each context with the feature's activation on every token), and
the tokens a feature promotes and suppresses through the unembedding: `Dashboards`, the numbers.
What it leaves to others: the pages (sae/pages.py), the SAE's math and file (sae/model.py), the
hooked forward (inspect/hooks.py), training (sae/train.py).

Memory stays flat in the corpus size: the activations of one batch at a time, [d_sae, K] running
tables; what grows is the corpus's token ids (4 bytes a token), which the second pass reads.
A window's first position and every bos are context only, never a firing (as in `sae train`):
models park attention on the first position (the attention sink), and its residual stream is an
outlier, tens of times the others' norm, that features would fire on for that reason alone.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from twofiles.errors import BadInputError
from twofiles.inspect import activation_at, hook_names
from twofiles.model import Transformer
from twofiles.sae.model import SparseAutoencoder

TOP_CONTEXTS = 20  # top activating contexts kept per feature (SAELens's dashboards show 20)
SAMPLE = 256  # firings kept per feature in a uniform sample, for the quantile bands
QUANTILE_EDGES = (0.0, 0.25, 0.5, 0.75, 0.9, 1.0)  # bands of the feature's non-zero activations
PER_BAND = 4  # contexts shown per quantile band
LEFT, RIGHT = 16, 4  # tokens shown before and after the firing token
LOGIT_TOKENS = 10  # promoted and suppressed tokens listed per feature
# the histogram's bins: log-spaced, so a feature firing at 0.01 and one at 100 both get a shape;
# anything below the first edge counts in the first bin, above the last in the last
HIST_LO, HIST_HI, HIST_BINS = -3.0, 4.0, 140  # log10 of the activation: 20 bins a decade


def corpus_windows(
    tokenizer: Any, texts: Iterable[str], n_tokens: int, length: int
) -> torch.Tensor:
    """Token windows [n, length] as `sae train` cuts them (sae.activations.token_windows), until
    about `n_tokens` tokens; a clear error when the corpus holds less than one window."""
    from twofiles.sae.activations import token_windows

    windows = token_windows(
        tokenizer, texts, length, max_windows=max(1, math.ceil(n_tokens / length))
    )
    if len(windows) == 0:
        raise BadInputError(f"the corpus gives fewer than one {length}-token window")
    return torch.from_numpy(windows)


@torch.no_grad()
def feature_logits(
    model: Transformer | Any, sae: SparseAutoencoder, features: Sequence[int]
) -> torch.Tensor:
    """What each feature's decoder direction does to the next-token logits, [F, vocab]:
    (W_dec[f] * g) @ W_U, with g the final RMSNorm's weight folded in as TransformerLens's
    processed weights fold it (the norm's 1/rms is a positive scale per position: it changes no
    ranking, so it is left out). Read directly: it is the direct path only, as if the direction
    were added just before the final norm."""
    inner = getattr(model, "model", None)
    m: torch.nn.Module = inner if isinstance(inner, Transformer) else model
    W_U = m.get_parameter("lm_head.weight")  # [vocab, d]
    if sae.cfg.d_in != W_U.shape[1]:
        raise BadInputError(
            f"the SAE's width {sae.cfg.d_in} is not the model's dim {W_U.shape[1]}: "
            "its directions cannot be read through the unembedding"
        )
    idx = torch.as_tensor(list(features), dtype=torch.long)
    dirs = (
        sae.W_dec[idx].to(W_U.device, torch.float32) * m.get_parameter("model.norm.weight").float()
    )
    return dirs @ W_U.float().T


class _Tracker:
    """Running numbers for every feature: firings, sum, max, histogram, the top-K positions by
    activation and a uniform sample (the SAMPLE firings with the smallest random keys: a
    bottom-k sketch, so merging batches keeps it uniform)."""

    def __init__(self, d_sae: int, top_k: int, sample: int, seed: int) -> None:
        self.count = torch.zeros(d_sae, dtype=torch.long)
        self.total = torch.zeros(d_sae, dtype=torch.float64)
        self.max = torch.zeros(d_sae)
        self.hist = torch.zeros(d_sae * HIST_BINS, dtype=torch.long)
        self.top_val = torch.full((d_sae, top_k), -math.inf)
        self.top_idx = torch.full((d_sae, top_k), -1, dtype=torch.long)
        self.key = torch.full((d_sae, sample), math.inf)
        self.sample_val = torch.zeros(d_sae, sample)
        self.sample_idx = torch.full((d_sae, sample), -1, dtype=torch.long)
        self.gen = torch.Generator().manual_seed(seed)
        self.tokens = 0

    def update(self, acts: torch.Tensor, where: torch.Tensor) -> None:
        """acts [N, d_sae] (cpu fp32) at flat token positions `where` [N]."""
        if not acts.shape[0]:
            return
        fired = acts > 0
        self.tokens += acts.shape[0]
        self.count += fired.sum(0)
        self.total += acts.sum(0, dtype=torch.float64)
        self.max = torch.maximum(self.max, acts.max(0).values)
        rows, cols = fired.nonzero(as_tuple=True)
        if rows.numel():
            b = ((acts[rows, cols].log10() - HIST_LO) / (HIST_HI - HIST_LO) * HIST_BINS).long()
            self.hist.index_add_(
                0, cols * HIST_BINS + b.clamp(0, HIST_BINS - 1), torch.ones_like(cols)
            )
        pos = where.expand(acts.shape[1], -1)  # [d_sae, N]
        vals = acts.T.masked_fill(~fired.T, -math.inf)
        top = torch.cat([self.top_val, vals], 1).topk(self.top_val.shape[1], dim=1)
        self.top_val = top.values
        self.top_idx = torch.cat([self.top_idx, pos], 1).gather(1, top.indices)
        keys = torch.rand(acts.shape, generator=self.gen).T.masked_fill(~fired.T, math.inf)
        low = torch.cat([self.key, keys], 1).topk(self.key.shape[1], dim=1, largest=False)
        self.key = low.values
        self.sample_val = torch.cat([self.sample_val, acts.T], 1).gather(1, low.indices)
        self.sample_idx = torch.cat([self.sample_idx, pos], 1).gather(1, low.indices)


@dataclass
class Context:
    """One firing: its activation, where it is (window, position) and the tokens around it with
    the feature's activation on each (filled by the second pass)."""

    value: float
    window: int
    pos: int
    tokens: list[str] = field(default_factory=list)
    acts: list[float] = field(default_factory=list)
    mark: int = 0  # the firing token's index in `tokens`

    def to_dict(self) -> dict[str, Any]:
        return {
            "value": round(self.value, 5),
            "window": self.window,
            "pos": self.pos,
            "tokens": self.tokens,
            "acts": [round(a, 4) for a in self.acts],
            "mark": self.mark,
        }


@dataclass
class Band:
    lo_q: float  # quantile range of the feature's non-zero activations
    hi_q: float
    lo: float  # the activations at those quantiles (from the uniform sample)
    hi: float
    contexts: list[Context]


@dataclass
class Feature:
    index: int
    firings: int
    density: float  # firings / tokens
    max: float
    mean: float  # over its firings
    top: list[Context]
    bands: list[Band]
    hist: list[int]  # counts per log-spaced bin (hist_edges)
    promoted: list[tuple[str, float]]  # tokens whose logits its direction raises most
    suppressed: list[tuple[str, float]]

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "firings": self.firings,
            "density": self.density,
            "max": round(self.max, 5),
            "mean": round(self.mean, 5),
            "top": [c.to_dict() for c in self.top],
            "bands": [
                {
                    "quantiles": [b.lo_q, b.hi_q],
                    "range": [round(b.lo, 5), round(b.hi, 5)],
                    "contexts": [c.to_dict() for c in b.contexts],
                }
                for b in self.bands
            ],
            "hist": self.hist,
            "promoted": [[t, round(v, 4)] for t, v in self.promoted],
            "suppressed": [[t, round(v, 4)] for t, v in self.suppressed],
        }


@dataclass
class Dashboards:
    """Everything the pages show: the run's facts, per-feature numbers for every feature (density,
    max) and the full dashboards of the chosen ones."""

    hook_name: str
    model: str
    tokens: int  # tokens counted (each window's first token excluded)
    windows: int
    context: int
    d_sae: int
    density: list[float]
    max: list[float]
    features: list[Feature]
    order: str  # how the index is sorted: "density" or "max"
    norm_folded: bool = True  # promoted tokens include the final norm's weight

    def to_dict(self) -> dict[str, Any]:
        return {
            "hook_name": self.hook_name,
            "model": self.model,
            "tokens": self.tokens,
            "windows": self.windows,
            "context": self.context,
            "d_sae": self.d_sae,
            "dead": sum(1 for c in self.density if c == 0),
            "order": self.order,
            "hist_edges_log10": hist_edges(),
            "final_norm_folded": self.norm_folded,
            "density": [round(d, 7) for d in self.density],
            "max": [round(m, 5) for m in self.max],
            "features": {str(f.index): f.to_dict() for f in self.features},
        }


def hist_edges() -> list[float]:
    step = (HIST_HI - HIST_LO) / HIST_BINS
    return [round(HIST_LO + i * step, 4) for i in range(HIST_BINS + 1)]


@torch.no_grad()
def _encode(sae: SparseAutoencoder, x: torch.Tensor) -> torch.Tensor:
    w = sae.W_enc
    return sae.encode(x.to(w.device, w.dtype)).float()


def _batches(n: int, size: int) -> Iterable[range]:
    for s in range(0, n, size):
        yield range(s, min(n, s + size))


def _pick(tracker: _Tracker, features: Sequence[int] | None, top: int, order: str) -> list[int]:
    if features is not None:
        return list(features)
    key = tracker.count if order == "density" else tracker.max
    alive = [i for i in key.argsort(descending=True, stable=True).tolist() if tracker.count[i] > 0]
    return alive[:top]


def _bands(tracker: _Tracker, f: int, length: int) -> list[Band]:
    ok = tracker.key[f] < math.inf
    vals, where = tracker.sample_val[f][ok], tracker.sample_idx[f][ok]  # in random order
    if not vals.numel():
        return []
    qs = torch.quantile(vals.double(), torch.tensor(QUANTILE_EDGES, dtype=torch.float64)).tolist()
    bands = []
    for j in range(len(QUANTILE_EDGES) - 1):
        lo, hi = qs[j], qs[j + 1]
        last = j == len(QUANTILE_EDGES) - 2
        inside = (vals >= lo) & ((vals <= hi) if last else (vals < hi))
        picks = inside.nonzero().flatten()[:PER_BAND].tolist()
        ctx = [
            Context(float(vals[i]), int(where[i]) // length, int(where[i]) % length) for i in picks
        ]
        ctx.sort(key=lambda c: -c.value)
        bands.append(Band(QUANTILE_EDGES[j], QUANTILE_EDGES[j + 1], lo, hi, ctx))
    return bands


def build_dashboards(
    model: Transformer | Any,
    tokenizer: Any,
    sae: SparseAutoencoder,
    windows: torch.Tensor,
    *,
    features: Sequence[int] | None = None,
    top: int = 50,
    order: str = "density",
    batch_size: int = 8,
    model_name: str = "",
    progress: Callable[[str, int], Callable[[int], object]] | None = None,
    seed: int = 0,
) -> Dashboards:
    """Dashboards of `features` (or the `top` features that fired, by `order`: "density" or
    "max") over token `windows` [n, T]. `progress(label, total)` returns an advance(n) callback."""
    if order not in ("density", "max"):
        raise BadInputError(f"order {order!r}: density or max")
    hook = sae.cfg.hook_name
    n, T = windows.shape
    d_sae = sae.cfg.d_sae
    for f in features or ():
        if not 0 <= f < d_sae:
            raise BadInputError(f"feature {f}: this SAE has features 0..{d_sae - 1}")
    if hook not in hook_names(model):
        raise BadInputError(f"the SAE's hook {hook!r} is not a hook point of this model")
    tracker = _Tracker(d_sae, TOP_CONTEXTS, SAMPLE, seed)
    counted = windows != tokenizer.bos_id  # [n, T]: the positions that can fire
    counted[:, 0] = False
    advance = progress("activations", n) if progress else (lambda k: None)
    for rows in _batches(n, batch_size):
        ids = windows[rows.start : rows.stop]
        x = activation_at(model, ids, hook)
        if x.shape[-1] != sae.cfg.d_in:
            raise BadInputError(
                f"the SAE reads {sae.cfg.d_in}-wide activations; {hook} is {x.shape[-1]} wide here"
            )
        acts = _encode(sae, x).cpu()  # [B, T, d_sae]
        where = torch.arange(rows.start * T, rows.stop * T).view(len(rows), T)
        keep = counted[rows.start : rows.stop]
        tracker.update(acts[keep], where[keep])
        advance(len(rows))

    chosen = _pick(tracker, features, top, order)
    tops: dict[int, list[Context]] = {}
    bands: dict[int, list[Band]] = {}
    for f in chosen:
        ok = tracker.top_val[f] > -math.inf
        tops[f] = sorted(
            (
                Context(float(v), int(i) // T, int(i) % T)
                for v, i in zip(tracker.top_val[f][ok], tracker.top_idx[f][ok], strict=True)
            ),
            key=lambda c: (-c.value, c.window, c.pos),
        )
        bands[f] = _bands(tracker, f, T)
    _fill_contexts(
        model, tokenizer, sae, windows, counted, chosen, tops, bands, batch_size, progress
    )

    logits = feature_logits(model, sae, chosen) if chosen else torch.zeros(0, 1)
    n_tokens = max(tracker.tokens, 1)
    out = []
    for row, f in enumerate(chosen):
        up = logits[row].topk(min(LOGIT_TOKENS, logits.shape[1]))
        down = (-logits[row]).topk(min(LOGIT_TOKENS, logits.shape[1]))
        count = int(tracker.count[f])
        out.append(
            Feature(
                index=f,
                firings=count,
                density=count / n_tokens,
                max=float(tracker.max[f]),
                mean=float(tracker.total[f]) / count if count else 0.0,
                top=tops[f],
                bands=bands[f],
                hist=tracker.hist[f * HIST_BINS : (f + 1) * HIST_BINS].tolist(),
                promoted=[
                    (tokenizer.decode([i]), float(v))
                    for i, v in zip(up.indices.tolist(), up.values.tolist(), strict=True)
                ],
                suppressed=[
                    (tokenizer.decode([i]), -float(v))
                    for i, v in zip(down.indices.tolist(), down.values.tolist(), strict=True)
                ],
            )
        )
    return Dashboards(
        hook_name=hook,
        model=model_name,
        tokens=tracker.tokens,
        windows=n,
        context=T,
        d_sae=d_sae,
        density=(tracker.count.double() / n_tokens).tolist(),
        max=tracker.max.tolist(),
        features=out,
        order=order,
    )


def _fill_contexts(
    model: Any,
    tokenizer: Any,
    sae: SparseAutoencoder,
    windows: torch.Tensor,
    counted: torch.Tensor,
    chosen: list[int],
    tops: dict[int, list[Context]],
    bands: dict[int, list[Band]],
    batch_size: int,
    progress: Callable[[str, int], Callable[[int], object]] | None,
) -> None:
    """The second pass: each shown context's tokens and the feature's activation on each (0 on
    the positions that are never counted: bos, a window's first token)."""
    by_window: dict[int, list[tuple[int, Context]]] = {}
    for f in chosen:
        for c in [*tops[f], *(c for b in bands[f] for c in b.contexts)]:
            by_window.setdefault(c.window, []).append((f, c))
    need = sorted(by_window)
    if not need:
        return
    T = windows.shape[1]
    text: dict[int, str] = {}
    advance = progress("contexts", len(need)) if progress else (lambda k: None)
    for rows in _batches(len(need), batch_size):
        ws = need[rows.start : rows.stop]
        acts = _encode(sae, activation_at(model, windows[ws], sae.cfg.hook_name)).cpu()
        acts *= counted[ws].unsqueeze(-1)
        for b, w in enumerate(ws):
            for f, c in by_window[w]:
                lo, hi = max(1, c.pos - LEFT), min(T, c.pos + RIGHT + 1)
                ids = windows[w, lo:hi].tolist()
                for i in ids:
                    if i not in text:
                        text[i] = tokenizer.decode([i])
                c.tokens = [text[i] for i in ids]
                c.acts = acts[b, lo:hi, f].tolist()
                c.mark = c.pos - lo
        advance(len(ws))
