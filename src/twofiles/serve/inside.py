"""The web UI's Inside page: a prompt's logit lens, attention heads and SAE features, in JSON.

What it owns: `attach(app, saes)`, which the server's `create_app` calls to add
  GET  /inside                      the page (serve/static/inside.html + inside.js)
  GET  /inside/models               the served models: layers, heads, token limit, their SAEs
  POST /inside/run                  a prompt's tokens, its logit lens (inspect.lens.logit_lens)
                                    and, per SAE, the features that fire at each token
  POST /inside/attention            one layer's attention patterns, every head (hook_pattern)
  GET  /inside/sae/{id}/{file}      an SAE's dashboards (`twofiles sae features DIR` writes
                                    DIR/features/index.html and DIR/features/{i}.html), read-only
and `ServedSAE` / `load_served_sae` (an SAE checked against the model it reads, at start-up).

What it leaves to others: the numbers (twofiles.inspect: hooks and the lens; twofiles.sae: the
SAE), the dashboards themselves (sae/features.py), limits shared with the other routes
(settings.py: `inside_max_tokens`), security headers and errors (app.py).

The forwards run beside the scheduler, not through it, the way core.score_prompt does: they only
read the weights and need no KV-cache slot. They take the server's scoring lock, so they run one
at a time and never pile up beside decoding, on a worker thread, never on the event loop.
"""

from __future__ import annotations

import asyncio
import os
import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from twofiles.errors import BadInputError
from twofiles.serve.core import engine_name, served_model
from twofiles.serve.protocol import ApiError

if TYPE_CHECKING:
    import torch

    from twofiles.artifact import LoadedModel
    from twofiles.sae.model import SparseAutoencoder

PAGE = Path(__file__).with_name("static") / "inside.html"

# Limits (named here, checked by the request models and routes below). The prompt's length in
# tokens is the server's `inside_max_tokens` (settings.py), capped by the model's context.
INSIDE_MAX_PROMPT_CHARS = 16_000  # characters before tokenizing; tokens are checked after
INSIDE_DEFAULT_TOP = 5  # top tokens per lens cell, features per token
INSIDE_MAX_TOP = 20
# attention numbers in one reply (heads x T x (T + 1) / 2, the causal triangle): past it the
# page asks for one head at a time (SmolLM2's 9 heads at 256 tokens send ~300k)
INSIDE_MAX_ATTENTION_VALUES = 1_000_000
ROUND = 5  # decimals of the numbers sent: probabilities and weights, not bit patterns

# An SAE dashboard the page may link to: the index or one feature's page, or a picture beside it.
_DASHBOARD_FILE = re.compile(r"(index|\d{1,9})\.html|[A-Za-z0-9_-]{1,100}\.png")
# Dashboards are our own static pages (inspect.render: inline styles and images, no scripts);
# served with styles allowed and scripts refused outright, in a sandbox.
DASHBOARD_CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'; sandbox allow-popups allow-same-origin"
)


@dataclass
class ServedSAE:
    """An SAE the Inside page reads with one served model; `id` names it in URLs."""

    id: str
    name: str  # for people: the directory's name
    path: Path  # the directory (or file) given to --sae
    sae: SparseAutoencoder
    hook_name: str

    @property
    def features_dir(self) -> Path:
        """Where `twofiles sae features` writes this SAE's dashboards."""
        return (self.path if self.path.is_dir() else self.path.parent) / "features"

    def json(self) -> dict[str, Any]:
        cfg = self.sae.cfg
        return {
            "id": self.id,
            "name": self.name,
            "hook_name": self.hook_name,
            "d_sae": cfg.d_sae,
            "kind": cfg.kind,
            "dashboards": (self.features_dir / "index.html").is_file(),
        }


