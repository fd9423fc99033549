"""A sparse autoencoder over one hook point's activations, and its file.

What it owns: the SAE's math (encode: ReLU with an L1 penalty, or TopK (Gao et al. 2024);
decode: W_dec with unit-norm rows plus b_dec), and `sae.safetensors`: the weights plus, in the
metadata, the config and what it was trained on (the model's identity, the hook name), so that
dashboards, steering and the web UI can refuse a file made for another model. What it leaves to
others: training (sae/train.py), dashboards (sae/features.py), activations (inspect.hooks).

Parameter names follow SAELens (W_enc [d_in, d_sae], b_enc, W_dec [d_sae, d_in], b_dec).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from twofiles.errors import BadInputError

FORMAT = "twofiles-sae"


@dataclass
class SAEConfig:
    d_in: int  # the activation's width (the model's dim for the residual stream)
    d_sae: int  # features (d_in x expansion)
    kind: str = "topk"  # "topk" (k features fire per token) or "relu" (ReLU + L1 penalty)
    k: int = 32  # TopK: features kept per token
    l1_coefficient: float = 5.0  # ReLU: weight of the L1 sparsity penalty
    hook_name: str = ""  # where the activations come from, e.g. "blocks.3.hook_resid_post"
    model_id: str = ""  # the model's identity (weights hash) the SAE was trained on
    model_name: str = ""  # the spec it was trained from, for people (e.g. "smollm2")
    extra: dict[str, Any] = field(default_factory=dict)  # training facts: tokens, metrics, ...

    def __post_init__(self) -> None:
        if self.kind not in ("topk", "relu"):
            raise BadInputError(f"SAE kind {self.kind!r}: expected topk or relu")
        if (
            self.d_in <= 0
            or self.d_sae <= 0
            or (self.kind == "topk" and not 0 < self.k <= self.d_sae)
        ):
            raise BadInputError(f"bad SAE shape: d_in {self.d_in}, d_sae {self.d_sae}, k {self.k}")


class SparseAutoencoder(nn.Module):
    def __init__(self, cfg: SAEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.W_enc = nn.Parameter(torch.empty(cfg.d_in, cfg.d_sae))
        self.b_enc = nn.Parameter(torch.zeros(cfg.d_sae))
        self.W_dec = nn.Parameter(torch.empty(cfg.d_sae, cfg.d_in))
        self.b_dec = nn.Parameter(torch.zeros(cfg.d_in))
        self.init_weights()

    @torch.no_grad()
    def init_weights(self, seed: int = 0) -> None:
        """Decoder rows random unit vectors, encoder their transpose (Gao et al. 2024's init)."""
        g = torch.Generator().manual_seed(seed)
        w = torch.randn(self.cfg.d_sae, self.cfg.d_in, generator=g)
        self.W_dec.copy_(w / w.norm(dim=1, keepdim=True))
        self.W_enc.copy_(self.W_dec.T)
        self.b_enc.zero_()
        self.b_dec.zero_()

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Feature activations [..., d_sae] (non-negative; TopK: at most k non-zero per row)."""
        pre = (x - self.b_dec) @ self.W_enc + self.b_enc
        if self.cfg.kind == "relu":
            return torch.relu(pre)
        top = pre.topk(self.cfg.k, dim=-1)
        return torch.zeros_like(pre).scatter(-1, top.indices, torch.relu(top.values))

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        return f @ self.W_dec + self.b_dec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The reconstruction of x."""
        return self.decode(self.encode(x))

    def direction(self, feature: int) -> torch.Tensor:
        """Feature `feature`'s decoder direction [d_in] (what steering adds)."""
        if not 0 <= feature < self.cfg.d_sae:
            raise BadInputError(f"feature {feature}: this SAE has features 0..{self.cfg.d_sae - 1}")
        return self.W_dec[feature]


def save_sae(path: str | os.PathLike[str], sae: SparseAutoencoder) -> Path:
    """Write the SAE to `path` (a .safetensors file), atomically."""
    from safetensors.torch import save

    from twofiles.paths import atomic_write_bytes

    tensors = {k: v.detach().cpu().contiguous() for k, v in sae.state_dict().items()}
    meta = {"format": FORMAT, "config": json.dumps(asdict(sae.cfg))}
    atomic_write_bytes(Path(path), save(tensors, metadata=meta))
    return Path(path)


def load_sae(path: str | os.PathLike[str]) -> SparseAutoencoder:
    """Read an SAE file (or a directory holding sae.safetensors); a clear error for anything else."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from twofiles.paths import read_metadata

    p = Path(path)
    if p.is_dir():
        p = p / "sae.safetensors"
    if not p.is_file():
        raise BadInputError(f"{p}: no such SAE file")
    try:
        meta = read_metadata(p)
        if meta.get("format") != FORMAT:
            raise BadInputError(f"{p}: not an SAE file (format {meta.get('format')!r})")
        cfg = SAEConfig(**json.loads(meta["config"]))
        tensors = load_file(str(p))
    except (SafetensorError, ValueError, KeyError, TypeError) as e:
        raise BadInputError(f"{p}: unreadable SAE file: {e}") from e
    sae = SparseAutoencoder(cfg)
    try:
        sae.load_state_dict(tensors)
    except RuntimeError as e:
        raise BadInputError(f"{p}: tensors do not match the SAE's config: {e}") from e
    return sae
