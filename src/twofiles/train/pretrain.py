"""Pretraining: token shards in, a base model (model.safetensors) out.

Reads like a recipe: config -> runtime -> data -> model -> optimizer -> schedule -> one loop. The
loop has a `last_step` flag so the final evaluation and save are not special cases. Works in one
process or under `torchrun` (DDP: the model knows nothing of it; we wrap it from outside).

What it owns: the loop, when to evaluate, logging (metrics.jsonl, progress bar with tokens/s and
MFU), checkpoints/resume, and the final artifact + report. What it leaves to others: the model
math (model), optimizers and schedules (optim), batches (data.shards), loss and bits per byte
(eval.bpb), sampling (engine), device choice (runtime).
"""

from __future__ import annotations

import contextlib
import json
import math
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from twofiles import runtime as rt_mod
from twofiles.artifact import atomic_write_bytes, save_model
from twofiles.data.prepare import load_manifest
from twofiles.data.shards import BatchLoader, TokenStream
from twofiles.errors import BadInputError, TwofilesError
from twofiles.eval.bpb import evaluate_bpb
from twofiles.model import ModelConfig, Transformer
from twofiles.optim import OptimConfig, build_optimizers, set_lr
from twofiles.tokenizer import Tokenizer
from twofiles.train.checkpoint import list_checkpoints, load_checkpoint, save_checkpoint
from twofiles.train.plots import plot_losses
from twofiles.train.runctl import (
    CHECKPOINT_SECONDS,
    CheckpointTimer,
    Planner,
    RunInterrupted,
    StopSignals,
    agree,
    probe_due,
)


@dataclass
class PretrainConfig:
    data: str = ""  # prepared data directory (twofiles data prepare)
    out: str = "runs/pretrain"  # run directory
    model: ModelConfig = field(default_factory=ModelConfig)  # vocab_size is taken from the data
    optim: OptimConfig = field(default_factory=OptimConfig)
    batch_size: int = 16  # sequences per micro-batch per process
    seq_len: int = 256  # tokens per sequence
    grad_accum: int = 1  # micro-batches per optimizer step
    max_steps: int = 200  # optimizer steps (the schedule's length) unless time_budget_s is set
    time_budget_s: float = (
        0.0  # > 0: train for this many seconds; the WSD schedule adapts its length
    )
    eval_interval: int = 50  # steps between validation evaluations (0: only at the end)
    eval_tokens: int = 32768  # validation tokens per periodic evaluation (the final one uses all)
    final_eval_tokens: int = 0  # 0: the whole validation split at the end
    sample_interval: int = 0  # steps between printed samples (0: only at the end)
    sample_prompt: str = ""  # prompt for samples ("" = start of a document)
    sample_tokens: int = 64  # tokens per sample
    checkpoint_interval: int = 0  # steps between checkpoints (0: by time only)
    checkpoint_seconds: float = CHECKPOINT_SECONDS  # run seconds between checkpoints (0: off)
    seed: int = 1337  # model init and data order
    compile: bool = False  # torch.compile the model
    device: str = "auto"
    dtype: str = "auto"  # auto: bf16 autocast on CUDA, fp32 elsewhere
    threads: int = 0  # CPU threads (0: torch's default)
    resume: bool = False  # continue from the newest checkpoint in out/checkpoints
    progress: bool = True  # tqdm progress bar on stderr
    provenance: dict[str, Any] = field(default_factory=dict)  # extra provenance for the artifact

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PretrainConfig:
        d = dict(d)
        model = ModelConfig.from_dict(d.pop("model", {}))
        optim = OptimConfig(**d.pop("optim", {}))
        return cls(model=model, optim=optim, **d)


@dataclass
class PretrainResult:
    out: str
    model_path: str
    steps: int
    tokens: int
    train_seconds: float
    val_loss: float
    val_bpb: float
    tokens_per_second: float
    achieved_flops: float  # model FLOP/s achieved in training steps (6N + attention per token)
    peak_flops: float  # the device's matmul peak measured (CPU) or looked up (CUDA) at start; NaN if unknown

    @property
    def mfu(self) -> float | None:
        """Achieved / peak matmul FLOP/s (None when the peak is unknown)."""
        return self.achieved_flops / self.peak_flops if math.isfinite(self.peak_flops) else None

    params: int


