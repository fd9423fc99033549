"""LoRA: low-rank adapters on a model's Linear layers, applied from outside the model.

LoRA (Hu et al. 2021, arXiv:2106.09685) freezes a pretrained weight W and learns a low-rank
update: y = x W^T + (alpha / r) * x A^T B^T, with A [r, in] random and B [out, r] zero at the
start, so a freshly adapted model computes exactly what the base model did.

What it owns: wrapping the chosen Linear layers of a Transformer (`apply_lora`), merging the
adapters into the weights (`merge_lora`), and the adapters file: a safetensors file holding only
A and B, with metadata naming the base model, rank, alpha, target layers and the chat template
trained with (`save_adapters`, `load_adapters`, `adapters_base`, `adapt`). It is a model
transform like quantization, so it sits beside the parameters file, below everything that loads
or trains a model. What it leaves to others: the model's math (model.py knows nothing of LoRA),
finding and loading the base model an adapters file names (formats/resolve.py, which loads an
adapters file as a model: the base, adapted and merged), training (train/sft.py).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from twofiles.errors import BadInputError
from twofiles.paths import atomic_write_bytes, read_metadata

if TYPE_CHECKING:
    from twofiles.artifact import LoadedModel

FORMAT = "twofiles-lora"
VERSION = "1"

# Every matmul of a Llama block (the QLoRA paper's finding: adapting all of them matters more than
# the rank). Embeddings and lm_head stay frozen.
ALL_TARGETS: tuple[str, ...] = (
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
)


@dataclass
class LoRAConfig:
    rank: int = 8  # r: the rank of each update
    alpha: float = 16.0  # the update is scaled by alpha / rank
    targets: list[str] = field(default_factory=lambda: list(ALL_TARGETS))  # Linear names to adapt
    dropout: float = 0.0  # dropout on the adapter's input (training only)

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


class LoRALinear(nn.Module):
    """A frozen Linear plus a trainable low-rank update."""

    def __init__(
        self,
        base: nn.Linear,
        rank: int,
        alpha: float,
        dropout: float = 0.0,
        *,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, not {rank}")
        self.base = base
        self.rank, self.alpha, self.scale = rank, alpha, alpha / rank
        self.enabled = True  # False: the layer is its frozen base (adapters_disabled)
        w = base.weight
        self.lora_A = nn.Parameter(
            torch.empty(rank, base.in_features, dtype=w.dtype, device=w.device)
        )
        self.lora_B = nn.Parameter(
            torch.zeros(base.out_features, rank, dtype=w.dtype, device=w.device)
        )
        # kaiming-uniform A as in the reference implementation (loralib / PEFT); B = 0 makes the
        # update exactly zero at the start
        bound = 1.0 / math.sqrt(base.in_features)
        with torch.no_grad():
            a = (
                torch.rand(self.lora_A.shape, generator=generator, dtype=torch.float32) * 2 * bound
                - bound
            )
            self.lora_A.copy_(a.to(w.dtype))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return self.base(x)
        return self.base(x) + (self.dropout(x) @ self.lora_A.T @ self.lora_B.T) * self.scale

    def delta(self) -> torch.Tensor:
        """The update to the weight, B A * scale [out, in]."""
        return (self.lora_B.float() @ self.lora_A.float()) * self.scale

    def merged(self) -> nn.Linear:
        """The base Linear with the update added to its weight (a new module; self is unchanged)."""
        lin = nn.Linear(
            self.base.in_features,
            self.base.out_features,
            bias=self.base.bias is not None,
            device=self.base.weight.device,
            dtype=self.base.weight.dtype,
        )
        with torch.no_grad():
            lin.weight.copy_((self.base.weight.float() + self.delta()).to(lin.weight.dtype))
            if self.base.bias is not None:
                lin.bias.copy_(self.base.bias)
        lin.weight.requires_grad_(self.base.weight.requires_grad)
        return lin


def _targets(model: nn.Module, names: list[str]) -> list[tuple[str, nn.Module, str, nn.Linear]]:
    """(full name, parent module, attribute, Linear) for every Linear whose own name is in `names`."""
    out = []
    for full, module in model.named_modules():
        for attr, child in module.named_children():
            if attr in names and isinstance(child, nn.Linear):
                out.append((f"{full}.{attr}" if full else attr, module, attr, child))
    return out


def apply_lora(model: nn.Module, cfg: LoRAConfig, *, seed: int = 0) -> list[str]:
    """Freeze every parameter of `model` and wrap the target Linears in LoRALinear, in place.
    Returns the wrapped layers' names. Adapters are the only trainable parameters afterwards."""
    unknown = set(cfg.targets) - set(ALL_TARGETS)
    if unknown:
        raise BadInputError(
            f"unknown LoRA targets {sorted(unknown)}; choose from {', '.join(ALL_TARGETS)}"
        )
    for p in model.parameters():
        p.requires_grad_(False)
    g = torch.Generator().manual_seed(seed)
    found = _targets(model, cfg.targets)
    if not found:
        raise BadInputError(f"no Linear layer named {cfg.targets} in the model")
    for _, parent, attr, lin in found:
        setattr(parent, attr, LoRALinear(lin, cfg.rank, cfg.alpha, cfg.dropout, generator=g))
    return [name for name, *_ in found]


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


@contextlib.contextmanager
def adapters_disabled(model: nn.Module) -> Iterator[None]:
    """The model without its adapters for the duration: the frozen base, with no second copy of
    the weights (the reference model of DPO and of RL's KL term)."""
    layers = list(lora_layers(model).values())
    if not layers:
        raise ValueError("the model has no LoRA adapters to switch off")
    for layer in layers:
        layer.enabled = False
    try:
        yield
    finally:
        for layer in layers:
            layer.enabled = True


