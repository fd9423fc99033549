"""The parameters file: one self-contained `model.safetensors`.

What it owns: writing and reading the file. The weights are plain safetensors tensors named as in
Hugging Face Llama; the safetensors metadata (string -> string) carries everything else:

    format        "twofiles"
    version       "1"
    config        JSON of ModelConfig
    tokenizer     the tokenizer's JSON (Hugging Face `tokenizers` format)
    special       JSON {"bos_id", "eos_ids", "add_bos"}: imported models name theirs differently;
                  add_bos (whether a prompt starts with the bos) is absent from files written
                  before it existed, which keep their old rule: add the bos
    chat_template Jinja chat template ("" when the model has none)
    provenance    JSON: what produced it, from what, when, with which settings

A LoadedModel may carry a `Persona`: the defaults of a registered name (system message, sampling
settings, few-shot turns, template), which formats/persona.py reads and the chat verbs apply.

Tied embeddings are stored once (embed_tokens); lm_head is re-tied at load. A file of another
kind built on a Transformer (a reward model: "twofiles-reward", scoring.py) has the same layout
with its own format and its extra tensors beside the weights (`extra`); a model load refuses it
by name. Writes are atomic (temp file + rename). Loading never unpickles anything. What it leaves
to others: GGUF / HF directories (formats), device choice (runtime), atomic writes and the
safetensors header (paths.py; `atomic_write_bytes` and `read_metadata` are importable from here
too).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from twofiles.errors import BadInputError
from twofiles.paths import atomic_write_bytes, read_metadata

if TYPE_CHECKING:
    import torch

    from twofiles.model import Transformer
    from twofiles.tokenizer import Tokenizer

FORMAT = "twofiles"
VERSION = "1"
# Files of other kinds with this layout, and what to say when one is loaded as a model.
OTHER_KINDS = {
    "twofiles-reward": "a reward model: it scores replies and writes none (use it as reward:PATH "
    "with `chat --scorer`, `arena battle --judge` or `pairs --judge`)",
}


@dataclass(frozen=True)
class Persona:
    """A registered name's defaults (formats/persona.py reads them from a Modelfile): what the
    verbs that render chats apply, each overridden by what the user gives explicitly."""

    name: str  # the registered name, with its tag ("mario:latest")
    system: str | None = None  # the default system message
    sampling: dict[str, Any] = field(default_factory=dict)  # SamplingParams field -> default
    messages: tuple[tuple[str, str], ...] = ()  # few-shot (role, content) turns, put first
    template: str | None = None  # the Jinja chat template used instead of the model's
    num_ctx: int | None = None  # the context (prompt + reply) in tokens, if capped
    tools: tuple[str, ...] | None = None  # the tools it may run under `--guard tools`; None: any

    def prefix(self, has_system: bool) -> list[dict[str, str]]:
        """The messages a conversation starts with: the system message unless the conversation
        has its own (`has_system`), then the few-shot turns."""
        out = (
            []
            if has_system or self.system is None
            else [{"role": "system", "content": self.system}]
        )
        return out + [{"role": r, "content": c} for r, c in self.messages]


@dataclass
class LoadedModel:
    model: Transformer
    tokenizer: Tokenizer
    chat_template: str = ""
    provenance: dict[str, Any] = field(default_factory=dict)
    path: str = ""
    extra: dict[str, torch.Tensor] = field(default_factory=dict)  # tensors beside the weights
    persona: Persona | None = None  # a registered name's defaults (formats/persona.py)


def save_model(
    path: str | os.PathLike[str],
    model: Transformer,
    tokenizer: Tokenizer,
    *,
    provenance: dict[str, Any] | None = None,
    chat_template: str = "",
    format: str = FORMAT,
    extra: dict[str, torch.Tensor] | None = None,
    metadata: dict[str, str] | None = None,
) -> Path:
    """Write model + tokenizer + config + provenance to one safetensors file, atomically.
    Another kind of file (`format`) adds its `extra` tensors and `metadata` fields."""
    from safetensors.torch import save

    sd = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    if model.config.tie_embeddings:
        sd.pop("lm_head.weight", None)
    for k, v in (extra or {}).items():
        if k in sd:
            raise ValueError(f"extra tensor {k} clashes with a weight of the model")
        sd[k] = v.detach().to("cpu").contiguous()
    prov = {"created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "producer": "twofiles"}
    prov.update(provenance or {})
    meta = {
        **(metadata or {}),
        "format": format,
        "version": VERSION,
        "config": json.dumps(model.config.to_dict()),
        "tokenizer": tokenizer.to_json(),
        "chat_template": chat_template,
        "special": json.dumps(
            {
                "bos_id": tokenizer.bos_id,
                "eos_ids": list(tokenizer.eos_ids),
                "add_bos": tokenizer.add_bos,
            }
        ),
        "provenance": json.dumps(prov, default=str),
    }
    path = Path(path)
    atomic_write_bytes(path, save(sd, metadata=meta))
    return path


def _check_config_against_tensors(cfg: Any, sd: dict[str, torch.Tensor], path: str) -> None:
    """The config's sizes are integers and match the file's own tensors, checked before the model
    is built: a config that claims a vocabulary of 2**40 must not allocate it first."""
    for name in ("vocab_size", "dim", "n_layers", "n_heads", "n_kv_heads", "hidden_dim"):
        value = getattr(cfg, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise BadInputError(
                f"metadata field 'config': {name} must be a positive integer, not {value!r:.40}",
                path=path,
            )
    if not isinstance(cfg.max_seq_len, int) or not 1 <= cfg.max_seq_len <= 2**24:
        raise BadInputError(
            f"metadata field 'config': max_seq_len {cfg.max_seq_len!r:.40} is out of range",
            path=path,
        )
    for name in ("rope_theta", "norm_eps"):
        value = getattr(cfg, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise BadInputError(
                f"metadata field 'config': {name} must be a positive number, not {value!r:.40}",
                path=path,
            )
    for name in ("tie_embeddings", "qkv_bias"):
        if not isinstance(getattr(cfg, name), bool):
            raise BadInputError(f"metadata field 'config': {name} must be true or false", path=path)
    embed = sd.get("model.embed_tokens.weight")
    gate = sd.get("model.layers.0.mlp.gate_proj.weight")
    layers = {k.split(".")[2] for k in sd if k.startswith("model.layers.")}
    if (
        embed is None
        or tuple(embed.shape) != (cfg.vocab_size, cfg.dim)
        or gate is None
        or tuple(gate.shape) != (cfg.hidden_dim, cfg.dim)
        or len(layers) != cfg.n_layers
    ):
        raise BadInputError(
            f"tensors do not match the config (vocab_size {cfg.vocab_size}, dim {cfg.dim}, "
            f"hidden_dim {cfg.hidden_dim}, n_layers {cfg.n_layers})",
            path=path,
        )


def load_model(
    path: str | os.PathLike[str],
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    format: str = FORMAT,
    extra: tuple[str, ...] = (),
) -> LoadedModel:
    """Load a twofiles model.safetensors onto `device` (weights kept in their stored dtype unless
    `dtype` is given). Another kind of file with this layout loads with its `format`; its `extra`
    tensors (required) come back in LoadedModel.extra, on the CPU."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from twofiles.model import ModelConfig, Transformer
    from twofiles.tokenizer import Tokenizer

    path = str(path)
    meta = read_metadata(path)
    if meta.get("format") != format:
        found = meta.get("format", "")
        if format == FORMAT and found in OTHER_KINDS:
            raise BadInputError(f"not a model file but {OTHER_KINDS[found]}", path=path)
        what = "a twofiles model" if format == FORMAT else f"a {format}"
        raise BadInputError(
            f"not {what} file (metadata 'format' is {found or 'missing'}, not {format!r})",
            path=path,
        )
    for key in ("config", "tokenizer"):
        if key not in meta:
            raise BadInputError(f"metadata field '{key}' is missing", path=path)
    try:
        cfg = ModelConfig.from_dict(json.loads(meta["config"]))
    except (ValueError, TypeError, ArithmeticError) as e:
        raise BadInputError(f"metadata field 'config' is invalid: {e}", path=path) from None
    try:
        special = json.loads(meta.get("special", "{}"))
        add_bos = special.get("add_bos", True)
        if not isinstance(add_bos, bool):
            raise TypeError(f"add_bos = {add_bos!r} is not true or false")
        tokenizer = Tokenizer.from_json(
            meta["tokenizer"],
            bos_id=special.get("bos_id"),
            eos_ids=special.get("eos_ids"),
            add_bos=add_bos,
        )
    except (json.JSONDecodeError, AttributeError, TypeError) as e:
        raise BadInputError(f"metadata field 'special' is invalid: {e}", path=path) from None
    except BadInputError as e:
        raise BadInputError(f"metadata field 'tokenizer': {e}", path=path) from None
    try:
        sd = load_file(path, device="cpu")
    except (SafetensorError, OSError) as e:
        raise BadInputError(f"cannot read tensors: {e}", path=path) from None
    missing_extra = [k for k in extra if k not in sd]
    if missing_extra:
        raise BadInputError(f"tensor {missing_extra[0]} is missing", path=path)
    extras = {k: sd.pop(k) for k in extra}
    _check_config_against_tensors(cfg, sd, path)
    # Built on CPU, not the meta device: entering torch's meta-device mode imports ~1 s of torch
    # internals, more than default-initialising a small model costs.
    model = Transformer(cfg)
    if cfg.tie_embeddings:
        sd["lm_head.weight"] = sd["model.embed_tokens.weight"]
    expected = set(model.state_dict())
    missing, unexpected = expected - set(sd), set(sd) - expected
    if missing or unexpected:
        raise BadInputError(
            f"tensors do not match the config: missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}",
            path=path,
        )
    for k, v in model.state_dict().items():
        if tuple(sd[k].shape) != tuple(v.shape):
            raise BadInputError(
                f"tensor {k} has shape {tuple(sd[k].shape)}, config expects {tuple(v.shape)}",
                path=path,
            )
    model.load_state_dict(sd, strict=True)
    if cfg.tie_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    model.to(device=device, dtype=dtype) if dtype is not None else model.to(device=device)
    model.eval()
    try:
        provenance = json.loads(meta.get("provenance", "{}"))
    except json.JSONDecodeError:
        provenance = {}
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        chat_template=meta.get("chat_template", ""),
        provenance=provenance,
        path=path,
        extra=extras,
    )


def weights_sha256(model: Transformer) -> str:
    """The model by content: the sha256 (hex) of its weights, each tensor's name, shape, dtype
    and bytes in name order. Two loads of one file on any device agree; finetuning, quantizing or
    another dtype changes it, and so does inference preparation (fused projections and packed
    weights change names and bytes): take it on the model as resolve_model returns it. Reads every
    weight once (about a second for smollm2)."""
    import hashlib

    import torch

    h = hashlib.sha256()
    with torch.no_grad():
        for name, t in sorted(model.state_dict().items()):
            t = t.detach().to("cpu").contiguous()
            h.update(f"{name}:{tuple(t.shape)}:{t.dtype}\n".encode())
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()