def _log(rt: rt_mod.Runtime, msg: str) -> None:
    if rt.is_main:
        print(msg, file=sys.stderr, flush=True)


def _sample(model: Transformer, tokenizer: Any, prompt: str, n_tokens: int, seed: int) -> str:
    from twofiles.engine import SamplingParams, generate

    ids = [tokenizer.bos_id] + tokenizer.encode(prompt)
    params = SamplingParams(temperature=0.8, top_k=50, max_tokens=n_tokens, seed=seed)
    out = list(generate(model, ids, params, tokenizer=tokenizer))
    return prompt + tokenizer.decode(out)


def pretrain(
    cfg: PretrainConfig, on_eval: Callable[[dict[str, Any]], None] | None = None
) -> PretrainResult:
    """Run (or resume) pretraining as configured; `on_eval` sees every evaluation record."""
    rt = rt_mod.setup(cfg.device, cfg.dtype, cfg.threads or None)
    signals = StopSignals(lambda msg: _log(rt, msg))
    try:
        return _pretrain(cfg, rt, on_eval, signals)
    finally:
        signals.restore()
        rt_mod.teardown(rt)


def _pretrain(
    cfg: PretrainConfig,
    rt: rt_mod.Runtime,
    on_eval: Callable[[dict[str, Any]], None] | None,
    signals: StopSignals,
) -> PretrainResult:
    out = Path(cfg.out)
    ckpt_dir = out / "checkpoints"
    # --- data ---
    manifest = load_manifest(cfg.data)
    tokenizer = Tokenizer.load(Path(cfg.data) / manifest.get("tokenizer", "tokenizer.json"))
    train_stream = TokenStream(cfg.data, "train", manifest)
    val_stream = TokenStream(cfg.data, "val", manifest)
    if len(val_stream) < 2:
        raise TwofilesError(
            f"{cfg.data}: the validation split is empty; prepare the data with a validation split"
        )
    cfg.model.vocab_size = int(manifest["vocab_size"])
    cfg.model.max_seq_len = max(cfg.model.max_seq_len, cfg.seq_len)
    loader = BatchLoader(
        train_stream,
        cfg.batch_size,
        cfg.seq_len,
        seed=cfg.seed,
        rank=rt.rank,
        world_size=rt.world_size,
    )
    token_bytes = torch.from_numpy(tokenizer.token_bytes().astype(np.int64)).to(rt.device)

    # --- run directory ---
    if rt.is_main:
        out.mkdir(parents=True, exist_ok=True)
        if not cfg.resume and list_checkpoints(ckpt_dir):
            raise TwofilesError(
                f"{out} already holds checkpoints: pass --resume to continue, or choose another --out"
            )
        atomic_write_bytes(out / "config.json", json.dumps(cfg.to_dict(), indent=2).encode())

    # --- model ---
    torch.manual_seed(cfg.seed)
    raw_model = Transformer(cfg.model).to(rt.device)
    raw_model.init_weights(seed=cfg.seed)
    n_params = sum(p.numel() for p in raw_model.parameters())
    model: torch.nn.Module = raw_model
    if cfg.compile:
        model = torch.compile(model)  # type: ignore[assignment]
    if rt.world_size > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        model = DDP(model, device_ids=[rt.local_rank] if rt.device.type == "cuda" else None)

    # --- optimizer and schedule ---
    optimizers = build_optimizers(raw_model, cfg.optim)
    tokens_per_step = cfg.batch_size * cfg.seq_len * cfg.grad_accum * rt.world_size
    final_eval_tokens = min(cfg.final_eval_tokens or len(val_stream), len(val_stream))
    # The budget also pays for the final validation pass, estimated from the measured training
    # speed: an evaluated token costs `eval_cost` of a trained one. A forward pass is about a third
    # of a training step, but Muon's and the optimizer's per-step costs make small models' steps
    # dearer still (tiny preset: ~1/5), so the ratio is measured once the run is warm, and again
    # at doubling intervals: the median of a few short probes resists a busy machine's noise.
    eval_cost = [1 / 2.5]
    probes: list[float] = []
    planner = Planner(
        cfg.optim,
        cfg.max_steps,
        cfg.time_budget_s,
        reserve_s=lambda per_step: final_eval_tokens * eval_cost[0] * per_step / tokens_per_step,
    )
    step, elapsed, tokens_seen = 0, 0.0, 0
    metrics_path = out / "metrics.jsonl"
    if cfg.resume:
        ckpts = list_checkpoints(ckpt_dir)
        if not ckpts:
            raise TwofilesError(f"--resume: no checkpoint in {ckpt_dir}")
        state = load_checkpoint(ckpts[-1], raw_model, optimizers)
        step, elapsed, tokens_seen = state["step"], state["elapsed"], state["tokens"]
        planner.load_state_dict(state)
        if not planner.timed and cfg.max_steps < step:
            raise BadInputError(
                f"--max-steps {cfg.max_steps}: the run is already at step {step}; give more steps"
            )
        loader.load_state_dict(state["loader"])
        if (
            rt.is_main and metrics_path.exists()
        ):  # drop what the interrupted run logged after the checkpoint
            kept = [
                ln
                for ln in metrics_path.read_text().splitlines()
                if ln.strip() and json.loads(ln).get("step", 0) <= step
            ]
            atomic_write_bytes(metrics_path, ("\n".join(kept) + "\n" if kept else "").encode())
        _log(rt, f"resumed from {ckpts[-1].name}: step {step}, {tokens_seen:,} tokens")
    elif rt.is_main:
        metrics_path.unlink(missing_ok=True)

    peak = rt_mod.peak_flops(rt.device) * (rt.world_size if rt.device.type == "cuda" else 1)
    flops_per_token = cfg.model.flops_per_token(cfg.seq_len)
    _log(
        rt,
        f"model: {n_params:,} parameters ({cfg.model.num_params(embeddings=False):,} in matmuls), {cfg.model.n_layers} layers, dim {cfg.model.dim}",
    )
    _log(
        rt,
        f"data: {len(train_stream):,} train tokens, {len(val_stream):,} val tokens; {tokens_per_step:,} tokens/step",
    )
    _log(rt, "runtime: " + rt.describe() + " (" + "; ".join(rt.reasons) + ")")

    metrics_file = open(metrics_path, "a") if rt.is_main else None  # noqa: SIM115  (open for the whole run, closed at its end)

    def log_metrics(rec: dict[str, Any]) -> None:
        if metrics_file is not None:
            metrics_file.write(json.dumps(rec) + "\n")
            metrics_file.flush()

    bar = None
    if rt.is_main and cfg.progress:
        from tqdm import tqdm

        bar = tqdm(
            total=planner.total,
            initial=step,
            desc="pretrain",
            unit="step",
            file=sys.stderr,
            dynamic_ncols=True,
        )

    val_loss = val_bpb = float("nan")
    tok_s_ema: float | None = None
    model.train()
    loop_start, elapsed_before, step_start = time.perf_counter(), elapsed, step
    resumed_at = step if cfg.resume else -1
    timer = CheckpointTimer(cfg.checkpoint_seconds, elapsed)
    signals.install()
    while True:
        # `elapsed` is the run's wall time in the loop (evaluations and checkpoints included), so a
        # time budget bounds what the user waits for, not just the optimizer steps.
        elapsed = elapsed_before + (time.perf_counter() - loop_start)
        total_steps, stopping = agree(rt, planner.observe(step, elapsed), signals.requested)
        planner.total = total_steps
        if bar is not None and planner.timed:
            bar.total = total_steps
        # probe steps are counted in steps, so every rank probes at the same one (evaluate syncs)
        if planner.timed and planner.per_step and probe_due(step - step_start):
            t_probe = time.perf_counter()
            n = min(final_eval_tokens, 4 * cfg.batch_size * cfg.seq_len)
            evaluate_bpb(model, val_stream, token_bytes, rt, cfg.seq_len, cfg.batch_size * 2, n)
            per_token = (time.perf_counter() - t_probe) / max(n, 1)
            probes.append(per_token / (planner.per_step / tokens_per_step))
            eval_cost[0] = statistics.median(probes)
        last_step = step >= total_steps
        stopping = stopping and not last_step
        # the checkpoint we resumed from was written after this step's evaluation and samples
        periodic = step > 0 and step != resumed_at
        # --- evaluate ---
        if last_step or (periodic and cfg.eval_interval and step % cfg.eval_interval == 0):
            limit = (cfg.final_eval_tokens or None) if last_step else cfg.eval_tokens
            t_eval = time.perf_counter()
            val_loss, val_bpb = evaluate_bpb(
                model, val_stream, token_bytes, rt, cfg.seq_len, cfg.batch_size * 2, limit
            )
            rec = {
                "step": step,
                "val_loss": val_loss,
                "val_bpb": val_bpb,
                "time": elapsed,
                "tokens": tokens_seen,
                "final": last_step,
                "eval_seconds": time.perf_counter() - t_eval,
            }
            log_metrics(rec)
            if bar is not None:
                bar.set_postfix_str(f"val_bpb {val_bpb:.3f}", refresh=False)
            if on_eval is not None and rt.is_main:
                on_eval(rec)
        # --- samples ---
        if rt.is_main and (
            last_step or (periodic and cfg.sample_interval and step % cfg.sample_interval == 0)
        ):
            text = _sample(raw_model, tokenizer, cfg.sample_prompt, cfg.sample_tokens, cfg.seed)
            (bar.write if bar is not None else print)(
                f"--- sample at step {step} ---\n{text}\n---", file=sys.stderr
            )
            raw_model.train()
        # --- checkpoint ---
        if (
            rt.is_main
            and step > 0
            and (
                last_step
                or stopping
                or timer.due(elapsed)
                or (periodic and cfg.checkpoint_interval and step % cfg.checkpoint_interval == 0)
            )
        ):
            timer.reset(elapsed)
            state = {
                "elapsed": elapsed,
                **planner.state_dict(),
                "tokens": tokens_seen,
                "loader": loader.state_dict(),
                "config": cfg.to_dict(),
            }
            save_checkpoint(ckpt_dir, step, raw_model, optimizers, state)
        if last_step or stopping:
            break
        # --- one optimizer step ---
        t0 = time.perf_counter()
        lr = planner.lr(step)
        set_lr(optimizers, lr)
        loss_sum = torch.zeros((), device=rt.device)
        for micro in range(cfg.grad_accum):
            x_np, y_np = loader.next_batch()
            x = torch.from_numpy(x_np).to(rt.device, non_blocking=True)
            y = torch.from_numpy(y_np).to(rt.device, non_blocking=True)
            sync = micro == cfg.grad_accum - 1
            ctx = model.no_sync() if (rt.world_size > 1 and not sync) else contextlib.nullcontext()  # type: ignore[operator]
            with ctx:
                with rt.autocast():
                    loss = model(x, y)
                (loss / cfg.grad_accum).backward()
            loss_sum += loss.detach()
        grad_norm = None
        if cfg.optim.grad_clip > 0:
            grad_norm = torch.nn.utils.clip_grad_norm_(raw_model.parameters(), cfg.optim.grad_clip)
        for opt in optimizers:
            opt.step()
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)
        train_loss = (loss_sum / cfg.grad_accum).item()  # one host sync per step, for logging
        if rt.world_size > 1:  # log the global mean so every world size logs the same number
            import torch.distributed as dist

            t = torch.tensor([train_loss], device=rt.device)
            dist.all_reduce(t)
            train_loss = t.item() / rt.world_size
        if not math.isfinite(train_loss):
            raise TwofilesError(
                f"training diverged at step {step} (loss {train_loss}); lower the learning rate"
            )
        dt = time.perf_counter() - t0
        step += 1
        elapsed = elapsed_before + (time.perf_counter() - loop_start)
        tokens_seen += tokens_per_step
        tok_s = tokens_per_step / dt
        tok_s_ema = tok_s if tok_s_ema is None else 0.9 * tok_s_ema + 0.1 * tok_s
        mfu = tok_s_ema * flops_per_token / peak if math.isfinite(peak) else float("nan")
        log_metrics(
            {
                "step": step,
                "loss": train_loss,
                "lr": lr,
                "tokens": tokens_seen,
                "time": elapsed,
                "tok_s": tok_s,
                "grad_norm": None if grad_norm is None else float(grad_norm),
            }
        )
        if bar is not None:
            bar.update(1)
            post = f"loss {train_loss:.3f} | {tok_s_ema:,.0f} tok/s"
            if math.isfinite(mfu):
                post += f" | MFU {100 * mfu:.0f}%"
            if math.isfinite(val_bpb):
                post += f" | val_bpb {val_bpb:.3f}"
            bar.set_postfix_str(post, refresh=False)
    signals.restore()
    elapsed = elapsed_before + (time.perf_counter() - loop_start)  # the final evaluation included
    if bar is not None:
        bar.close()
    if metrics_file is not None:
        metrics_file.close()
    if stopping and step == 0:  # stopped before its first step: nothing to save
        raise KeyboardInterrupt
    if stopping:  # a checkpoint is saved: leave the run as a finished one would, less its model
        if rt.is_main:
            plot_losses(metrics_path, out / "loss.png")
            _write_report(out, cfg, None, step, tokens_seen, elapsed, manifest, rt, signals.signum)
        _log(
            rt,
            f"stopped at step {step}; checkpoint saved. Continue with: "
            f"twofiles pretrain --data {cfg.data} --out {cfg.out} --resume",
        )
        raise RunInterrupted(signals.signum or 2, step, str(out))

    model_path = out / "model.safetensors"
    result = PretrainResult(
        out=str(out),
        model_path=str(model_path),
        steps=step,
        tokens=tokens_seen,
        train_seconds=elapsed,
        val_loss=val_loss,
        val_bpb=val_bpb,
        tokens_per_second=tokens_seen / max(elapsed, 1e-9),
        params=n_params,
        achieved_flops=(tok_s_ema or 0) * flops_per_token,
        peak_flops=peak,
    )
    if rt.is_main:
        provenance = {
            "stage": "pretrain",
            "data": str(cfg.data),
            "data_splits": {
                k: {kk: v[kk] for kk in ("tokens", "documents", "bytes") if kk in v}
                for k, v in manifest["splits"].items()
            },
            "steps": step,
            "tokens": tokens_seen,
            "val_bpb": val_bpb,
            "val_loss": val_loss,
            "train_seconds": elapsed,
            "config": cfg.to_dict(),
            "runtime": rt.describe(),
            **cfg.provenance,
        }
        save_model(model_path, raw_model, tokenizer, provenance=provenance)
        plot_losses(metrics_path, out / "loss.png")
        _write_report(out, cfg, result, step, tokens_seen, elapsed, manifest, rt, None)
        _log(rt, f"val loss {val_loss:.4f} nats/token, {val_bpb:.4f} bits/byte; saved {model_path}")
    return result