def merge_lora(model: nn.Module) -> int:
    """Replace every LoRALinear by its merged Linear, in place; returns how many were merged.
    The merged model has the plain architecture again (the same state_dict keys as the base)."""
    n = 0
    for name, layer in list(lora_layers(model).items()):
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attr, layer.merged())
        n += 1
    return n


def adapter_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """{layer name + '.lora_A' / '.lora_B': tensor} of every adapter, on the CPU."""
    out = {}
    for name, layer in lora_layers(model).items():
        out[f"{name}.lora_A"] = layer.lora_A.detach().to("cpu").contiguous()
        out[f"{name}.lora_B"] = layer.lora_B.detach().to("cpu").contiguous()
    return out


def save_adapters(
    path: str | os.PathLike[str],
    model: nn.Module,
    cfg: LoRAConfig,
    *,
    base: str,
    chat_template: str = "",
    provenance: dict[str, Any] | None = None,
) -> Path:
    """Write the adapters (A and B only) and what is needed to apply them, atomically. `base` is
    the model spec the adapters were trained on (a path or an alias)."""
    from safetensors.torch import save

    tensors = adapter_tensors(model)
    if not tensors:
        raise ValueError("the model has no LoRA adapters")
    config = getattr(model, "config", None)
    prov = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "producer": "twofiles",
        **(provenance or {}),
    }
    metadata = {
        "format": FORMAT,
        "version": VERSION,
        "lora": json.dumps(asdict(cfg)),
        "base": base,
        "base_config": json.dumps(config.to_dict()) if config is not None else "",
        "chat_template": chat_template,
        "provenance": json.dumps(prov, default=str),
    }
    path = Path(path)
    atomic_write_bytes(path, save(tensors, metadata=metadata))
    return path


def is_adapters_file(path: str | os.PathLike[str]) -> bool:
    try:
        return (
            os.path.isfile(path)
            and str(path).endswith(".safetensors")
            and read_metadata(path).get("format") == FORMAT
        )
    except BadInputError:
        return False


def load_adapters(
    model: nn.Module, path: str | os.PathLike[str]
) -> tuple[LoRAConfig, dict[str, str]]:
    """Wrap `model` as the adapters file says and load A and B into it, in place. Returns the
    LoRA config and the file's metadata."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = str(path)
    meta = read_metadata(path)
    if meta.get("format") != FORMAT:
        raise BadInputError("not a twofiles LoRA adapters file", path=path)
    try:
        cfg = LoRAConfig(**json.loads(meta["lora"]))
    except (KeyError, TypeError, json.JSONDecodeError) as e:
        raise BadInputError(f"metadata field 'lora' is invalid: {e}", path=path) from None
    try:
        tensors = load_file(path, device="cpu")
    except (SafetensorError, OSError) as e:
        raise BadInputError(f"cannot read tensors: {e}", path=path) from None
    apply_lora(model, cfg)
    layers = lora_layers(model)
    expected = {f"{n}.{ab}" for n in layers for ab in ("lora_A", "lora_B")}
    if set(tensors) != expected:
        missing, unexpected = (
            sorted(expected - set(tensors))[:3],
            sorted(set(tensors) - expected)[:3],
        )
        raise BadInputError(
            f"adapters do not match the base model: missing {missing}, unexpected {unexpected}",
            path=path,
        )
    with torch.no_grad():
        for name, layer in layers.items():
            for ab in ("lora_A", "lora_B"):
                t, p = tensors[f"{name}.{ab}"], getattr(layer, ab)
                if t.shape != p.shape:
                    raise BadInputError(
                        f"{name}.{ab} has shape {tuple(t.shape)}, the base model needs {tuple(p.shape)}",
                        path=path,
                    )
                p.copy_(t.to(p.dtype))
    return cfg, meta


def adapters_base(path: str | os.PathLike[str]) -> str:
    """The model spec an adapters file was trained on: a path (relative ones are looked up next to
    the adapters file too) or an alias."""
    path = str(path)
    base = read_metadata(path).get("base", "")
    if not base:
        raise BadInputError("adapters file names no base model", path=path)
    if not os.path.exists(base) and not os.path.isabs(base):
        sibling = os.path.join(os.path.dirname(os.path.abspath(path)), base)
        base = sibling if os.path.exists(sibling) else base
    return base


def adapt(
    loaded: LoadedModel,
    path: str | os.PathLike[str],
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    merge: bool = True,
) -> LoadedModel:
    """`loaded` (the base model the adapters file names) with the adapters applied, in place:
    merged into the weights unless `merge` is False, moved to `device`, with the chat template
    the adapters were trained with."""
    path = str(path)
    meta = read_metadata(path)
    load_adapters(loaded.model, path)
    if merge:
        merge_lora(loaded.model)
    loaded.model.to(device=device, dtype=dtype) if dtype is not None else loaded.model.to(
        device=device
    )
    loaded.model.eval()
    if meta.get("chat_template"):
        loaded.chat_template = meta["chat_template"]
    try:
        prov = json.loads(meta.get("provenance", "{}"))
    except json.JSONDecodeError:
        prov = {}
    loaded.provenance = {**prov, "base_provenance": loaded.provenance, "adapters": path}
    loaded.path = path
    return loaded


def trainable_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


__all__ = [
    "ALL_TARGETS",
    "LoRAConfig",
    "LoRALinear",
    "adapt",
    "adapter_tensors",
    "adapters_base",
    "adapters_disabled",
    "apply_lora",
    "is_adapters_file",
    "load_adapters",
    "lora_layers",
    "merge_lora",
    "save_adapters",
    "trainable_parameters",
]