def activation_width(loaded: LoadedModel, hook_name: str) -> int | None:
    """The width of the activation an SAE at `hook_name` reads (per-head points flattened, as
    SAELens does), or None when the model has no per-token activation of that name."""
    from twofiles.inspect import hook_names

    if hook_name not in hook_names(loaded):
        return None
    cfg = loaded.model.config
    head_dim = cfg.head_dim
    if hook_name.endswith(("attn.hook_q", "attn.hook_rot_q", "attn.hook_z")):
        return cfg.n_heads * head_dim
    if hook_name.endswith(("attn.hook_k", "attn.hook_v", "attn.hook_rot_k")):
        return cfg.n_kv_heads * head_dim
    if hook_name.endswith(("hook_attn_scores", "hook_pattern")):
        return None  # [heads, T, T]: not a per-token vector
    if ".mlp.hook_" in hook_name:
        return cfg.hidden_dim
    return cfg.dim


def load_served_sae(
    path: str | os.PathLike[str],
    loaded: LoadedModel,
    model: str,
    sae_id: str,
    identity: str = "",
) -> ServedSAE:
    """The SAE at `path` (a `twofiles sae train` directory or its sae.safetensors), checked
    against the served model `model` it will read: BadInputError when its hook point or width
    does not fit, or when `identity` (the model's weights hash, sae.activations.model_id, taken
    before inference preparation) differs from the one the SAE recorded, so a wrong --sae fails
    at start-up, not on a user's first prompt."""
    from twofiles.engine import model_device
    from twofiles.sae.model import load_sae

    p = Path(path)
    sae = load_sae(p)
    hook = sae.cfg.hook_name
    if not hook:
        raise BadInputError("the SAE names no hook point (hook_name is empty)", path=str(p))
    width = activation_width(loaded, hook)
    if width is None:
        raise BadInputError(
            f"the SAE reads {hook!r}, which model {model!r} has no per-token activation at "
            f"({loaded.model.config.n_layers} layers)",
            path=str(p),
        )
    if sae.cfg.d_in != width:
        raise BadInputError(
            f"the SAE reads {sae.cfg.d_in}-wide activations at {hook}, but model {model!r} has "
            f"{width} there: it was trained on another model",
            path=str(p),
        )
    if identity and sae.cfg.model_id and identity != sae.cfg.model_id:
        raise BadInputError(
            f"the SAE was trained on another model ({sae.cfg.model_name or 'unnamed'}, weights "
            f"{sae.cfg.model_id}); model {model!r} has weights {identity}",
            path=str(p),
        )
    sae = sae.to(model_device(loaded.model)).eval()
    name = (p if p.is_dir() else p.parent).name or str(p)
    return ServedSAE(id=sae_id, name=name, path=p, sae=sae, hook_name=hook)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt field is an error, not silently ignored


class _Prompt(_Strict):
    model: str = Field(min_length=1, max_length=500)
    # a lone surrogate ("\ud800") is refused by pydantic itself: not a unicode string
    prompt: str = Field(min_length=1, max_length=INSIDE_MAX_PROMPT_CHARS)


class RunRequest(_Prompt):
    top: int = Field(default=INSIDE_DEFAULT_TOP, ge=1, le=INSIDE_MAX_TOP)  # lens tokens per cell
    features: int = Field(default=INSIDE_DEFAULT_TOP, ge=1, le=INSIDE_MAX_TOP)  # per token, per SAE


class AttentionRequest(_Prompt):
    layer: int = Field(ge=0)
    head: int | None = Field(default=None, ge=0)  # None: every head of the layer


@dataclass
class InsideState:
    """What the routes share; lives at `app.state.inside`."""

    saes: dict[str, list[ServedSAE]]  # served model -> its SAEs
    lock: threading.Lock  # the server's scoring lock: one forward beside decoding at a time

    def for_model(self, app: FastAPI, model: str) -> list[ServedSAE]:
        # a persona served on a model's engine shares its weights, so its SAEs too
        return self.saes.get(model) or self.saes.get(engine_name(app, model), [])

    def by_id(self, sae_id: str) -> ServedSAE | None:
        return next((s for saes in self.saes.values() for s in saes if s.id == sae_id), None)


def _limit(app: FastAPI, loaded: LoadedModel) -> int:
    return min(app.state.settings.inside_max_tokens, loaded.model.config.max_seq_len)


