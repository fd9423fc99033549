"""Training a sparse autoencoder on one hook point's activations, through the one training loop.

Reads like a recipe: config -> runtime -> model -> text windows -> activation scale -> SAE ->
optimizer -> objective -> the loop -> the SAE file, metrics.json and the report.

The two methods:
  topk  Gao et al. 2024, "Scaling and evaluating sparse autoencoders": the k largest
        pre-activations fire; the loss is the reconstruction MSE plus the AuxK loss.
  relu  Bricken et al. 2023, "Towards Monosemanticity", with the April 2024 update's
        hyperparameters: ReLU features, MSE + l1 * sum(f) with unit-norm decoder rows (the same
        objective as the update's l1 * sum(f_i |W_dec,i|) at unit norm, and it keeps sae.model's
        contract that decoder rows are unit vectors).
Both keep decoder rows unit-norm: the gradient's component along each row is removed before the
optimizer sees it, and the rows are renormalised before every step (Gao et al., SAELens).

Dead features: a feature is dead when it fired on none of the last `dead_tokens` training tokens
(a counter per feature, in the checkpoint). Both methods revive them with the AuxK loss (Gao et
al.): the top `aux_k` dead pre-activations reconstruct the main reconstruction's error, weighted
by `aux_coefficient` (1/32) after normalising each term by its target's variance as Gao et al.'s
code does. For ReLU this stands in for Anthropic's ghost grads / resampling: the same idea (give
dead features a gradient toward what the live ones miss) with one code path.

Activations are normalised by a fixed scalar so their mean squared norm is d_in (SAELens), estimated
once at the start and kept in the config; the saved SAE has it folded into its weights, so it
reads raw activations (`fold_scale`). What it leaves to others: activations and the buffer
(sae/activations.py), the numbers (sae/metrics.py), the run (train/loop.py), the file
(sae/model.py).
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from twofiles import runtime as rt_mod
from twofiles.errors import BadInputError, TwofilesError
from twofiles.optim import OptimConfig
from twofiles.sae import activations as acts_mod
from twofiles.sae.metrics import explained_variance, spliced_losses
from twofiles.sae.model import SAEConfig, SparseAutoencoder, save_sae
from twofiles.train import loop
from twofiles.train.runctl import RunInterrupted, StopSignals

HOOKS = ("resid_post", "resid_pre", "resid_mid", "attn_out", "mlp_out")
BUILTIN = "builtin"


def _default_optim() -> OptimConfig:
    # Adam (beta2 0.999, no weight decay) as Gao et al. and SAELens train SAEs; a short warm-up
    # and a WSD decay over the last fifth, which helps the few hundred steps a CPU run reaches.
    return OptimConfig(
        optimizer="adam",
        lr=4e-4,  # Gao et al.: 2e-4 at 16k latents, scaling as 1/sqrt(latents): ~4e-4 at 4.6k
        beta1=0.9,
        beta2=0.999,
        grad_clip=1.0,
        schedule="wsd",
        warmup_steps=10,
        decay_frac=0.2,
    )


@dataclass(kw_only=True)
class SAETrainConfig(loop.RunConfig):
    """`twofiles sae train`'s own fields; run control (out, optim, budget, checkpoints, seed,
    device, resume) is loop.RunConfig's."""

    model: str = ""  # the model spec it loads (a path or an alias such as smollm2)
    layer: int = 0  # the block whose activation is read
    hook: str = "resid_post"  # which activation of the block (HOOKS)
    data: list[str] = field(default_factory=lambda: [BUILTIN])  # builtin, or text files
    out: str = "runs/sae"
    optim: OptimConfig = field(default_factory=_default_optim)
    kind: str = "topk"  # topk or relu
    expansion: int = 8  # features per activation dimension (d_sae = expansion x d_in)
    k: int = 32  # topk: features active per token
    l1_coefficient: float = 5.0  # relu: the L1 weight (Anthropic, April 2024: 5 at this scale)
    tokens: int = 200_000  # training tokens (the schedule's length: tokens / batch_tokens steps)
    batch_tokens: int = 4096  # activations per optimizer step
    context: int = 256  # tokens per window the model reads (BOS first)
    buffer_contexts: int = 64  # windows whose activations are shuffled together
    reuse: int = 1  # times each buffer of activations is served (reshuffled each time)
    forward_batch: int = 8  # windows per forward pass of the model
    eval_tokens: int = 8192  # held-out tokens for the metrics (CE loss included)
    dead_tokens: int = 100_000  # a feature is dead after firing on none of this many tokens
    aux_k: int = 0  # AuxK: dead features used to reconstruct the error (0: d_in // 2)
    aux_coefficient: float = 1 / 32  # AuxK's weight (Gao et al. 2024)
    activation_scale: float = 0.0  # set once at the start of a run (0: not yet estimated)
    max_steps: int = 0  # (derived from tokens)
    checkpoint_seconds: float = 60.0

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SAETrainConfig:
        d = dict(d)
        return cls(optim=OptimConfig(**d.pop("optim", {})), **d)

    def validate(self) -> None:
        """Refuse bad fields before any model is loaded (each named)."""
        if self.kind not in ("topk", "relu"):
            raise BadInputError(f"--kind {self.kind!r}: expected topk or relu")
        if self.hook not in HOOKS:
            raise BadInputError(f"--hook {self.hook!r}: expected one of {', '.join(HOOKS)}")
        positive = {
            "--expansion": self.expansion,
            "--k": self.k,
            "--tokens": self.tokens,
            "--batch-tokens": self.batch_tokens,
            "--buffer-contexts": self.buffer_contexts,
            "--reuse": self.reuse,
            "--eval-tokens": self.eval_tokens,
            "--dead-tokens": self.dead_tokens,
        }
        for flag, value in positive.items():
            if value <= 0:
                raise BadInputError(f"{flag} {value}: must be positive")
        if self.l1_coefficient < 0:
            raise BadInputError(f"--l1 {self.l1_coefficient}: must be >= 0")
        if self.layer < 0:
            raise BadInputError(f"--layer {self.layer}: must be >= 0")
        if not self.data:
            raise BadInputError("--data: give builtin or text files")


