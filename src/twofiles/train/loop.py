"""The one training loop that every objective runs in.

What it owns: the run directory (config.json, metrics.jsonl), the budget (a fixed number of steps,
or seconds with a reserve for the final evaluation, through runctl.Planner), exact resume and
atomic checkpoints (by step, by wall time, on the last step and on SIGINT/SIGTERM), evaluation at
intervals and at the end, the progress bar, gradient accumulation and clipping, the optimizer
step, and DDP (wrapping the model from outside, agreeing on the length and a stop). It is a single
loop with a `last_step` flag, so the final evaluation and checkpoint are not special cases.

What it leaves to the objective (an `Objective`): its batches and their resumable position, its
loss as (sum, count), its evaluation and its own metrics, and an optional hook before each step.
What it leaves to the caller: building the model and optimizers, and what a finished or stopped
run writes (the artifact, plots, report).
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from twofiles import runtime as rt_mod
from twofiles.artifact import atomic_write_bytes
from twofiles.errors import BadInputError, TwofilesError
from twofiles.optim import OptimConfig, set_lr
from twofiles.train.checkpoint import list_checkpoints, load_checkpoint, save_checkpoint
from twofiles.train.runctl import (
    CHECKPOINT_SECONDS,
    CheckpointTimer,
    Planner,
    StopSignals,
    agree,
    probe_due,
)


class Objective(Protocol):
    """What one kind of training supplies to the loop. `model` is the module the loop trains
    (DDP-wrapped under torchrun); the objective keeps its own reference to the bare model where it
    needs one (sampling, saving)."""

    def next_batch(self) -> Any:
        """The next micro-batch, on the run's device (its position is in `state_dict`)."""
        ...

    def loss(self, model: torch.nn.Module, batch: Any) -> torch.Tensor:
        """The sum of the batch's losses; with `count` it is the loss as (sum, count)."""
        ...

    def count(self, batch: Any) -> int:
        """How many items `loss` sums over. The step's loss is the sum over its micro-batches
        divided by their total count, so uneven counts (masked targets) still weigh every item
        the same. Known without a forward pass: the total divides the first backward."""
        ...

    def batch_tokens(self, batch: Any) -> int:
        """Tokens this process trained on in `batch` (for tokens/s and the token count)."""
        ...

    def step_metrics(self, batches: list[Any]) -> dict[str, Any]:
        """The objective's own numbers for a step's metrics record (may be empty)."""
        ...

    def evaluate(self, model: torch.nn.Module, final: bool) -> dict[str, float]:
        """Held-out numbers (every rank runs it); `final` is the end-of-run evaluation."""
        ...

    def before_step(self, step: int) -> None:
        """Called before each optimizer step (RL samples its rollouts here)."""
        ...

    def after_eval(
        self, step: int, final: bool, periodic: bool, write: Callable[[str], None]
    ) -> None:
        """Called on the main process after the evaluation point of each step (samples)."""
        ...

    def reserve_s(self, per_step: float) -> float:
        """Seconds a time budget keeps for the final evaluation, at `per_step` s per step."""
        ...

    def probe(self, model: torch.nn.Module, per_step: float) -> None:
        """Measure the final evaluation's cost against a training step (time budgets only)."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """What resumes the objective exactly (its data position), stored in the checkpoint."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class ObjectiveBase:
    """The hooks most objectives leave alone, as no-ops: subclass it and write only what the
    objective does (the loop still calls every Objective method)."""

    def before_step(self, step: int) -> None:
        pass

    def after_eval(
        self, step: int, final: bool, periodic: bool, write: Callable[[str], None]
    ) -> None:
        pass

    def reserve_s(self, per_step: float) -> float:
        return 0.0  # a small held-out set: its evaluation is not budgeted

    def probe(self, model: torch.nn.Module, per_step: float) -> None:
        pass


@dataclass
class RunSpec:
    """The run-control fields, read from the stage's config."""

    out: Path  # run directory
    name: str  # the stage, as the progress bar and messages name it
    config: dict[str, Any]  # the resolved config (config.json, and every checkpoint)
    optim: OptimConfig
    max_steps: int  # the schedule's length unless time_budget_s > 0
    time_budget_s: float = 0.0
    grad_accum: int = 1
    eval_interval: int = 0  # steps between evaluations (0: only at the end)
    checkpoint_interval: int = 0  # steps between checkpoints (0: by time only)
    checkpoint_seconds: float = 0.0  # run seconds between checkpoints (0: off)
    resume: bool = False
    progress: bool = True