def _prompt_ids(app: FastAPI, body: _Prompt) -> tuple[LoadedModel, list[int]]:
    from twofiles.engine import encode_prompt

    loaded = served_model(app, body.model)
    ids = encode_prompt(loaded.tokenizer, body.prompt)
    limit = _limit(app, loaded)
    if len(ids) > limit:
        raise ApiError(
            400,
            f"prompt: {len(ids)} tokens; the Inside page reads at most {limit} for model "
            f"{body.model!r} (shorten the prompt)",
            param="prompt",
            code="context_length_exceeded",
        )
    return loaded, ids


def _rounded(t: torch.Tensor) -> Any:
    return t.double().round(decimals=ROUND).tolist()  # in double: 0.2651, not 0.26510000228881836


def run_inside(
    loaded: LoadedModel, ids: Sequence[int], saes: Sequence[ServedSAE], top: int, features: int
) -> dict[str, Any]:
    """The /inside/run reply: tokens, the logit lens, and each SAE's strongest features per
    token (only those that fire: activation > 0)."""
    import torch

    from twofiles.inspect import run_with_cache
    from twofiles.inspect.lens import logit_lens

    cfg = loaded.model.config
    out: dict[str, Any] = {
        "ids": list(ids),
        "n_layers": cfg.n_layers,
        "n_heads": cfg.n_heads,
        "lens": logit_lens(loaded, ids, k=top).to_dict(loaded.tokenizer, ids),
        "saes": [],
    }
    out["tokens"] = out["lens"].pop("tokens")
    if not saes:
        return out
    _, cache = run_with_cache(loaded, ids, names=sorted({s.hook_name for s in saes}))
    for s in saes:
        act = cache[s.hook_name][0]
        act = act.reshape(act.shape[0], -1)  # [T, d_in]: per-head points flattened
        with torch.no_grad():
            f = s.sae.encode(act.float())  # [T, d_sae]
            vals, idx = f.topk(min(features, f.shape[-1]), dim=-1)
        try:
            pages = set(os.listdir(s.features_dir))
        except OSError:
            pages = set()
        out["saes"].append(
            {
                **s.json(),
                "features": [
                    [
                        {
                            "feature": i,
                            "act": round(v, ROUND),
                            "dashboard": f"/inside/sae/{s.id}/{i}.html"
                            if f"{i}.html" in pages
                            else None,
                        }
                        for i, v in zip(row_i, row_v, strict=True)
                        if v > 0
                    ]
                    for row_i, row_v in zip(idx.tolist(), vals.tolist(), strict=True)
                ],
            }
        )
    return out


def attention_patterns(
    loaded: LoadedModel, ids: Sequence[int], layer: int, head: int | None
) -> list[list[list[float]]]:
    """Layer `layer`'s attention patterns: per head, per query position t, the weights on keys
    0..t (the causal triangle; the rest is zero)."""
    from twofiles.inspect import run_with_cache

    name = f"blocks.{layer}.attn.hook_pattern"
    _, cache = run_with_cache(loaded, ids, names=[name])
    pattern = cache[name][0]  # [heads, T, T]
    if head is not None:
        pattern = pattern[head : head + 1]
    rows = _rounded(pattern)
    return [[row[: t + 1] for t, row in enumerate(h)] for h in rows]