class SAETrainer(nn.Module):
    """The SAE as the loop trains it: its loss, and the per-feature count of tokens since each
    feature last fired (a buffer, so checkpoints carry it)."""

    since_fired: torch.Tensor

    def __init__(self, sae: SparseAutoencoder, cfg: SAETrainConfig) -> None:
        super().__init__()
        self.sae = sae
        self.dead_tokens = cfg.dead_tokens
        self.l1 = cfg.l1_coefficient if sae.cfg.kind == "relu" else 0.0
        self.aux_k = cfg.aux_k or max(1, sae.cfg.d_in // 2)
        self.aux_coefficient = cfg.aux_coefficient
        self.register_buffer("since_fired", torch.zeros(sae.cfg.d_sae, dtype=torch.long))
        sae.W_dec.register_hook(self._project)

    def _project(self, grad: torch.Tensor) -> torch.Tensor:
        # a unit-norm row can only turn: drop the part of the gradient that would stretch it
        w = self.sae.W_dec.detach()
        return grad - (grad * w).sum(-1, keepdim=True) * w

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        w = self.sae.W_dec
        w.div_(w.norm(dim=-1, keepdim=True).clamp_min(1e-12))

    def dead(self) -> torch.Tensor:
        return self.since_fired >= self.dead_tokens

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(loss summed over the rows of x [n, d_in], detached numbers for the step's record)."""
        sae = self.sae
        dead = self.dead()  # as of before this batch (Gao et al.)
        pre = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
        if sae.cfg.kind == "topk":
            top = pre.topk(sae.cfg.k, dim=-1)
            f = torch.zeros_like(pre).scatter(-1, top.indices, torch.relu(top.values))
        else:
            f = torch.relu(pre)
        x_hat = f @ sae.W_dec + sae.b_dec
        err = x - x_hat
        mse = err.pow(2).sum()
        loss = mse + self.l1 * f.sum() if self.l1 else mse
        aux = torch.zeros((), device=x.device)
        n_dead = int(dead.sum().item())
        if n_dead and self.aux_coefficient > 0:
            k_aux = min(self.aux_k, n_dead)
            e = err.detach()
            dead_pre = pre.masked_fill(~dead, float("-inf")).topk(k_aux, dim=-1)
            f_aux = torch.zeros_like(pre).scatter(-1, dead_pre.indices, torch.relu(dead_pre.values))
            e_hat = f_aux @ sae.W_dec
            aux = (e - e_hat).pow(2).sum()
            # each term over its target's variance, as Gao et al.'s normalized MSE
            var_x = (x - x.mean(0)).pow(2).sum()
            var_e = (e - e.mean(0)).pow(2).sum().clamp_min(1e-12)
            loss = loss + self.aux_coefficient * aux * (var_x / var_e).detach()
        with torch.no_grad():
            fired = (f > 0).any(0)
            self.since_fired += len(x)
            self.since_fired[fired] = 0
        stats = {
            "mse": mse.detach() / len(x),
            "l0": (f > 0).sum(-1).float().mean().detach(),
            "aux": aux.detach() / len(x),
            "dead": torch.tensor(float(n_dead)),
        }
        return loss, stats


def geometric_median(x: torch.Tensor, iters: int = 20) -> torch.Tensor:
    """The point minimising the summed distance to the rows of x [n, d] (Weiszfeld's iteration):
    b_dec's initial value (Gao et al. 2024, Bricken et al. 2023). Residual streams carry a large
    shared component; with b_dec at zero every token's pre-activations are dominated by it, and
    smollm2's layer-15 training loss jumped between ~180 and ~1,200 from batch to batch."""
    y = x.double().mean(0)
    for _ in range(iters):
        w = 1.0 / (x.double() - y).norm(dim=-1).clamp_min(1e-8)
        y = (w[:, None] * x.double()).sum(0) / w.sum()
    return y.to(x.dtype)


def fold_scale(sae: SparseAutoencoder, scale: float) -> SparseAutoencoder:
    """A copy of `sae` (trained on activations x * scale) that reads raw activations: with
    f' = f / scale, W_enc stays, b_enc and b_dec divide by scale, and W_dec keeps its unit rows;
    decode(f') = decode_trained(f) / scale exactly, and which features fire does not change."""
    out = SparseAutoencoder(SAEConfig(**asdict(sae.cfg)))
    with torch.no_grad():
        out.W_enc.copy_(sae.W_enc)
        out.b_enc.copy_(sae.b_enc / scale)
        w = sae.W_dec / sae.W_dec.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        out.W_dec.copy_(w)
        out.b_dec.copy_(sae.b_dec / scale)
    return out.to(sae.W_enc.device)


@dataclass
class SAETrainResult:
    out: str
    sae_path: str
    steps: int
    tokens: int
    train_seconds: float
    metrics: dict[str, float]
    stopped: bool = False


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def corpus_texts(data: list[str], split: str, seed: int) -> list[str]:
    """The documents of one split ("train" or "val"): builtin is the built-in corpus with its
    held-out plays; files are split as `twofiles data prepare` splits them (one source of truth)."""
    from twofiles.data.corpus import BUILTIN_SHAKESPEARE
    from twofiles.data.prepare import split_documents

    inputs = [BUILTIN_SHAKESPEARE if d == BUILTIN else d for d in data]
    return [p.text for p in split_documents(inputs, seed=seed) if p.split == split]


class SAEObjective(loop.ObjectiveBase):
    """Reconstruction (+ L1, + AuxK) over shuffled activations; held-out MSE, explained variance,
    L0 and dead features at each evaluation, and the CE-loss splice at the end."""

    def __init__(
        self,
        cfg: SAETrainConfig,
        trainer: SAETrainer,
        buffer: acts_mod.ActivationBuffer,
        model: Any,
        eval_windows: np.ndarray,
        eval_raw: torch.Tensor,
        hook_name: str,
        bos_id: int,
    ) -> None:
        self.cfg, self.trainer, self.buffer, self.model = cfg, trainer, buffer, model
        self.eval_windows, self.eval_raw = eval_windows, eval_raw
        self.hook_name, self.bos_id = hook_name, bos_id
        self.stats: dict[str, torch.Tensor] = {}
        self.final_metrics: dict[str, float] = {}

    def next_batch(self) -> torch.Tensor:
        return self.buffer.next(self.cfg.batch_tokens)

    def loss(self, model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
        loss, self.stats = model(batch)
        return loss

    def count(self, batch: torch.Tensor) -> int:
        return len(batch)

    def batch_tokens(self, batch: torch.Tensor) -> int:
        return len(batch)

    def step_metrics(self, batches: list[Any]) -> dict[str, Any]:
        d_sae = self.trainer.sae.cfg.d_sae
        s = {k: float(v.item()) for k, v in self.stats.items()}
        return {
            "mse": s["mse"],
            "l0": s["l0"],
            "aux": s["aux"],
            "dead_fraction": s["dead"] / d_sae,
        }

    def before_step(self, step: int) -> None:
        self.trainer.normalize_decoder()

    @torch.no_grad()
    def evaluate(self, model: nn.Module, final: bool) -> dict[str, float]:
        scale = self.cfg.activation_scale
        sae = fold_scale(self.trainer.sae, scale)  # unit rows, raw activations: what is saved
        x = self.eval_raw
        fired = torch.zeros(sae.cfg.d_sae, dtype=torch.bool, device=x.device)
        x_hat = torch.empty_like(x)
        l0_sum = 0.0
        for i in range(0, len(x), 2048):
            f = sae.encode(x[i : i + 2048])
            x_hat[i : i + 2048] = sae.decode(f)
            fired |= (f > 0).any(0)
            l0_sum += float((f > 0).sum().item())
        n = max(len(x), 1)
        out = {
            "val_mse": float((x - x_hat).pow(2).sum().item()) / n * scale**2,
            "explained_variance": explained_variance(x, x_hat),
            "l0": l0_sum / n,
            "dead_fraction": float(self.trainer.dead().float().mean().item()),
            "never_fired_val": float((~fired).float().mean().item()),
        }
        if final:
            losses = spliced_losses(
                self.model,
                self.eval_windows,
                self.hook_name,
                sae,
                self.bos_id,
                batch=self.cfg.forward_batch,
            )
            out.update(losses.to_dict())
            self.final_metrics = out
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"buffer": self.buffer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.buffer.load_state_dict(state["buffer"])


def train_sae(cfg: SAETrainConfig, loaded: Any | None = None) -> SAETrainResult:
    """Train (or resume) an SAE as configured; `loaded` is the model if the caller has it."""
    cfg.validate()
    rt = rt_mod.setup(cfg.device, "fp32", cfg.threads or None)
    signals = StopSignals(_log)
    try:
        return _train(cfg, rt, signals, loaded)
    finally:
        signals.restore()
        rt_mod.teardown(rt)


def _train(
    cfg: SAETrainConfig, rt: rt_mod.Runtime, signals: StopSignals, loaded: Any | None
) -> SAETrainResult:
    from twofiles.formats.resolve import resolve_model
    from twofiles.train.checkpoint import list_checkpoints

    out = Path(cfg.out)
    t_start = time.perf_counter()
    if not cfg.resume and list_checkpoints(out / "checkpoints"):  # before any costly work
        raise TwofilesError(
            f"{out} already holds checkpoints: pass --resume to continue, or choose another --out"
        )
    # --- model ---
    if loaded is None:
        loaded = resolve_model(cfg.model, device=rt.device)
    model, tokenizer = loaded.model.eval(), loaded.tokenizer
    for p in model.parameters():
        p.requires_grad_(False)
    n_layers, d_in = model.config.n_layers, model.config.dim
    if not 0 <= cfg.layer < n_layers:
        raise BadInputError(f"--layer {cfg.layer}: {cfg.model} has layers 0..{n_layers - 1}")
    if cfg.context > model.config.max_seq_len:
        raise BadInputError(
            f"--context {cfg.context}: longer than the model's context ({model.config.max_seq_len})"
        )
    hook_name = f"blocks.{cfg.layer}.hook_{cfg.hook}"
    bos = tokenizer.bos_id
    # --- data: windows of the train split, and a fixed held-out set ---
    per_window = cfg.context - 1
    train_windows = acts_mod.token_windows(
        tokenizer,
        corpus_texts(cfg.data, "train", cfg.seed),
        cfg.context,
        max_windows=2 * math.ceil(cfg.tokens / per_window) + cfg.buffer_contexts,
    )
    val_texts = corpus_texts(cfg.data, "val", cfg.seed)
    if not val_texts:
        raise BadInputError(f"--data {' '.join(cfg.data)}: no held-out text to measure on")
    eval_windows = acts_mod.token_windows(
        tokenizer, val_texts, cfg.context, max_windows=math.ceil(cfg.eval_tokens / per_window)
    )
    if len(train_windows) == 0 or len(eval_windows) == 0:
        raise BadInputError(
            f"--data {' '.join(cfg.data)}: too little text for one {cfg.context}-token window"
        )
    _log(
        f"data: {len(train_windows):,} training windows of {cfg.context} tokens, "
        f"{len(eval_windows):,} held out; hook {hook_name}"
    )
    eval_raw = acts_mod.collect(model, eval_windows, hook_name, bos, batch=cfg.forward_batch)
    # --- the shuffling buffer of training activations ---
    buffer = acts_mod.ActivationBuffer(
        model,
        train_windows,
        hook_name,
        bos,
        contexts=cfg.buffer_contexts,
        scale=cfg.activation_scale,
        seed=cfg.seed,
        forward_batch=cfg.forward_batch,
        reuse=cfg.reuse,
    )
    # a new run's first buffer (random windows, kept for its first fill) sets the scale and b_dec
    sample: torch.Tensor | None = None
    if cfg.activation_scale <= 0:
        sample = buffer.chunk(0)
        cfg.activation_scale = buffer.scale = acts_mod.activation_scale(sample)
    cfg.max_steps = max(1, math.ceil(cfg.tokens / cfg.batch_tokens))
    spec = loop.run_spec(cfg, "sae")
    loop.open_run(spec, rt)
    # --- the SAE, its optimizer and the objective ---
    torch.manual_seed(cfg.seed)
    sae_cfg = SAEConfig(
        d_in=d_in,
        d_sae=d_in * cfg.expansion,
        kind=cfg.kind,
        k=cfg.k,
        l1_coefficient=cfg.l1_coefficient,
        hook_name=hook_name,
        model_name=cfg.model,
    )
    sae = SparseAutoencoder(sae_cfg)
    sae.init_weights(seed=cfg.seed)
    if sample is not None:  # (a resumed run takes b_dec from its checkpoint)
        with torch.no_grad():
            sae.b_dec.copy_(geometric_median(sample * cfg.activation_scale))
    trainer = SAETrainer(sae, cfg).to(rt.device)
    o = cfg.optim
    opt = torch.optim.Adam(trainer.parameters(), lr=o.lr, betas=(o.beta1, o.beta2))
    for g in opt.param_groups:
        g["initial_lr"] = o.lr
    objective = SAEObjective(cfg, trainer, buffer, model, eval_windows, eval_raw, hook_name, bos)
    _log(
        f"sae: {cfg.kind}, {sae_cfg.d_sae:,} features on {d_in} dims "
        f"({'k ' + str(cfg.k) if cfg.kind == 'topk' else 'l1 ' + str(cfg.l1_coefficient)}), "
        f"activation scale {cfg.activation_scale:.4g}; {cfg.max_steps} steps of "
        f"{cfg.batch_tokens} tokens, shuffled in buffers of {cfg.buffer_contexts} windows "
        f"(~{cfg.buffer_contexts * per_window:,} tokens)"
        + (f", each served {cfg.reuse} times" if cfg.reuse > 1 else "")
    )
    res = loop.run(spec, objective, rt, signals, trainer, trainer, [opt])
    metrics_path = out / "metrics.jsonl"
    _plot(metrics_path, out / "loss.png")
    if res.stopped:
        _log(
            f"stopped at step {res.step}; checkpoint saved. Continue with: "
            f"twofiles sae train {cfg.model} --layer {cfg.layer} --out {cfg.out} --resume"
        )
        raise RunInterrupted(res.signum or 2, res.step, str(out))
    metrics = {
        k: v
        for k, v in res.last_eval.items()
        if k not in ("step", "time", "final", "eval_seconds", "tokens")
    }
    final = fold_scale(trainer.sae, cfg.activation_scale)
    final.cfg.model_id = acts_mod.model_id(model)
    final.cfg.extra = {
        "tokens": res.tokens,
        "steps": res.step,
        "train_seconds": res.elapsed,
        "wall_seconds": time.perf_counter() - t_start,
        "activation_scale": cfg.activation_scale,
        "activation_scale_folded": True,
        "context": cfg.context,
        "data": cfg.data,
        "dead_tokens": cfg.dead_tokens,
        "buffer_tokens": cfg.buffer_contexts * per_window,
        "reuse": cfg.reuse,
        "metrics": metrics,
    }
    sae_path = save_sae(out / "sae.safetensors", final)
    summary = {
        "sae": str(sae_path),
        "model": cfg.model,
        "model_id": final.cfg.model_id,
        "hook_name": hook_name,
        "kind": cfg.kind,
        "d_sae": sae_cfg.d_sae,
        "k": cfg.k if cfg.kind == "topk" else None,
        "l1_coefficient": cfg.l1_coefficient if cfg.kind == "relu" else None,
        "tokens": res.tokens,
        "steps": res.step,
        "train_seconds": res.elapsed,
        "activation_scale": cfg.activation_scale,
        **metrics,
    }
    from twofiles.artifact import atomic_write_bytes

    atomic_write_bytes(out / "metrics.json", json.dumps(summary, indent=2).encode())
    _write_report(out, cfg, summary, rt)
    return SAETrainResult(str(out), str(sae_path), res.step, res.tokens, res.elapsed, metrics)


def _plot(metrics_path: Path, png: Path) -> None:
    import matplotlib

    from twofiles.plots import save_png

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs = [json.loads(ln) for ln in metrics_path.read_text().splitlines() if ln.strip()]
    train = [r for r in recs if "loss" in r]
    evals = [r for r in recs if "explained_variance" in r]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    if train:
        ax1.plot([r["tokens"] for r in train], [r["mse"] for r in train], label="train MSE")
        ax1.set_yscale("log")
        ax1b = ax1.twinx()
        ax1b.plot([r["tokens"] for r in train], [r["l0"] for r in train], color="C2", label="L0")
        ax1b.set_ylabel("L0 (active features per token)")
    ax1.set_xlabel("tokens")
    ax1.set_ylabel("MSE per token (normalised activations)")
    ax1.set_title("sae: reconstruction")
    if evals:
        ax2.plot(
            [r["tokens"] for r in evals], [r["explained_variance"] for r in evals], "o-", color="C1"
        )
    ax2.set_xlabel("tokens")
    ax2.set_ylabel("held-out explained variance")
    ax2.set_title("quality")
    ax2.grid(alpha=0.3)
    save_png(fig, png, dpi=110)


def _write_report(out: Path, cfg: SAETrainConfig, summary: dict[str, Any], rt: Any) -> None:
    from twofiles.eval.report import write_report, write_run_info

    rows = [
        ("tokens trained on", f"{summary['tokens']:,}"),
        ("wall time (s)", f"{summary['train_seconds']:.1f}"),
        ("L0", f"{summary.get('l0', float('nan')):.2f}"),
        ("explained variance", f"{summary.get('explained_variance', float('nan')):.4f}"),
        ("CE-loss recovered", f"{summary.get('ce_loss_recovered', float('nan')):.4f}"),
        (
            "CE loss clean / SAE / zero",
            "{:.4f} / {:.4f} / {:.4f}".format(
                summary.get("ce_loss_clean", float("nan")),
                summary.get("ce_loss_sae", float("nan")),
                summary.get("ce_loss_zero", float("nan")),
            ),
        ),
        ("dead fraction", f"{summary.get('dead_fraction', float('nan')):.4f}"),
        ("never fired on held-out text", f"{summary.get('never_fired_val', float('nan')):.4f}"),
    ]
    table = "\n".join(
        ["| metric | value |", "| --- | ---: |"] + [f"| {a} | {b} |" for a, b in rows]
    )
    write_run_info(
        out,
        {
            "kind": "sae",
            "title": f"SAE report: {out.name}",
            "description": (
                f"A {cfg.kind} sparse autoencoder ({summary['d_sae']:,} features) on "
                f"`{summary['hook_name']}` of `{cfg.model}`, trained on {', '.join(cfg.data)}; "
                f"metrics on {cfg.eval_tokens:,} held-out tokens."
            ),
            "numbers": {},
            "hardware": rt.describe(),
            "sections": [{"title": "Metrics", "markdown": table}],
        },
    )
    write_report(out)


__all__ = [
    "HOOKS",
    "SAETrainConfig",
    "SAETrainResult",
    "SAETrainer",
    "fold_scale",
    "train_sae",
]