def _write_report(
    out: Path,
    cfg: PretrainConfig,
    res: PretrainResult | None,
    step: int,
    tokens: int,
    elapsed: float,
    manifest: dict[str, Any],
    rt: rt_mod.Runtime,
    signum: int | None,
) -> None:
    """run.json (what only this run knows) and report.md, through the one report writer that
    `twofiles report` uses too."""
    import signal

    from twofiles.eval.report import write_report, write_run_info

    if res is not None:
        numbers: dict[str, Any] = {
            k: getattr(res, k)
            for k in ("val_bpb", "val_loss", "train_seconds", "steps", "tokens")
            + ("tokens_per_second", "params", "achieved_flops", "peak_flops")
        }
        numbers["mfu"] = res.mfu
        status = f"Finished: {step} steps."
    else:
        numbers = {"train_seconds": elapsed, "steps": step, "tokens": tokens}
        status = (
            f"Stopped by {signal.Signals(signum or 2).name} at step {step}, a checkpoint saved: "
            f"`twofiles pretrain --data {cfg.data} --out {cfg.out} --resume` continues it."
        )
    budget = (
        f"a {cfg.time_budget_s:g} s time budget"
        if cfg.time_budget_s > 0
        else f"{cfg.max_steps} steps"
    )
    splits = manifest.get("splits", {})
    write_run_info(
        out,
        {
            "kind": "pretrain",
            "title": f"Pretrain report: {out.name}",
            "description": f"A base model pretrained on `{cfg.data}` for {budget}. {status}",
            "numbers": numbers,
            "hardware": rt.describe(),
            "data": "; ".join(
                f"{k}: {v.get('documents', '?')} documents, {v.get('tokens', 0):,} tokens, "
                f"{v.get('bytes', 0):,} bytes"
                for k, v in splits.items()
            ),
        },
    )
    write_report(out)
