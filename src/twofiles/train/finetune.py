"""What every stage that starts from a trained model shares: SFT, DPO, the reward model and RL.

What it owns: `FinetuneConfig` (the model to start from and the LoRA fields, over the loop's
run-control fields), `base_spec` (how adapters name their base) and `save_finetuned` (the
result: LoRA adapters that load onto their base, or the model with the adapters merged). What it
leaves to others: each stage's objective and report, LoRA itself (twofiles.lora), the loop.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from twofiles import runtime as rt_mod
from twofiles.artifact import save_model
from twofiles.errors import TwofilesError
from twofiles.lora import ALL_TARGETS, LoRAConfig, merge_lora, save_adapters
from twofiles.optim import OptimConfig
from twofiles.train.loop import RunConfig
from twofiles.train.runctl import RunInterrupted, StopSignals

if TYPE_CHECKING:
    from twofiles.model import Transformer


@dataclass(kw_only=True)
class FinetuneConfig(RunConfig):
    """The model a stage starts from, and whether it trains every weight or LoRA adapters."""

    model: str = (
        ""  # the model to start from: model.safetensors, .gguf, Hugging Face directory or alias
    )
    lora_rank: int = 0  # > 0: train LoRA adapters of this rank instead of every weight
    lora_alpha: float = 16.0  # LoRA scale numerator (the update is scaled by alpha / rank)
    lora_targets: list[str] = field(
        default_factory=lambda: list(ALL_TARGETS)
    )  # Linears LoRA adapts

    @property
    def lora(self) -> LoRAConfig | None:
        return (
            LoRAConfig(rank=self.lora_rank, alpha=self.lora_alpha, targets=list(self.lora_targets))
            if self.lora_rank > 0
            else None
        )


def finetune_optim(lr: float) -> OptimConfig:
    """AdamW at `lr`: finetuning moves a trained model a little; Muon's orthogonalised steps are
    sized for training from scratch. Constant LR after warm-up, decayed over the last 30%."""
    return OptimConfig(
        optimizer="adamw",
        lr=lr,
        embed_lr=None,
        weight_decay=0.0,
        schedule="wsd",
        warmup_steps=10,
        decay_frac=0.3,
        grad_clip=1.0,
    )


@contextmanager
def single_process_run(
    cfg: RunConfig, stage: str, log: Callable[[str], None]
) -> Iterator[tuple[rt_mod.Runtime, StopSignals]]:
    """The runtime and the Ctrl-C/SIGTERM handler of a stage that runs in one process (not under
    torchrun), both released however the run ends."""
    rt = rt_mod.setup(cfg.device, cfg.dtype, cfg.threads or None)
    signals = StopSignals(log)
    try:
        if rt.world_size > 1:
            raise TwofilesError(f"twofiles {stage} runs in one process (not under torchrun)")
        yield rt, signals
    finally:
        signals.restore()
        rt_mod.teardown(rt)


def stopped(
    cfg: FinetuneConfig, stage: str, step: int, signum: int | None, log: Callable[[str], None]
) -> NoReturn:
    """A run stopped by a signal with its checkpoint saved: say how to continue it, and stop."""
    log(
        f"stopped at step {step}; checkpoint saved. Continue with: "
        f"twofiles {stage} {cfg.model} --out {cfg.out} --resume"
    )
    raise RunInterrupted(signum or 2, step, str(Path(cfg.out)))


def base_spec(spec: str) -> str:
    """The model spec as adapters should name their base: an absolute path, or an alias."""
    return os.path.abspath(spec) if os.path.exists(spec) else spec


def save_finetuned(
    out: Path,
    model: Transformer,
    tokenizer: Any,
    cfg: FinetuneConfig,
    *,
    merge: bool,
    chat_template: str,
    provenance: dict[str, Any],
) -> Path:
    """OUT/adapters.safetensors (LoRA, not merged: they load onto `cfg.model` anywhere a model
    goes) or OUT/model.safetensors (every weight, LoRA merged in)."""
    if cfg.lora is not None and not merge:
        return save_adapters(
            out / "adapters.safetensors",
            model,
            cfg.lora,
            base=base_spec(cfg.model),
            chat_template=chat_template,
            provenance=provenance,
        )
    if cfg.lora is not None:
        merge_lora(model)
    return save_model(
        out / "model.safetensors",
        model,
        tokenizer,
        provenance=provenance,
        chat_template=chat_template,
    )


__all__ = [
    "FinetuneConfig",
    "base_spec",
    "finetune_optim",
    "save_finetuned",
    "single_process_run",
    "stopped",
]
