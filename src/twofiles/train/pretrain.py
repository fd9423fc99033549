"""Pretraining: token shards in, a base model (model.safetensors) out.

Reads like a recipe: config -> runtime -> data -> model -> optimizer -> objective -> the loop.
Works in one process or under `torchrun` (the loop wraps the model in DDP from outside).

What it owns: the pretraining objective (next-token loss on token shards, bits per byte on the
validation split, samples, the final evaluation's share of a time budget) and the final artifact +
report. What it leaves to others: the run itself (train/loop.py: budget, checkpoints, resume,
metrics, progress, DDP), the model math (model), optimizers and schedules (optim), batches
(data.shards), bits per byte (eval.bpb), sampling (engine), device choice (runtime).
"""

from __future__ import annotations

import math
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from twofiles import runtime as rt_mod
from twofiles.artifact import save_model
from twofiles.data.prepare import load_manifest
from twofiles.data.shards import BatchLoader, TokenStream
from twofiles.errors import TwofilesError
from twofiles.eval.bpb import evaluate_bpb
from twofiles.model import ModelConfig, Transformer
from twofiles.optim import OptimConfig, build_optimizers
from twofiles.tokenizer import Tokenizer
from twofiles.train import loop
from twofiles.train.plots import plot_losses
from twofiles.train.runctl import RunInterrupted, StopSignals


@dataclass(kw_only=True)
class PretrainConfig(loop.RunConfig):
    """Pretraining's own fields; the run-control fields (out, optim, budget, evaluation and
    checkpoint intervals, seed, device, resume, ...) are loop.RunConfig's."""

    data: str = ""  # prepared data directory (twofiles data prepare)
    out: str = "runs/pretrain"  # (this stage's default run directory)
    model: ModelConfig = field(default_factory=ModelConfig)  # vocab_size is taken from the data
    batch_size: int = 16  # sequences per micro-batch per process
    seq_len: int = 256  # tokens per sequence
    max_steps: int = 200  # (this stage's default)
    eval_interval: int = 50  # (this stage's default)
    eval_tokens: int = 32768  # validation tokens per periodic evaluation (the final one uses all)
    final_eval_tokens: int = 0  # 0: the whole validation split at the end
    sample_interval: int = 0  # steps between printed samples (0: only at the end)
    sample_prompt: str = ""  # prompt for samples ("" = start of a document)
    sample_tokens: int = 64  # tokens per sample
    compile: bool = False  # torch.compile the model

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
    precision: str = "fp32"  # what the steps computed in: 'fp32' or e.g. 'bf16 autocast'
    precision_reason: str = ""  # why (runtime.precision_for's words and figures)


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
    rt = rt_mod.setup(cfg.device, cfg.dtype, cfg.threads or None, purpose="pretrain")
    signals = StopSignals(lambda msg: _log(rt, msg))
    try:
        return _pretrain(cfg, rt, on_eval, signals)
    finally:
        signals.restore()
        rt_mod.teardown(rt)


