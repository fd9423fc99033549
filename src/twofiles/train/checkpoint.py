"""Training checkpoints: one safetensors file per checkpoint, written atomically, never pickled.

A checkpoint holds the model weights (`model.*`), every optimizer's tensors
(`optim.<i>.<param index>.<name>`), the RNG states (`rng.*`), and in its metadata the JSON of
everything else: step, optimizer param groups and scalar state, the data loader's position, the
schedule, elapsed time. A file with a final name is always complete (temp file + rename), so a run
killed at any moment resumes from its newest checkpoint.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from twofiles.artifact import atomic_write_bytes, read_metadata
from twofiles.errors import BadInputError

NAME = re.compile(r"^step_(\d{7})\.safetensors$")


def _flatten_optimizer(
    i: int, opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor]
) -> dict[str, Any]:
    sd = opt.state_dict()
    scalars: dict[str, dict[str, Any]] = {}
    for pid, state in sd["state"].items():
        for name, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{i}.{pid}.{name}"] = value.detach().to("cpu").contiguous()
            else:
                scalars.setdefault(str(pid), {})[name] = value
    return {"param_groups": sd["param_groups"], "scalars": scalars}


def _unflatten_optimizer(
    i: int, meta: dict[str, Any], tensors: dict[str, torch.Tensor]
) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    prefix = f"optim.{i}."
    for key, value in tensors.items():
        if key.startswith(prefix):
            pid, name = key[len(prefix) :].split(".", 1)
            state.setdefault(int(pid), {})[name] = value
    for pid, scalars in meta["scalars"].items():
        state.setdefault(int(pid), {}).update(scalars)
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(
    ckpt_dir: str | Path,
    step: int,
    model: torch.nn.Module,
    optimizers: list[torch.optim.Optimizer],
    state: dict[str, Any],
    *,
    keep: int = 2,
) -> Path:
    """Write checkpoints/step_XXXXXXX.safetensors atomically; keep the newest `keep`."""
    ckpt_dir = Path(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for k, v in model.state_dict().items():
        if id(v) in seen:  # tied weights: store once (safetensors refuses shared storage)
            continue
        seen.add(id(v))
        tensors[f"model.{k}"] = v.detach().to("cpu").contiguous().clone()
    optim_meta = [_flatten_optimizer(i, opt, tensors) for i, opt in enumerate(optimizers)]
    tensors["rng.cpu"] = torch.get_rng_state()
    if torch.cuda.is_available():
        for d, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{d}"] = s
    metadata = {
        "format": "twofiles-checkpoint",
        "state": json.dumps({**state, "step": step}),
        "optim": json.dumps(optim_meta),
    }
    path = ckpt_dir / f"step_{step:07d}.safetensors"
    atomic_write_bytes(path, save(tensors, metadata=metadata))
    for old in list_checkpoints(ckpt_dir)[:-keep]:
        old.unlink(missing_ok=True)
    return path


def list_checkpoints(ckpt_dir: str | Path) -> list[Path]:
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return []
    return sorted(p for p in ckpt_dir.iterdir() if NAME.match(p.name))


def load_checkpoint(
    path: str | Path, model: torch.nn.Module, optimizers: list[torch.optim.Optimizer]
) -> dict[str, Any]:
    """Restore model, optimizers and RNG in place; return the saved training state."""
    path = Path(path)
    meta = read_metadata(path)
    if meta.get("format") != "twofiles-checkpoint":
        raise BadInputError("not a twofiles training checkpoint", path=str(path))
    try:
        tensors = load_file(str(path), device="cpu")
    except (SafetensorError, OSError) as e:
        raise BadInputError(f"cannot read checkpoint: {e}", path=str(path)) from None
    model_sd = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    if (
        "lm_head.weight" in model.state_dict() and "lm_head.weight" not in model_sd
    ):  # tied: stored once
        model_sd["lm_head.weight"] = model_sd["model.embed_tokens.weight"]
    model.load_state_dict(model_sd, strict=True)
    optim_meta = json.loads(meta["optim"])
    if len(optim_meta) != len(optimizers):
        raise BadInputError(
            f"checkpoint has {len(optim_meta)} optimizers, this run builds {len(optimizers)} (different --optimizer?)",
            path=str(path),
        )
    device = next(model.parameters()).device
    for i, opt in enumerate(optimizers):
        sd = _unflatten_optimizer(i, optim_meta[i], tensors)
        opt.load_state_dict(sd)
        for st in opt.state.values():  # load_state_dict casts to param dtype/device, except scalars
            for k, v in st.items():
                if isinstance(v, torch.Tensor) and k != "step":
                    st[k] = v.to(device)
    torch.set_rng_state(tensors["rng.cpu"])
    if torch.cuda.is_available():
        states = [tensors[k] for k in sorted(t for t in tensors if t.startswith("rng.cuda."))]
        if states:
            torch.cuda.set_rng_state_all(states)
    return json.loads(meta["state"])
