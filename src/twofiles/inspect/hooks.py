"""Activations by TransformerLens's hook names: read them, ablate them, patch them, steer them.

What it owns: the hook names of a Llama-style model (`hook_names`), a hooked forward pass that
mirrors `Transformer.forward` step by step and calls the hooks attached at each named point
(`run_with_hooks`, `run_with_cache`), and module hooks for the points that are module boundaries
(`attached`: these also run inside the engine's cached generation, which is how steering works
while generating). What it leaves to others: the model's math (model.py, untouched: a plain
forward runs no hook code and is exactly as fast as before), the pictures built on the cache
(the other modules of this package).

Names (TransformerLens's, for a model of `n` layers; shapes for a batch of B rows of T tokens):

    hook_embed                         [B, T, d_model]      token embeddings
    blocks.{i}.hook_resid_pre          [B, T, d_model]      the residual stream entering block i
    blocks.{i}.ln1.hook_normalized     [B, T, d_model]      x / rms(x), before the norm's weight
    blocks.{i}.attn.hook_q|k|v         [B, T, heads, d_head] projections (k, v: the kv heads)
    blocks.{i}.attn.hook_rot_q|rot_k   [B, T, heads, d_head] q and k after RoPE
    blocks.{i}.attn.hook_attn_scores   [B, heads, T, T]     q.k / sqrt(d_head), future = -inf
    blocks.{i}.attn.hook_pattern       [B, heads, T, T]     softmax of the scores
    blocks.{i}.attn.hook_z             [B, T, heads, d_head] pattern @ v, per head
    blocks.{i}.hook_attn_out           [B, T, d_model]      the attention's output (o_proj of z)
    blocks.{i}.hook_resid_mid          [B, T, d_model]      resid_pre + attn_out
    blocks.{i}.ln2.hook_normalized     [B, T, d_model]
    blocks.{i}.mlp.hook_pre            [B, T, d_mlp]        the gate projection (before SiLU)
    blocks.{i}.mlp.hook_pre_linear     [B, T, d_mlp]        the up projection
    blocks.{i}.mlp.hook_post           [B, T, d_mlp]        silu(pre) * pre_linear
    blocks.{i}.hook_mlp_out            [B, T, d_model]
    blocks.{i}.hook_resid_post         [B, T, d_model]      resid_mid + mlp_out
    ln_final.hook_normalized           [B, T, d_model]      before the final norm's weight

A hook is `fn(activation, hook) -> tensor | None` with `hook.name` (TransformerLens's signature):
returning a tensor replaces the activation downstream; None leaves it as it is.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from twofiles.model import Transformer, apply_rope, fold_rope_sign

_LAYER_NAMES = (
    "hook_resid_pre",
    "ln1.hook_normalized",
    "attn.hook_q",
    "attn.hook_k",
    "attn.hook_v",
    "attn.hook_rot_q",
    "attn.hook_rot_k",
    "attn.hook_attn_scores",
    "attn.hook_pattern",
    "attn.hook_z",
    "hook_attn_out",
    "hook_resid_mid",
    "ln2.hook_normalized",
    "mlp.hook_pre",
    "mlp.hook_pre_linear",
    "mlp.hook_post",
    "hook_mlp_out",
    "hook_resid_post",
)

# TransformerLens's shorthand: cache["resid_post", 3] is cache["blocks.3.hook_resid_post"]
_SHORT = {
    name.rsplit(".", 1)[-1].removeprefix("hook_"): name
    for name in _LAYER_NAMES
    if not name.startswith(("ln1.", "ln2."))
}
_SHORT.update(scores="attn.hook_attn_scores", attn="attn.hook_pattern")

_NAME_RE = re.compile(r"blocks\.(\d+)\.")


@dataclass(frozen=True)
class HookPoint:
    """What a hook is told about where it runs (TransformerLens passes its HookPoint module)."""

    name: str

    def layer(self) -> int | None:
        """The block index in the name, None for hook_embed and ln_final."""
        m = _NAME_RE.match(self.name)
        return int(m.group(1)) if m else None


HookFn = Callable[[torch.Tensor, HookPoint], "torch.Tensor | None"]
NameFilter = str | Callable[[str], bool]


def hook_names(model: Transformer | Any) -> list[str]:
    """Every hook name of `model` (a Transformer or a LoadedModel), in the order they run."""
    n = as_transformer(model).config.n_layers
    names = ["hook_embed"]
    for i in range(n):
        names += [f"blocks.{i}.{suffix}" for suffix in _LAYER_NAMES]
    return [*names, "ln_final.hook_normalized"]


def long_name(name: str | tuple[str, int]) -> str:
    """A full hook name from TransformerLens's shorthand (`("resid_post", 3)`, `("pattern", 0)`,
    `"embed"`); full names pass through."""
    if isinstance(name, tuple):
        short, layer = name
        suffix = _SHORT.get(short, short)
        return f"blocks.{layer}.{suffix}"
    if name in ("embed", "hook_embed"):
        return "hook_embed"
    if name in ("ln_final", "ln_final.hook_normalized", "normalized"):
        return "ln_final.hook_normalized"
    return name


class ActivationCache(Mapping[str, torch.Tensor]):
    """The activations a run kept, by full name; `cache["resid_post", 3]` and `cache["embed"]`
    work as in TransformerLens. Tensors are detached (gradients never flow through a cache)."""

    def __init__(self, store: dict[str, torch.Tensor]) -> None:
        self._store = store

    def __getitem__(self, key: str | tuple[str, int]) -> torch.Tensor:
        name = long_name(key)
        if name not in self._store:
            kept = ", ".join(list(self._store)[:6]) + (", ..." if len(self._store) > 6 else "")
            raise KeyError(f"{name!r} was not cached (kept: {kept or 'nothing'})")
        return self._store[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._store)

    def __len__(self) -> int:
        return len(self._store)

    def stack(self, short: str) -> torch.Tensor:
        """One activation across layers, stacked on a new first dim: [n_layers, ...]."""
        names = [n for n in self._store if n.endswith("." + _SHORT.get(short, short))]
        if not names:
            raise KeyError(f"no {short!r} activation was cached")
        names.sort(key=lambda n: HookPoint(n).layer() or 0)
        return torch.stack([self._store[n] for n in names])


def as_transformer(model: Transformer | Any) -> Transformer:
    """The Transformer of `model` (a Transformer or a LoadedModel); TypeError for anything else."""
    inner = getattr(model, "model", None)
    if isinstance(inner, Transformer):  # a LoadedModel
        return inner
    if isinstance(model, Transformer):
        return model
    raise TypeError(f"expected a twofiles Transformer or LoadedModel, got {type(model).__name__}")


def _as_batch(model: Transformer, tokens: torch.Tensor | Sequence[int]) -> torch.Tensor:
    t = tokens if isinstance(tokens, torch.Tensor) else torch.tensor(list(tokens))
    if t.dim() == 1:
        t = t.unsqueeze(0)
    if t.dim() != 2:
        raise ValueError(f"tokens must be [T] or [B, T], got shape {tuple(t.shape)}")
    if t.shape[1] > model.config.max_seq_len:
        raise ValueError(
            f"{t.shape[1]} tokens exceed the model's context of {model.config.max_seq_len}"
        )
    return t.to(model.rope_cos.device)


def _matcher(spec: NameFilter) -> Callable[[str], bool]:
    if callable(spec):
        return spec
    name = long_name(spec)
    return lambda n: n == name


class _Hooks:
    """Which functions run at which names, resolved once per run (a name with none costs a dict
    lookup)."""

    def __init__(self, names: list[str], hooks: Iterable[tuple[NameFilter, HookFn]]) -> None:
        self.at: dict[str, list[HookFn]] = {}
        for spec, fn in hooks:
            match = _matcher(spec)
            hit = [n for n in names if match(n)]
            if not hit and isinstance(spec, str):
                raise KeyError(f"no hook point named {long_name(spec)!r}")
            for n in hit:
                self.at.setdefault(n, []).append(fn)

    def wants(self, name: str) -> bool:
        return name in self.at

    def __call__(self, name: str, x: torch.Tensor) -> torch.Tensor:
        for fn in self.at.get(name, ()):
            out = fn(x, HookPoint(name))
            if out is not None:
                if out.shape != x.shape:
                    raise ValueError(
                        f"hook at {name} returned shape {tuple(out.shape)}, expected {tuple(x.shape)}"
                    )
                x = out
        return x


def _normalized(x: torch.Tensor, eps: float) -> torch.Tensor:
    return F.rms_norm(x, (x.shape[-1],), None, eps)


def _hooked_forward(model: Transformer, idx: torch.Tensor, h: _Hooks) -> torch.Tensor:
    """Transformer.forward (no caches, plain causal attention) with the named points exposed.
    Mirrors model.py step for step; tests/test_inspect_hooks.py holds the two to the same logits."""
    B, T = idx.shape
    x = h("hook_embed", model.model.embed_tokens(idx))
    cos = model.rope_cos[:T].to(x.dtype)
    sin = fold_rope_sign(model.rope_sin[:T].to(x.dtype))
    future = torch.ones(T, T, dtype=torch.bool, device=x.device).triu(1)
    for i, layer in enumerate(model.model.layers):
        p = f"blocks.{i}."
        x = h(p + "hook_resid_pre", x)
        att = layer.self_attn
        normed = h(p + "ln1.hook_normalized", _normalized(x, layer.input_layernorm.eps))
        a_in = normed * layer.input_layernorm.weight
        nh, nkv, hd = att.n_heads, att.n_kv_heads, att.head_dim
        if att.qkv_proj is not None:
            q, k, v = att.qkv_proj(a_in).split((nh * hd, nkv * hd, nkv * hd), dim=-1)
        else:
            q, k, v = att.q_proj(a_in), att.k_proj(a_in), att.v_proj(a_in)
        q = h(p + "attn.hook_q", q.view(B, T, nh, hd))
        k = h(p + "attn.hook_k", k.view(B, T, nkv, hd))
        v = h(p + "attn.hook_v", v.view(B, T, nkv, hd))
        q = h(p + "attn.hook_rot_q", apply_rope(q.transpose(1, 2), cos, sin).transpose(1, 2))
        k = h(p + "attn.hook_rot_k", apply_rope(k.transpose(1, 2), cos, sin).transpose(1, 2))
        rep = nh // nkv  # grouped-query attention: each kv head serves `rep` query heads
        kh = k.transpose(1, 2).repeat_interleave(rep, dim=1)  # [B, H, T, hd]
        vh = v.transpose(1, 2).repeat_interleave(rep, dim=1)
        if h.wants(p + "attn.hook_attn_scores") or h.wants(p + "attn.hook_pattern"):
            scores = (q.transpose(1, 2) @ kh.transpose(-2, -1)) / math.sqrt(hd)  # [B, H, T, T]
            scores = h(p + "attn.hook_attn_scores", scores.masked_fill(future, float("-inf")))
            pattern = h(p + "attn.hook_pattern", scores.softmax(dim=-1))
            heads = pattern @ vh
        else:  # nobody looks at the T x T matrices: the fused kernel, as the model runs it
            heads = F.scaled_dot_product_attention(q.transpose(1, 2), kh, vh, is_causal=True)
        z = h(p + "attn.hook_z", heads.transpose(1, 2))  # [B, T, H, hd]
        attn_out = h(p + "hook_attn_out", att.o_proj(z.reshape(B, T, nh * hd)))
        x = h(p + "hook_resid_mid", x + attn_out)
        normed = h(p + "ln2.hook_normalized", _normalized(x, layer.post_attention_layernorm.eps))
        m_in = normed * layer.post_attention_layernorm.weight
        mlp = layer.mlp
        if mlp.gate_up_proj is not None:
            gate, up = mlp.gate_up_proj(m_in).chunk(2, dim=-1)
        else:
            gate, up = mlp.gate_proj(m_in), mlp.up_proj(m_in)
        gate = h(p + "mlp.hook_pre", gate)
        up = h(p + "mlp.hook_pre_linear", up)
        post = h(p + "mlp.hook_post", F.silu(gate) * up)
        x = h(p + "hook_resid_post", x + h(p + "hook_mlp_out", mlp.down_proj(post)))
    normed = h("ln_final.hook_normalized", _normalized(x, model.model.norm.eps))
    return model.lm_head(normed * model.model.norm.weight).float()


def run_with_hooks(
    model: Transformer | Any,
    tokens: torch.Tensor | Sequence[int],
    hooks: Iterable[tuple[NameFilter, HookFn]] = (),
) -> torch.Tensor:
    """Logits [B, T, vocab] (fp32) of a forward pass that runs each hook at its point; `hooks`
    are (name or name predicate, fn) pairs, e.g. `("blocks.2.attn.hook_z", ablate_head)`.
    Gradients flow unless the caller is under torch.no_grad()."""
    m = as_transformer(model)
    idx = _as_batch(m, tokens)
    return _hooked_forward(m, idx, _Hooks(hook_names(m), hooks))


def run_with_cache(
    model: Transformer | Any,
    tokens: torch.Tensor | Sequence[int],
    names: Iterable[str | tuple[str, int]] | Callable[[str], bool] | None = None,
    *,
    hooks: Iterable[tuple[NameFilter, HookFn]] = (),
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, ActivationCache]:
    """(logits, cache) of a no-grad forward pass: the cache keeps only the activations `names`
    selects (a list of names or shorthands, a predicate on names, or None for all of them), as
    they are after any `hooks` at the same point ran, moved to `device` if given."""
    m = as_transformer(model)
    all_names = hook_names(m)
    if names is None:
        keep: Callable[[str], bool] = lambda n: True  # noqa: E731
    elif callable(names):
        keep = names
    else:
        wanted = {long_name(n) for n in names}
        unknown = wanted - set(all_names)
        if unknown:
            raise KeyError(f"no hook point named {sorted(unknown)[0]!r}")
        keep = wanted.__contains__
    store: dict[str, torch.Tensor] = {}

    def save(x: torch.Tensor, hook: HookPoint) -> None:
        store[hook.name] = x.detach() if device is None else x.detach().to(device)

    with torch.no_grad():
        logits = run_with_hooks(m, tokens, [*hooks, (keep, save)])
    return logits, ActivationCache(store)


class _Stop(Exception):
    """Raised by activation_at's hook: nothing after the point is needed."""