class PretrainObjective(loop.ObjectiveBase):
    """Next-token prediction on token shards: mean loss per micro-batch (each counts once, as
    every micro-batch holds the same number of tokens), bits per byte on the validation split,
    samples at the sample interval."""

    def __init__(
        self,
        cfg: PretrainConfig,
        rt: rt_mod.Runtime,
        raw_model: Transformer,
        tokenizer: Tokenizer,
        loader: BatchLoader,
        val_stream: TokenStream,
    ) -> None:
        self.cfg, self.rt, self.raw_model, self.tokenizer = cfg, rt, raw_model, tokenizer
        self.loader, self.val_stream = loader, val_stream
        self.token_bytes = torch.from_numpy(tokenizer.token_bytes().astype(np.int64)).to(rt.device)
        self.tokens_per_step = cfg.batch_size * cfg.seq_len * cfg.grad_accum * rt.world_size
        self.final_eval_tokens = min(cfg.final_eval_tokens or len(val_stream), len(val_stream))
        # The budget also pays for the final validation pass, estimated from the measured
        # training speed: an evaluated token costs `eval_cost` of a trained one. A forward pass is
        # about a third of a training step, but Muon's and the optimizer's per-step costs make
        # small models' steps dearer still (tiny preset: ~1/5), so the ratio is measured once the
        # run is warm, and again at doubling intervals: the median of a few short probes resists
        # a busy machine's noise.
        self.eval_cost = 1 / 2.5
        self.probes: list[float] = []

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        x_np, y_np = self.loader.next_batch()
        x = torch.from_numpy(x_np).to(self.rt.device, non_blocking=True)
        y = torch.from_numpy(y_np).to(self.rt.device, non_blocking=True)
        return x, y

    def loss(
        self, model: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor]
    ) -> torch.Tensor:
        with self.rt.autocast():
            return model(*batch)

    def count(self, batch: Any) -> int:
        return 1

    def batch_tokens(self, batch: tuple[torch.Tensor, torch.Tensor]) -> int:
        return batch[0].numel()

    def step_metrics(self, batches: list[Any]) -> dict[str, Any]:
        return {}

    def evaluate(self, model: torch.nn.Module, final: bool) -> dict[str, float]:
        cfg = self.cfg
        limit = (cfg.final_eval_tokens or None) if final else cfg.eval_tokens
        val_loss, val_bpb = evaluate_bpb(
            model,
            self.val_stream,
            self.token_bytes,
            self.rt,
            cfg.seq_len,
            cfg.batch_size * 2,
            limit,
        )
        return {"val_loss": val_loss, "val_bpb": val_bpb}

    def after_eval(
        self, step: int, final: bool, periodic: bool, write: Callable[[str], None]
    ) -> None:
        cfg = self.cfg
        if final or (periodic and cfg.sample_interval and step % cfg.sample_interval == 0):
            text = _sample(
                self.raw_model, self.tokenizer, cfg.sample_prompt, cfg.sample_tokens, cfg.seed
            )
            write(f"--- sample at step {step} ---\n{text}\n---")
            self.raw_model.train()

    def reserve_s(self, per_step: float) -> float:
        return self.final_eval_tokens * self.eval_cost * per_step / self.tokens_per_step

    def probe(self, model: torch.nn.Module, per_step: float) -> None:
        cfg = self.cfg
        n = min(self.final_eval_tokens, 4 * cfg.batch_size * cfg.seq_len)
        if not self.probes and cfg.compile:  # the evaluation's shapes compile once, untimed
            evaluate_bpb(
                model,
                self.val_stream,
                self.token_bytes,
                self.rt,
                cfg.seq_len,
                cfg.batch_size * 2,
                n,
            )
        t_probe = time.perf_counter()
        evaluate_bpb(
            model, self.val_stream, self.token_bytes, self.rt, cfg.seq_len, cfg.batch_size * 2, n
        )
        per_token = (time.perf_counter() - t_probe) / max(n, 1)
        self.probes.append(per_token / (per_step / self.tokens_per_step))
        self.eval_cost = statistics.median(self.probes)

    def state_dict(self) -> dict[str, Any]:
        return {"loader": self.loader.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.loader.load_state_dict(state["loader"])


def _pretrain(
    cfg: PretrainConfig,
    rt: rt_mod.Runtime,
    on_eval: Callable[[dict[str, Any]], None] | None,
    signals: StopSignals,
) -> PretrainResult:
    out = Path(cfg.out)
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

    # --- run directory ---
    spec = loop.run_spec(cfg, "pretrain", cfg.max_steps)
    loop.open_run(spec, rt)

    # --- model ---
    torch.manual_seed(cfg.seed)
    raw_model = Transformer(cfg.model).to(rt.device)
    raw_model.init_weights(seed=cfg.seed)
    n_params = sum(p.numel() for p in raw_model.parameters())
    model: torch.nn.Module = raw_model
    if cfg.compile:
        ok, why = rt_mod.can_compile(rt.device)
        if ok:
            model = torch.compile(model)  # type: ignore[assignment]
        _log(rt, f"compile: {'yes' if ok else 'no'} ({why})")
    model = loop.wrap_ddp(model, rt)

    # --- optimizer ---
    optimizers = build_optimizers(raw_model, cfg.optim, rt.autocast_dtype)
    objective = PretrainObjective(cfg, rt, raw_model, tokenizer, loader, val_stream)

    peak = rt_mod.peak_flops(rt.device, dtype=rt.autocast_dtype) * (
        rt.world_size if rt.device.type == "cuda" else 1
    )
    flops_per_token = cfg.model.flops_per_token(cfg.seq_len)
    _log(
        rt,
        f"model: {n_params:,} parameters ({cfg.model.num_params(embeddings=False):,} in matmuls), {cfg.model.n_layers} layers, dim {cfg.model.dim}",
    )
    _log(
        rt,
        f"data: {len(train_stream):,} train tokens, {len(val_stream):,} val tokens; {objective.tokens_per_step:,} tokens/step",
    )
    _log(rt, "runtime: " + rt.describe() + " (" + "; ".join(rt.reasons) + ")")

    # --- the loop ---
    res = loop.run(
        spec,
        objective,
        rt,
        signals,
        model,
        raw_model,
        optimizers,
        on_eval=on_eval,
        flops_per_token=flops_per_token,
        peak_flops=peak,
    )
    step, tokens_seen, elapsed = res.step, res.tokens, res.elapsed
    metrics_path = out / "metrics.jsonl"
    if res.stopped:  # a checkpoint is saved: leave the run as a finished one would, less its model
        if rt.is_main:
            plot_losses(metrics_path, out / "loss.png")
            _write_report(out, cfg, None, step, tokens_seen, elapsed, manifest, rt, res.signum)
        _log(
            rt,
            f"stopped at step {step}; checkpoint saved. Continue with: "
            f"twofiles pretrain --data {cfg.data} --out {cfg.out} --resume",
        )
        raise RunInterrupted(res.signum or 2, step, str(out))

    val_loss = float(res.last_eval.get("val_loss", float("nan")))
    val_bpb = float(res.last_eval.get("val_bpb", float("nan")))
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
        achieved_flops=res.tokens_per_second * flops_per_token,
        peak_flops=peak,
        precision=rt.precision,
        precision_reason=rt.precision_reason,
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
            "precision": rt.precision_reason,
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
            "hardware": f"{rt.describe()}; {rt.precision_reason}",
            "precision": {"dtype": rt.precision, "reason": rt.precision_reason},
            "data": "; ".join(
                f"{k}: {v.get('documents', '?')} documents, {v.get('tokens', 0):,} tokens, "
                f"{v.get('bytes', 0):,} bytes"
                for k, v in splits.items()
            ),
        },
    )
    write_report(out)
