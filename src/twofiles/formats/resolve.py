"""The resolution of a model argument: what a user types for MODEL becomes a LoadedModel.

    path/to/model.safetensors   a twofiles parameters file (artifact.py)
    path/to/dir/                a directory holding one (twofiles export run OUT/ writes these),
                                or a Hugging Face Llama-family directory (config.json, hf.py)
    path/to/file.gguf           a llama.cpp GGUF file (gguf.py)
    path/to/adapters.safetensors  LoRA adapters (lora.py): the base model they name, adapted
    smollm2                     a built-in alias (formats.ALIASES), fetched once by
                                `twofiles pull smollm2` into the cache (paths.cache_dir)
    mario, mario:v2             a registered persona (`twofiles create`, formats/persona.py): its
                                FROM model, its adapters applied, its template and context cap,
                                and its defaults in LoadedModel.persona

An existing path wins over an alias or a registered name spelt the same.

`resolve_model` is the one place a model spec becomes a loaded model: every verb, the server,
evaluation and training load through it. What it leaves to others: the file formats themselves
(artifact.py, hf.py, gguf.py, lora.py), what happens to the model next (quant.prepare_for_inference,
the engine).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from twofiles.errors import TwofilesError
from twofiles.formats import ALIASES, alias_path

if TYPE_CHECKING:
    import torch

    from twofiles.artifact import LoadedModel


def _is_gguf(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"GGUF"
    except OSError:
        return False


def resolve_model(
    spec: str,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    cap_context: bool = True,
) -> LoadedModel:
    """The model a MODEL argument names, loaded on `device` (see the module docstring).
    `cap_context=False` leaves a persona's num_ctx out of the config: the training verbs load a
    persona as a base to train and save, and num_ctx is a limit on chats, not on the model."""
    from twofiles.artifact import load_model
    from twofiles.lora import adapt, adapters_base, is_adapters_file

    spec = str(spec)
    if not os.path.exists(spec) and spec not in ALIASES:
        from twofiles.formats import persona

        record = persona.find(spec) if persona.is_name(spec) else None
        if record is not None:
            return load_persona(record, device=device, dtype=dtype, cap_context=cap_context)
    if not os.path.exists(spec) and spec in ALIASES:
        path = alias_path(spec)
        if not path.is_file():
            raise TwofilesError(
                f"{spec}: not downloaded yet: run `twofiles pull {spec}` (looked in {path})"
            )
        spec = str(path)
    if not os.path.exists(spec):
        known = ", ".join(sorted(ALIASES))
        raise TwofilesError(
            f"{spec}: no such model (expected a model.safetensors, a .gguf file, a Hugging Face directory, a registered name (twofiles list), or an alias: {known})"
        )
    if os.path.isdir(spec):
        if os.path.isfile(os.path.join(spec, "config.json")):
            from twofiles.formats.hf import load_hf_dir

            return load_hf_dir(spec, device=device, dtype=dtype)
        candidate = os.path.join(spec, "model.safetensors")
        if not os.path.isfile(candidate):
            raise TwofilesError(
                f"{spec}: a directory with neither model.safetensors nor config.json (a Hugging Face model)"
            )
        return load_model(candidate, device=device, dtype=dtype)
    if spec.endswith(".gguf") or _is_gguf(spec):
        from twofiles.formats.gguf import load_gguf

        return load_gguf(spec, device=device, dtype=dtype)
    if is_adapters_file(spec):  # LoRA adapters: their base model (on the CPU), adapted and merged
        base = resolve_model(adapters_base(spec), device="cpu")
        return adapt(base, spec, device=device, dtype=dtype)
    return load_model(spec, device=device, dtype=dtype)


def load_persona(
    record: dict[str, Any],
    *,
    device: str | torch.device,
    dtype: torch.dtype | None,
    cap_context: bool = True,
) -> LoadedModel:
    """A registered persona: FROM, its adapters merged in order, its template and (unless
    `cap_context` is False) its context cap."""
    from twofiles.lora import adapt

    adapters = record.get("adapters", [])
    loaded = resolve_model(record["from"], device="cpu" if adapters else device, dtype=dtype)
    for i, path in enumerate(adapters):
        last = i == len(adapters) - 1
        loaded = adapt(loaded, path, device=device if last else "cpu", dtype=dtype)
    config = getattr(loaded.model, "config", None)
    num_ctx = record.get("parameters", {}).get("num_ctx")
    if cap_context and num_ctx is not None and config is not None:
        # the engine bounds prompt + reply by max_seq_len (the model is this caller's own copy)
        config.max_seq_len = min(config.max_seq_len, num_ctx)
    return persona_view(loaded, record)


def persona_view(base: LoadedModel, record: dict[str, Any]) -> LoadedModel:
    """A persona (without adapters) over an already loaded base: the same weights and tokenizer,
    its own template and defaults. The server serves such views on the base model's engine; it
    bounds the context per request (`Persona.num_ctx`), as the weights here are shared."""
    from dataclasses import replace

    from twofiles.formats.persona import persona_of

    persona = persona_of(record)
    return replace(
        base,
        chat_template=base.chat_template if persona.template is None else persona.template,
        provenance={**base.provenance, "persona": persona.name},
        persona=persona,
    )


def served_key(spec: str, record: dict[str, Any] | None = None) -> str:
    """What a model spec loads, as one string: two specs with the same key load the same model
    (a path by its real path, an alias by its file, a persona by its FROM when it has no
    adapters; a persona with adapters is its own). `record`: the persona `spec` names, when the
    caller has already read it."""
    from twofiles.formats import persona

    if record is None and not os.path.exists(spec) and spec not in ALIASES:
        record = persona.find(spec)
    if record is not None:
        if record.get("adapters"):
            return "persona:" + record["name"]
        spec = record["from"]
    if not os.path.exists(spec) and spec in ALIASES:
        spec = str(alias_path(spec))
    path = os.path.realpath(spec)
    inside = os.path.join(path, "model.safetensors")
    if os.path.isdir(path) and not os.path.isfile(os.path.join(path, "config.json")):
        path = os.path.realpath(inside) if os.path.isfile(inside) else path
    return path


__all__ = ["load_persona", "persona_view", "resolve_model", "served_key"]