@dataclass(kw_only=True)
class RunConfig:
    """The run-control fields, declared once: every stage's config (PretrainConfig, SFTConfig,
    DPOConfig, ...) subclasses it and adds only its own fields. A stage whose default differs
    (its run directory, its optimizer) redeclares just that default."""

    out: str = "runs/run"  # run directory
    optim: OptimConfig = field(default_factory=OptimConfig)
    max_steps: int = 0  # optimizer steps (the schedule's length) unless time_budget_s is set
    time_budget_s: float = 0.0  # > 0: train for this many seconds (the schedule adapts its length)
    grad_accum: int = 1  # micro-batches per optimizer step
    eval_interval: int = 0  # steps between held-out evaluations (0: only at the end)
    checkpoint_interval: int = 0  # steps between checkpoints (0: by time only)
    checkpoint_seconds: float = CHECKPOINT_SECONDS  # run seconds between checkpoints (0: off)
    seed: int = 1337  # initialisation and data order
    device: str = "auto"
    dtype: str = "auto"  # auto: runtime.precision_for (CUDA: bf16; CPU: the measured probe)
    threads: int = 0  # CPU threads (0: torch's default)
    resume: bool = False  # continue from the newest checkpoint in out/checkpoints
    progress: bool = True  # tqdm progress bar on stderr
    provenance: dict[str, Any] = field(default_factory=dict)  # extra provenance for the artifact

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Any:
        """The config a run saved (config.json, a checkpoint's "config")."""
        d = dict(d)
        return cls(optim=OptimConfig(**d.pop("optim", {})), **d)


def run_spec(cfg: RunConfig, name: str, max_steps: int | None = None) -> RunSpec:
    """The loop's view of a stage's config (`max_steps` as the stage resolves it when it differs
    from the config's: SFT derives it from epochs when it is 0)."""
    return RunSpec(
        out=Path(cfg.out),
        name=name,
        config=cfg.to_dict(),
        optim=cfg.optim,
        max_steps=cfg.max_steps if max_steps is None else max_steps,
        time_budget_s=cfg.time_budget_s,
        grad_accum=cfg.grad_accum,
        eval_interval=cfg.eval_interval,
        checkpoint_interval=cfg.checkpoint_interval,
        checkpoint_seconds=cfg.checkpoint_seconds,
        resume=cfg.resume,
        progress=cfg.progress,
    )


@dataclass
class LoopOutcome:
    step: int
    elapsed: float  # run seconds, evaluations and checkpoints included
    tokens: int  # tokens trained on, over every process
    last_eval: dict[str, Any] = field(default_factory=dict)  # the final evaluation's record
    tokens_per_second: float = 0.0  # a moving average over the steps (for MFU)
    stopped: bool = False  # stopped by a signal after saving a checkpoint
    signum: int | None = None


def open_run(spec: RunSpec, rt: rt_mod.Runtime) -> None:
    """Create the run directory and write config.json; refuse to overwrite a run's checkpoints
    without --resume, and a --resume with nothing to resume."""
    ckpt_dir = spec.out / "checkpoints"
    if not rt.is_main:
        return
    spec.out.mkdir(parents=True, exist_ok=True)
    if not spec.resume and list_checkpoints(ckpt_dir):
        raise TwofilesError(
            f"{spec.out} already holds checkpoints: pass --resume to continue, or choose another --out"
        )
    atomic_write_bytes(spec.out / "config.json", json.dumps(spec.config, indent=2).encode())


def _log(rt: rt_mod.Runtime, msg: str) -> None:
    if rt.is_main:
        print(msg, file=sys.stderr, flush=True)


def wrap_ddp(model: torch.nn.Module, rt: rt_mod.Runtime) -> torch.nn.Module:
    """The model as the loop trains it: DDP-wrapped under torchrun (the model knows nothing of it)."""
    if rt.world_size <= 1:
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    return DDP(model, device_ids=[rt.local_rank] if rt.device.type == "cuda" else None)


