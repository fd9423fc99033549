"""Steering with SAE features: add a feature's decoder direction to the residual stream while
the model generates.

What it owns: the `DIR:FEATURE=SCALE` spec (`parse_steer`), turning specs into vectors at hook
points for one model and prompt (`prepare_steering`: the SAE must fit the model, its hook must be a
module boundary), and the context manager that adds them (`steering`, over inspect.attached: the
vectors are added at every position, the prompt's and each generated token's, inside the
engine's KV-cached decoding). What it leaves to others: the SAE (sae/model.py), the hooks
(inspect/hooks.py), sampling (engine.py).

Scale units. By default ("norm") SCALE is in units of the typical norm of the activation at the
hook on this prompt: the median over its positions of ||x|| (the median, because the first
position's norm is often an outlier, the attention sink). The same SCALE then means the same
thing at layer 2 and at layer 25, where residual norms differ by an order of magnitude: 1 adds a
vector as long as a typical residual, enough to take over (smollm2's text breaks down there);
0.2-0.5 is a nudge (docs/LOG.md, 2026-12-06).
"abs" adds SCALE x the unit direction as it is. The effective norm is reported either way.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from twofiles.errors import BadInputError
from twofiles.inspect import HookPoint, as_transformer, attached, long_name, run_with_cache
from twofiles.model import Transformer
from twofiles.sae.model import load_sae

UNITS = ("norm", "abs")
# what "norm" units are measured on where there is no one prompt (a chat): plain prose
REFERENCE_TEXT = "The quick brown fox jumps over the lazy dog, and the dog does not seem to mind."


@dataclass(frozen=True)
class SteerSpec:
    """One --steer: add `scale` x feature `feature`'s direction of the SAE at `path`."""

    path: str
    feature: int
    scale: float


@dataclass
class Steer:
    """A spec made concrete for one model and prompt."""

    spec: SteerSpec
    hook_name: str
    units: str
    typical_norm: float  # median ||x|| at the hook on the prompt (before any steering)
    added_norm: float  # the norm of the vector added at each position
    vector: torch.Tensor  # [dim] on the model's device

    def to_dict(self) -> dict[str, Any]:
        return {
            "sae": self.spec.path,
            "feature": self.spec.feature,
            "scale": self.spec.scale,
            "units": self.units,
            "hook_name": self.hook_name,
            "typical_norm": round(self.typical_norm, 4),
            "added_norm": round(self.added_norm, 4),
        }

    def describe(self) -> str:
        unit = f" x typical norm {self.typical_norm:.3g}" if self.units == "norm" else " (absolute)"
        return (
            f"steering: feature {self.spec.feature} of {self.spec.path} at {self.hook_name}, "
            f"scale {self.spec.scale:g}{unit}: adds a vector of norm {self.added_norm:.3g} "
            "at every position"
        )


def parse_steer(text: str) -> SteerSpec:
    """`DIR:FEATURE=SCALE` (DIR may itself hold colons: the last one separates)."""
    path, sep, rest = text.rpartition(":")
    feature, eq, scale = rest.partition("=")
    if not (sep and path and eq):
        raise BadInputError(f"--steer {text!r}: expected DIR:FEATURE=SCALE, e.g. runs/sae:12=0.5")
    try:
        return SteerSpec(path, int(feature), float(scale))
    except ValueError:
        raise BadInputError(
            f"--steer {text!r}: FEATURE must be an integer and SCALE a number"
        ) from None


def prepare_steering(
    model: Transformer | Any,
    specs: Sequence[SteerSpec],
    prompt_ids: Sequence[int],
    *,
    units: str = "norm",
) -> list[Steer]:
    """The vectors `specs` add on `model`, their norms measured on `prompt_ids`. An SAE of another
    width, a hook that is not a module boundary, or a feature out of range is a BadInputError."""
    if units not in UNITS:
        raise BadInputError(f"steering units {units!r}: norm or abs")
    if not specs:
        return []
    m = as_transformer(model)
    param = next(m.parameters())
    dim = m.config.dim
    steers: list[Steer] = []
    typical: dict[str, float] = {}
    for spec in specs:
        sae = load_sae(spec.path)
        cfg = sae.cfg
        where = f"--steer {spec.path}:{spec.feature}"
        if cfg.d_in != dim:
            raise BadInputError(
                f"{where}: the SAE is {cfg.d_in} wide, the model's residual stream {dim}: it was "
                f"made for another model ({cfg.model_name or 'unnamed'})"
            )
        hook = long_name(cfg.hook_name)
        try:
            with attached(m, [(hook, lambda x, h: None)]):
                pass
        except KeyError as e:
            raise BadInputError(
                f"{where}: the SAE's hook {hook!r} cannot steer: {e.args[0]}"
            ) from None
        direction = sae.direction(spec.feature).detach().float()
        direction = direction / direction.norm().clamp_min(1e-12)
        if units == "norm":
            if hook not in typical:
                _, cache = run_with_cache(m, list(prompt_ids), names=[hook])
                norms = cache[hook][0].float().norm(dim=-1)  # [T]
                typical[hook] = float((norms[1:] if norms.numel() > 1 else norms).median())
            length = spec.scale * typical[hook]
        else:
            length = spec.scale
        steers.append(
            Steer(
                spec=spec,
                hook_name=hook,
                units=units,
                typical_norm=typical.get(hook, float("nan")),
                added_norm=abs(length),
                vector=(direction * length).to(param.device),
            )
        )
    return steers


@contextlib.contextmanager
def steering(model: Transformer | Any, steers: Sequence[Steer]) -> Iterator[None]:
    """Add each steer's vector at its hook in every forward of `model` while the block is open
    (none: the model is not touched, whatever it is)."""
    if not steers:
        yield
        return

    def add(vector: torch.Tensor):
        def hook(x: torch.Tensor, point: HookPoint) -> torch.Tensor:
            return x + vector.to(x.dtype)

        return hook

    with attached(as_transformer(model), [(s.hook_name, add(s.vector)) for s in steers]):
        yield


def steer_paths_exist(specs: Sequence[SteerSpec]) -> None:
    """Fail before a model is loaded when an SAE named in --steer is missing."""
    for spec in specs:
        p = Path(spec.path)
        if not (p.is_file() or (p / "sae.safetensors").is_file()):
            raise BadInputError(
                f"--steer {spec.path}:{spec.feature}: no SAE there (sae.safetensors)"
            )