def _router(state: InsideState, api: list[Any]) -> APIRouter:
    router = APIRouter()

    @router.get("/inside", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(PAGE, media_type="text/html", headers={"Cache-Control": "no-cache"})

    @router.get("/inside/models", dependencies=api)
    def models(request: Request) -> JSONResponse:
        app = request.app
        rows = []
        for name, loaded in app.state.models.items():
            cfg = loaded.model.config
            rows.append(
                {
                    "name": name,
                    "n_layers": cfg.n_layers,
                    "n_heads": cfg.n_heads,
                    "max_tokens": _limit(app, loaded),
                    "saes": [s.json() for s in state.for_model(app, name)],
                }
            )
        return JSONResponse(
            {
                "models": rows,
                "max_top": INSIDE_MAX_TOP,
                "max_attention_values": INSIDE_MAX_ATTENTION_VALUES,
            }
        )

    @router.post("/inside/run", dependencies=api)
    async def run(body: RunRequest, request: Request) -> JSONResponse:
        loaded, ids = _prompt_ids(request.app, body)
        saes = state.for_model(request.app, body.model)

        def work() -> dict[str, Any]:
            with state.lock:
                return run_inside(loaded, ids, saes, body.top, body.features)

        return JSONResponse({"model": body.model, **await asyncio.to_thread(work)})

    @router.post("/inside/attention", dependencies=api)
    async def attention(body: AttentionRequest, request: Request) -> JSONResponse:
        loaded, ids = _prompt_ids(request.app, body)
        cfg = loaded.model.config
        if body.layer >= cfg.n_layers:
            raise ApiError(
                400,
                f"layer: {body.layer} is past the last layer; model {body.model!r} has layers "
                f"0..{cfg.n_layers - 1}",
                param="layer",
            )
        if body.head is not None and body.head >= cfg.n_heads:
            raise ApiError(
                400,
                f"head: {body.head} is past the last head; model {body.model!r} has heads "
                f"0..{cfg.n_heads - 1}",
                param="head",
            )
        heads = 1 if body.head is not None else cfg.n_heads
        values = heads * len(ids) * (len(ids) + 1) // 2
        if values > INSIDE_MAX_ATTENTION_VALUES:
            raise ApiError(
                400,
                f"head: every head of a layer at {len(ids)} tokens is {values} numbers, past this "
                f"server's {INSIDE_MAX_ATTENTION_VALUES}; ask for one head",
                param="head",
            )

        def work() -> list[list[list[float]]]:
            with state.lock:
                return attention_patterns(loaded, ids, body.layer, body.head)

        patterns = await asyncio.to_thread(work)
        return JSONResponse(
            {
                "model": body.model,
                "layer": body.layer,
                "heads": list(range(cfg.n_heads)) if body.head is None else [body.head],
                "patterns": patterns,
            }
        )

    # open like the pages: a link opened in a new tab carries no API key, and these are static
    # files the operator chose to publish with --sae
    @router.get("/inside/sae/{sae_id}/{file}")
    def dashboard(sae_id: str, file: str) -> FileResponse:
        missing = ApiError(404, f"no dashboard {file!r} for SAE {sae_id!r}", code="not_found")
        served = state.by_id(sae_id)
        if served is None or not _DASHBOARD_FILE.fullmatch(file):
            raise missing
        root = served.features_dir.resolve()
        target = (root / file).resolve()
        # a link inside the directory pointing elsewhere is refused like a path that leaves it
        if target.parent != root or not target.is_file():
            raise missing
        media = "text/html" if file.endswith(".html") else "image/png"
        return FileResponse(
            target, media_type=media, headers={"Content-Security-Policy": DASHBOARD_CSP}
        )

    return router


def attach(app: FastAPI, saes: Mapping[str, Sequence[ServedSAE]] | None = None) -> InsideState:
    """Add the Inside page and its routes to `app` (expects `app.state.models`, `settings`,
    `score_lock` and `require_api_key`, as create_app sets them). `saes` maps a served model to
    the SAEs read with it (load_served_sae). Returns the state, also at `app.state.inside`."""
    by_model = {k: list(v) for k, v in (saes or {}).items()}
    for model in by_model:
        if model not in app.state.models:
            raise BadInputError(f"--sae for {model!r}: no such served model")
    state = InsideState(saes=by_model, lock=app.state.score_lock)
    app.state.inside = state
    key_check = getattr(app.state, "require_api_key", None)
    app.include_router(_router(state, [Depends(key_check)] if key_check else []))
    return state


__all__ = [
    "INSIDE_MAX_ATTENTION_VALUES",
    "INSIDE_MAX_PROMPT_CHARS",
    "INSIDE_MAX_TOP",
    "AttentionRequest",
    "InsideState",
    "RunRequest",
    "ServedSAE",
    "activation_width",
    "attach",
    "attention_patterns",
    "load_served_sae",
    "run_inside",
]