def run(
    spec: RunSpec,
    objective: Objective,
    rt: rt_mod.Runtime,
    signals: StopSignals,
    model: torch.nn.Module,
    ckpt_module: torch.nn.Module,
    optimizers: list[torch.optim.Optimizer],
    *,
    on_eval: Callable[[dict[str, Any]], None] | None = None,
    extra_state: Callable[[], dict[str, Any]] | None = None,
    on_resume: Callable[[dict[str, Any]], None] | None = None,
    on_start: Callable[[Callable[[dict[str, Any]], None]], None] | None = None,
    flops_per_token: float = float("nan"),
    peak_flops: float = float("nan"),
) -> LoopOutcome:
    """Train `model` on `objective` until the budget is spent or a signal stops it.

    `ckpt_module` is what a checkpoint stores (the bare model, or only its adapters);
    `extra_state` adds the caller's own values to each checkpoint and `on_resume` gets them back.
    `on_start` runs once at the start of a new run (not a resumed one), with the metrics logger:
    the "before" numbers of a finetuning run.
    """
    ckpt_dir = spec.out / "checkpoints"
    planner = Planner(spec.optim, spec.max_steps, spec.time_budget_s, reserve_s=objective.reserve_s)
    step, elapsed, tokens_seen = 0, 0.0, 0
    metrics_path = spec.out / "metrics.jsonl"
    if spec.resume:
        ckpts = list_checkpoints(ckpt_dir)
        if not ckpts:
            raise TwofilesError(f"--resume: no checkpoint in {ckpt_dir}")
        state = load_checkpoint(ckpts[-1], ckpt_module, optimizers)
        step, elapsed, tokens_seen = state["step"], state["elapsed"], state["tokens"]
        planner.load_state_dict(state)
        if not planner.timed and planner.total < step:
            raise BadInputError(
                f"--max-steps {planner.total}: the run is already at step {step}; give more steps"
            )
        objective.load_state_dict(state)
        if on_resume is not None:
            on_resume(state)
        if rt.is_main and metrics_path.exists():
            # drop what the interrupted run logged after the checkpoint
            kept = [
                ln
                for ln in metrics_path.read_text().splitlines()
                if ln.strip() and json.loads(ln).get("step", 0) <= step
            ]
            atomic_write_bytes(metrics_path, ("\n".join(kept) + "\n" if kept else "").encode())
        _log(rt, f"resumed from {ckpts[-1].name}: step {step}, {tokens_seen:,} tokens")
    elif rt.is_main:
        metrics_path.unlink(missing_ok=True)

    metrics_file = open(metrics_path, "a") if rt.is_main else None  # noqa: SIM115  (open for the whole run, closed at its end)

    def log_metrics(rec: dict[str, Any]) -> None:
        if metrics_file is not None:
            metrics_file.write(json.dumps(rec) + "\n")
            metrics_file.flush()

    if on_start is not None and not spec.resume:
        on_start(log_metrics)

    bar = None
    if rt.is_main and spec.progress:
        from tqdm import tqdm

        bar = tqdm(
            total=planner.total,
            initial=step,
            desc=spec.name,
            unit="step",
            file=sys.stderr,
            dynamic_ncols=True,
        )
    write = bar.write if bar is not None else (lambda s: print(s, file=sys.stderr))
    grad_params = [p for p in ckpt_module.parameters() if p.requires_grad]
    last_eval: dict[str, Any] = {}
    eval_post = ""
    tok_s_ema: float | None = None
    stopping = False
    model.train()
    loop_start, elapsed_before, step_start = time.perf_counter(), elapsed, step
    resumed_at = step if spec.resume else -1
    timer = CheckpointTimer(spec.checkpoint_seconds, elapsed)
    signals.install()
    try:
        while True:
            # `elapsed` is the run's wall time in the loop (evaluations and checkpoints included),
            # so a time budget bounds what the user waits for, not just the optimizer steps.
            elapsed = elapsed_before + (time.perf_counter() - loop_start)
            total_steps, stopping = agree(rt, planner.observe(step, elapsed), signals.requested)
            planner.total = total_steps
            if bar is not None and planner.timed:
                bar.total = total_steps
            # probe steps are counted in steps, so every rank probes at the same one
            if planner.timed and planner.per_step and probe_due(step - step_start):
                objective.probe(model, planner.per_step)
            last_step = step >= total_steps
            stopping = stopping and not last_step
            # the checkpoint we resumed from was written after this step's evaluation
            periodic = step > 0 and step != resumed_at
            # --- evaluate ---
            if last_step or (periodic and spec.eval_interval and step % spec.eval_interval == 0):
                t_eval = time.perf_counter()
                numbers = objective.evaluate(model, last_step)
                rec = {
                    "step": step,
                    **numbers,
                    "time": elapsed,
                    "tokens": tokens_seen,
                    "final": last_step,
                    "eval_seconds": time.perf_counter() - t_eval,
                }
                log_metrics(rec)
                last_eval = rec
                eval_post = " | ".join(
                    f"{k} {v:.3f}" for k, v in numbers.items() if k != "val_loss"
                )
                eval_post = eval_post or " | ".join(f"{k} {v:.3f}" for k, v in numbers.items())
                if bar is not None:
                    bar.set_postfix_str(eval_post, refresh=False)
                if on_eval is not None and rt.is_main:
                    on_eval(rec)
            if rt.is_main:
                objective.after_eval(step, last_step, periodic, write)
            # --- checkpoint ---
            if (
                rt.is_main
                and step > 0
                and (
                    last_step
                    or stopping
                    or timer.due(elapsed)
                    or (
                        periodic
                        and spec.checkpoint_interval
                        and step % spec.checkpoint_interval == 0
                    )
                )
            ):
                timer.reset(elapsed)
                ckpt_state = {
                    "elapsed": elapsed,
                    **planner.state_dict(),
                    "tokens": tokens_seen,
                    **objective.state_dict(),
                    **(extra_state() if extra_state is not None else {}),
                    "config": spec.config,
                }
                save_checkpoint(ckpt_dir, step, ckpt_module, optimizers, ckpt_state)
            if last_step or stopping:
                break
            # --- one optimizer step: the loss is the mean over every counted item of the step ---
            objective.before_step(step)
            t0 = time.perf_counter()
            lr = planner.lr(step)
            set_lr(optimizers, lr)
            batches = [objective.next_batch() for _ in range(spec.grad_accum)]
            count = max(sum(objective.count(b) for b in batches), 1)
            loss_total = torch.zeros((), device=rt.device)
            for micro, b in enumerate(batches):
                sync = micro == spec.grad_accum - 1
                ctx = (
                    model.no_sync()  # type: ignore[operator]
                    if (rt.world_size > 1 and not sync)
                    else contextlib.nullcontext()
                )
                with ctx:
                    loss_sum = objective.loss(model, b)
                    (loss_sum / count).backward()
                loss_total += loss_sum.detach()
            grad_norm = None
            if spec.optim.grad_clip > 0:
                grad_norm = torch.nn.utils.clip_grad_norm_(grad_params, spec.optim.grad_clip)
            for opt in optimizers:
                opt.step()
            for opt in optimizers:
                opt.zero_grad(set_to_none=True)
            train_loss = loss_total.item() / count  # one host sync per step, for logging
            if rt.world_size > 1:  # the global mean, so every world size logs the same number
                import torch.distributed as dist

                t = torch.tensor([train_loss], device=rt.device)
                dist.all_reduce(t)
                train_loss = t.item() / rt.world_size
            if not math.isfinite(train_loss):
                raise TwofilesError(
                    f"training diverged at step {step} (loss {train_loss}); lower the learning rate"
                )
            step += 1
            n_tokens = sum(objective.batch_tokens(b) for b in batches) * rt.world_size
            tokens_seen += n_tokens
            dt = time.perf_counter() - t0
            elapsed = elapsed_before + (time.perf_counter() - loop_start)
            tok_s = n_tokens / dt
            tok_s_ema = tok_s if tok_s_ema is None else 0.9 * tok_s_ema + 0.1 * tok_s
            log_metrics(
                {
                    "step": step,
                    "loss": train_loss,
                    "lr": lr,
                    "tokens": tokens_seen,
                    **objective.step_metrics(batches),
                    "time": elapsed,
                    "tok_s": tok_s,
                    "grad_norm": None if grad_norm is None else float(grad_norm),
                }
            )
            if bar is not None:
                bar.update(1)
                post = f"loss {train_loss:.3f} | {tok_s_ema:,.0f} tok/s"
                mfu = tok_s_ema * flops_per_token / peak_flops
                if math.isfinite(mfu):
                    post += f" | MFU {100 * mfu:.0f}%"
                if eval_post:
                    post += f" | {eval_post}"
                bar.set_postfix_str(post, refresh=False)
    finally:
        signals.restore()
        if bar is not None:
            bar.close()
        if metrics_file is not None:
            metrics_file.close()
    elapsed = elapsed_before + (time.perf_counter() - loop_start)  # the final evaluation included
    if stopping and step == 0:  # stopped before its first step: nothing to save
        raise KeyboardInterrupt
    return LoopOutcome(
        step=step,
        elapsed=elapsed,
        tokens=tokens_seen,
        last_eval=last_eval,
        tokens_per_second=tok_s_ema or 0.0,
        stopped=stopping,
        signum=signals.signum,
    )