def activation_at(
    model: Transformer | Any, tokens: torch.Tensor | Sequence[int], name: str | tuple[str, int]
) -> torch.Tensor:
    """The activation at one hook point for `tokens` ([T] or [B, T]), without gradients, the
    forward stopped right after it: a scan of layer 2 of a 30-layer model runs 3 blocks."""
    got: list[torch.Tensor] = []

    def grab(x: torch.Tensor, hook: HookPoint) -> None:
        got.append(x.detach())
        raise _Stop

    with torch.no_grad():
        try:
            run_with_hooks(model, tokens, [(long_name(name), grab)])
        except _Stop:
            pass
    return got[0]


# points that are a module's input or output: these run inside any forward, the engine's cached
# decoding included (module -> (the module, "pre" for its input or "post" for its output))
def _module_point(model: Transformer, name: str) -> tuple[torch.nn.Module, str]:
    if name == "hook_embed":
        return model.model.embed_tokens, "post"
    m = re.fullmatch(
        r"blocks\.(\d+)\.(hook_resid_pre|hook_resid_post|hook_attn_out|hook_mlp_out)", name
    )
    if m is None or int(m.group(1)) >= model.config.n_layers:
        raise KeyError(
            f"{name!r} is not a module boundary: during generation only hook_embed and "
            "blocks.{i}.hook_resid_pre|hook_resid_post|hook_attn_out|hook_mlp_out can be hooked "
            "(run_with_hooks reaches every point)"
        )
    block = model.model.layers[int(m.group(1))]
    kind = m.group(2)
    if kind == "hook_resid_pre":
        return block, "pre"
    if kind == "hook_resid_post":
        return block, "post"
    return (block.self_attn if kind == "hook_attn_out" else block.mlp), "post"


@contextlib.contextmanager
def attached(
    model: Transformer | Any, hooks: Iterable[tuple[str | tuple[str, int], HookFn]]
) -> Iterator[None]:
    """Run `hooks` inside every forward of `model` while the block is open (generation with the
    KV cache included: each call then sees only the new tokens), through torch module hooks on
    the points that are module boundaries. Removed on exit, even on error."""
    m = as_transformer(model)
    handles: list[Any] = []
    try:
        for spec, fn in hooks:
            name = long_name(spec)
            module, where = _module_point(m, name)
            point = HookPoint(name)

            def pre(_mod: Any, args: tuple[Any, ...], fn: HookFn = fn, point: HookPoint = point):
                out = fn(args[0], point)
                return None if out is None else (out, *args[1:])

            def post(_mod: Any, _args: Any, output: Any, fn: HookFn = fn, point: HookPoint = point):
                return fn(output, point)

            handles.append(
                module.register_forward_pre_hook(pre)
                if where == "pre"
                else module.register_forward_hook(post)
            )
        yield
    finally:
        for handle in handles:
            handle.remove()
