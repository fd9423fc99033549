"""The reward model: a scalar head on a transformer, trained on preference pairs.

Stage 3's scorer: where SFT imitates replies, a reward model learns which of two replies is
better. The head (scoring.RewardModel) reads the last token of prompt + reply; the loss is
Bradley–Terry's -log σ(r_chosen - r_rejected), the mean over pairs (Ouyang et al. 2022, as TRL's
RewardTrainer computes it), with optional reward centering: + C · mean((r_chosen + r_rejected)²)
(Eisenstein et al. 2023, TRL's `center_rewards_coefficient`), which keeps the rewards near zero
so that scores of different prompts compare. Recipe: config -> runtime -> model + head (LoRA or
full; the head always trained) -> chat format -> pairs (render) -> objective -> loop.run ->
held-out pair accuracy before and after -> reward.safetensors + plot + report.

What it owns: the objective (chosen and rejected rows of a batch in one forward of 2B rows), the
loss and its metrics (loss, accuracy, margin, rewards/chosen, rewards/rejected), the pairs'
resumable order, the run's files. What it leaves to others: the head and the reward file
(scoring.py), pairs and rendering (data/preferences.py, data/builtin_pairs.py), LoRA (lora.py),
the loop (train/loop.py).

A run is one process (no DDP: preference sets here are small).
"""

from __future__ import annotations

import math
import os
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from twofiles import runtime as rt_mod
from twofiles.errors import BadInputError, TwofilesError
from twofiles.lora import apply_lora, merge_lora, trainable_parameters
from twofiles.optim import OptimConfig, build_optimizers
from twofiles.scoring import RewardModel, pad_rows, save_reward_model
from twofiles.train import loop
from twofiles.train.checkpoint import list_checkpoints
from twofiles.train.finetune import FinetuneConfig, base_spec, single_process_run, stopped
from twofiles.train.runctl import StopSignals
from twofiles.train.sft import default_optim, peak_memory_mb

if TYPE_CHECKING:
    from twofiles.chat import ChatFormat
    from twofiles.data.preferences import PreferencePair, RenderedPair, RenderReport


@dataclass(kw_only=True)
class RewardConfig(FinetuneConfig):
    """The reward model's own fields; the model and LoRA fields are FinetuneConfig's, the
    run-control fields loop.RunConfig's."""

    data: str = "builtin"  # "builtin" (data/builtin_pairs.py) or a preference JSONL (TRL's forms)
    val_data: str = ""  # held-out JSONL; "" = the built-in val split, or every 20th pair of data
    max_val: int = 0  # held-out pairs scored, at most (0: all)
    out: str = "runs/reward"  # (this stage's default run directory)
    optim: OptimConfig = field(default_factory=default_optim)  # (this stage's default)
    batch_size: int = 8  # pairs per micro-batch (2x rows: chosen and rejected)
    max_len: int = 512  # tokens of prompt + reply (capped at the model's context)
    epochs: float = 1.0  # passes over the training pairs (when max_steps is 0)
    center_rewards: float = 0.0  # C of + C * mean((r_chosen + r_rejected)^2) (0: off)
    pairs_seed: int = 0  # seed of the built-in pairs


@dataclass
class RewardResult:
    out: str
    model_path: str  # reward.safetensors
    steps: int
    train_seconds: float
    pairs: int  # training pairs (after skips)
    val_pairs: int
    skipped: dict[str, int]  # reason -> training + held-out pairs left out
    truncated: int  # pairs kept with a reply cut to fit max_len
    max_len: int  # tokens of prompt + reply, as capped by the model's context
    before: dict[str, float]  # held-out accuracy / loss / margin before training
    after: dict[str, float]  # and after
    trainable_params: int
    params: int
    peak_memory_mb: float

    def summary(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------- loss


def bradley_terry(
    r_chosen: torch.Tensor, r_rejected: torch.Tensor, center: float = 0.0
) -> torch.Tensor:
    """Per-pair loss [B]: -log σ(r_c - r_r) + center · (r_c + r_r)². Its mean is TRL's
    RewardTrainer loss (centering included)."""
    loss = -F.logsigmoid(r_chosen - r_rejected)
    if center:
        loss = loss + center * (r_chosen + r_rejected) ** 2
    return loss


def pair_rows(
    pairs: Sequence[RenderedPair], pad_id: int, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids [2B, T], lengths [2B]): the B chosen rows, then the B rejected rows (TRL's order)."""
    seqs = [p.prompt_ids + p.chosen_ids for p in pairs]
    seqs += [p.prompt_ids + p.rejected_ids for p in pairs]
    return pad_rows(seqs, pad_id, device)


def pair_rewards(
    model: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor], rt: rt_mod.Runtime
) -> tuple[torch.Tensor, torch.Tensor]:
    """(r_chosen [B], r_rejected [B]) in one forward of the 2B rows."""
    ids, lengths = batch
    with rt.autocast():
        r = model(ids, lengths)
    return r.float().chunk(2)


@torch.no_grad()
def evaluate_pairs(
    model: torch.nn.Module,
    pairs: Sequence[RenderedPair],
    rt: rt_mod.Runtime,
    batch_size: int,
    pad_id: int,
) -> dict[str, float]:
    """Held-out pair accuracy (r_c > r_r; a tie counts as wrong), mean Bradley–Terry loss (no
    centering), mean margin and rewards."""
    was_training = model.training
    model.eval()
    rc_all, rr_all = [], []
    for i in range(0, len(pairs), batch_size):
        rc, rr = pair_rewards(model, pair_rows(pairs[i : i + batch_size], pad_id, rt.device), rt)
        rc_all.append(rc)
        rr_all.append(rr)
    model.train(was_training)
    rc, rr = torch.cat(rc_all), torch.cat(rr_all)
    return {
        "val_loss": float(bradley_terry(rc, rr).mean()),
        "val_accuracy": float((rc > rr).float().mean()),
        "val_margin": float((rc - rr).mean()),
        "val_rewards/chosen": float(rc.mean()),
        "val_rewards/rejected": float(rr.mean()),
    }


# ----------------------------------------------------------------------------------------- data


class PairLoader:
    """Micro-batches of pairs in a seeded order per epoch; its position resumes exactly."""

    def __init__(self, pairs: list[RenderedPair], batch_size: int, seed: int) -> None:
        self.pairs, self.batch_size, self.seed = pairs, batch_size, seed
        self.epoch, self.pos = 0, 0
        self._order = self._shuffled()

    def _shuffled(self) -> list[int]:
        order = list(range(len(self.pairs)))
        random.Random(f"{self.seed}/{self.epoch}").shuffle(order)
        return order

    def next_pairs(self) -> list[RenderedPair]:
        out: list[RenderedPair] = []
        while len(out) < self.batch_size:
            if self.pos >= len(self._order):
                self.epoch, self.pos = self.epoch + 1, 0
                self._order = self._shuffled()
            take = self._order[self.pos : self.pos + self.batch_size - len(out)]
            out += [self.pairs[i] for i in take]
            self.pos += len(take)
        return out

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.pos = state["epoch"], state["pos"]
        self._order = self._shuffled()


def load_pairs(
    cfg: RewardConfig,
) -> tuple[list[PreferencePair], list[PreferencePair], dict[str, Any]]:
    """(train, held-out) pairs and their provenance."""
    from twofiles.data.preferences import read_preferences

    if cfg.data == "builtin":
        from twofiles.data import builtin_pairs

        train = builtin_pairs.builtin_pairs("train", cfg.pairs_seed)
        val = (
            read_preferences(cfg.val_data)
            if cfg.val_data
            else builtin_pairs.builtin_pairs("val", cfg.pairs_seed)
        )
        return train, val, builtin_pairs.provenance(cfg.pairs_seed)
    pairs = read_preferences(cfg.data)
    if cfg.val_data:
        train, val = pairs, read_preferences(cfg.val_data)
    else:  # every 20th pair held out
        train = [p for i, p in enumerate(pairs) if i % 20]
        val = pairs[::20]
    if not train or not val:
        raise BadInputError("need at least 2 pairs (training and held-out)", path=cfg.data)
    return (
        train,
        val,
        {
            "data": os.path.abspath(cfg.data),
            "val_data": os.path.abspath(cfg.val_data) if cfg.val_data else "every 20th",
        },
    )


def pairs_form(pairs: Sequence[PreferencePair], where: str) -> str:
    """ "chat" when every pair is conversational, "plain" when none is; a mix is refused (a reward
    model renders every reply one way)."""
    chat = {p.conversational for p in pairs}
    if len(chat) > 1:
        raise BadInputError(
            "pairs mix plain text and conversations: a reward model scores one form", path=where
        )
    return "chat" if chat == {True} else "plain"


# ----------------------------------------------------------------------------------------- loop


class RewardObjective(loop.ObjectiveBase):
    """Bradley–Terry on pairs: a micro-batch's loss is its sum over pairs, counted by pairs."""

    def __init__(
        self,
        rt: rt_mod.Runtime,
        loader: PairLoader,
        val: list[RenderedPair],
        batch_size: int,
        pad_id: int,
        center: float,
    ) -> None:
        self.rt, self.loader, self.val = rt, loader, val
        self.batch_size, self.pad_id, self.center = batch_size, pad_id, center
        self.pairs_seen = 0
        self._stats: list[torch.Tensor] = []  # [r_c, r_r] per micro-batch of the step

    def next_batch(self) -> Any:
        return pair_rows(self.loader.next_pairs(), self.pad_id, self.rt.device)

    def loss(self, model: torch.nn.Module, batch: Any) -> torch.Tensor:
        rc, rr = pair_rewards(model, batch, self.rt)
        self._stats.append(torch.stack([rc.detach(), rr.detach()]))
        return bradley_terry(rc, rr, self.center).sum()

    def count(self, batch: Any) -> int:
        return int(batch[0].shape[0]) // 2

    def batch_tokens(self, batch: Any) -> int:
        return int(batch[1].sum())

    def step_metrics(self, batches: list[Any]) -> dict[str, Any]:
        rc, rr = torch.cat(self._stats, dim=1).tolist()  # one host sync per step
        self._stats.clear()
        self.pairs_seen += len(rc)
        n = len(rc)
        return {
            "accuracy": sum(c > r for c, r in zip(rc, rr)) / n,
            "margin": sum(c - r for c, r in zip(rc, rr)) / n,
            "rewards/chosen": sum(rc) / n,
            "rewards/rejected": sum(rr) / n,
            "pairs": self.pairs_seen,
            "epoch": self.loader.epoch,
        }

    def evaluate(self, model: torch.nn.Module, final: bool) -> dict[str, float]:
        return evaluate_pairs(model, self.val, self.rt, self.batch_size, self.pad_id)

    def state_dict(self) -> dict[str, Any]:
        return {"loader": self.loader.state_dict(), "pairs_seen": self.pairs_seen}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.loader.load_state_dict(state["loader"])
        self.pairs_seen = state["pairs_seen"]


def train_reward(cfg: RewardConfig) -> RewardResult:
    """Run (or resume) reward-model training as configured."""
    with single_process_run(cfg, "reward", _log) as (rt, signals):
        return _train(cfg, rt, signals)


def _render(
    fmt: ChatFormat, pairs: list[PreferencePair], max_len: int, what: str
) -> tuple[list[RenderedPair], RenderReport]:
    from twofiles.data.preferences import render_pairs

    rendered, report = render_pairs(pairs, fmt, max_len=max_len)
    if not rendered:
        skipped = ", ".join(f"{k} {v}" for k, v in report.skipped.items()) or "none"
        raise BadInputError(f"no usable {what} pair (skipped: {skipped})")
    return rendered, report


def _train(cfg: RewardConfig, rt: rt_mod.Runtime, signals: StopSignals) -> RewardResult:
    from twofiles.chat import ChatFormat
    from twofiles.formats.resolve import resolve_model

    out = Path(cfg.out)
    ckpt_dir = out / "checkpoints"
    if cfg.resume and not list_checkpoints(ckpt_dir):  # before the model load, not after
        raise TwofilesError(f"--resume: no checkpoint in {ckpt_dir}")
    if cfg.center_rewards < 0:
        raise BadInputError(f"--center-rewards {cfg.center_rewards}: must be >= 0")

    # --- data first: a bad file fails before the model loads ---
    train_pairs, val_pairs, data_prov = load_pairs(cfg)
    if cfg.max_val:
        val_pairs = val_pairs[: cfg.max_val]
    form = pairs_form(train_pairs + val_pairs, cfg.data)

    # --- model, head and chat format ---
    t0 = time.perf_counter()
    loaded = resolve_model(cfg.model, device="cpu", cap_context=False)
    fmt = ChatFormat.for_model(loaded)
    tokenizer, backbone = loaded.tokenizer, loaded.model
    max_len = min(cfg.max_len, backbone.config.max_seq_len)
    reward_model = RewardModel(backbone, seed=cfg.seed)
    if cfg.lora is not None:
        apply_lora(backbone, cfg.lora, seed=cfg.seed)
    else:
        for p in backbone.parameters():
            p.requires_grad_(True)
        if not backbone.config.tie_embeddings:  # the head replaces lm_head: it gets no gradient
            backbone.lm_head.weight.requires_grad_(False)
    reward_model.score.weight.requires_grad_(True)
    reward_model.train().to(rt.device)
    n_params = sum(p.numel() for p in reward_model.parameters())
    n_trainable = trainable_parameters(reward_model)
    ckpt_module: torch.nn.Module = reward_model
    if cfg.lora is not None:  # a checkpoint holds the adapters and the head
        ckpt_module = torch.nn.ParameterDict(
            {n.replace(".", "__"): p for n, p in reward_model.named_parameters() if p.requires_grad}
        )
    pad_id = tokenizer.special_ids.get("<|pad|>", tokenizer.bos_id)
    mode = f"LoRA r={cfg.lora_rank} + head" if cfg.lora_rank else "every weight + head"
    _log(
        f"reward: {cfg.model} ({n_params:,} parameters, {n_trainable:,} trained: {mode}), "
        f"{'built-in' if fmt.builtin else 'its own'} chat template; loaded in {time.perf_counter() - t0:.1f}s"
    )

    train, train_report = _render(fmt, train_pairs, max_len, "training")
    val, val_report = _render(fmt, val_pairs, max_len, "held-out")
    skipped = dict(train_report.skipped + val_report.skipped)
    _log(
        f"data: {len(train)} train / {len(val)} held-out pairs ({form}); skipped: "
        + (", ".join(f"{k} {v}" for k, v in sorted(skipped.items())) or "none")
        + f"; {train_report.truncated + val_report.truncated} cut to {max_len} tokens"
    )

    # --- optimizer, objective, the loop ---
    optimizers = build_optimizers(reward_model, cfg.optim)
    loader = PairLoader(train, cfg.batch_size, cfg.seed)
    objective = RewardObjective(rt, loader, val, cfg.batch_size, pad_id, cfg.center_rewards)
    pairs_per_step = cfg.batch_size * cfg.grad_accum
    steps = cfg.max_steps or max(1, math.ceil(cfg.epochs * len(train) / pairs_per_step))
    spec = loop.run_spec(cfg, "reward", steps)
    loop.open_run(spec, rt)
    before: dict[str, Any] = {}

    def measure_before(log_metrics: Callable[[dict[str, Any]], None]) -> None:
        before.update(objective.evaluate(reward_model, False))
        log_metrics({"step": 0, **before, "time": 0.0})
        _log(
            f"before: held-out accuracy {before['val_accuracy']:.1%}, loss {before['val_loss']:.4f}"
        )

    res = loop.run(
        spec,
        objective,
        rt,
        signals,
        reward_model,
        ckpt_module,
        optimizers,
        on_start=measure_before,
        on_resume=lambda state: before.update(state["before"]),
        extra_state=lambda: {"before": dict(before)},
    )
    metrics_path = out / "metrics.jsonl"
    if res.stopped:  # a checkpoint is saved; the finished run's files come with the resumed run
        plot_reward(metrics_path, out / "loss.png")
        stopped(cfg, "reward", res.step, res.signum, _log)
    after = {k: float(v) for k, v in res.last_eval.items() if k.startswith("val_")}
    _log(f"after: held-out accuracy {after['val_accuracy']:.1%}, loss {after['val_loss']:.4f}")

    # --- the reward model ---
    if cfg.lora is not None:
        merge_lora(backbone)
    provenance = {
        "stage": "reward",
        "base": base_spec(cfg.model),
        "base_provenance": loaded.provenance,
        **data_prov,
        "form": form,
        "chat_template": "built-in" if fmt.builtin else "the base model's",
        "steps": res.step,
        "pairs": len(train),
        "before": before,
        "after": after,
        "config": cfg.to_dict(),
        "runtime": rt.describe(),
        **cfg.provenance,
    }
    model_path = save_reward_model(
        out / "reward.safetensors",
        reward_model,
        tokenizer,
        form="chat" if form == "chat" else "plain",
        chat_template=fmt.template if form == "chat" else loaded.chat_template,
        provenance=provenance,
    )
    result = RewardResult(
        out=str(out),
        model_path=str(model_path),
        steps=res.step,
        train_seconds=res.elapsed,
        pairs=len(train),
        val_pairs=len(val),
        skipped=skipped,
        truncated=train_report.truncated + val_report.truncated,
        max_len=max_len,
        before={k: float(v) for k, v in before.items()},
        after=after,
        trainable_params=n_trainable,
        params=n_params,
        peak_memory_mb=peak_memory_mb(rt.device),
    )
    plot_reward(metrics_path, out / "loss.png")
    write_report(out, cfg, result)
    _log(f"saved {model_path}")
    return result


# --------------------------------------------------------------------------------------- report


def plot_reward(metrics_path: Path, png_path: Path) -> Path | None:
    """Training loss and accuracy per step, held-out loss and accuracy at each evaluation."""
    import json

    if not metrics_path.is_file():
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from twofiles.plots import save_png

    recs = [json.loads(ln) for ln in metrics_path.read_text().splitlines() if ln.strip()]
    train = [r for r in recs if "loss" in r]
    evals = [r for r in recs if "val_loss" in r]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for ax, key, label in ((ax1, "loss", "Bradley–Terry loss"), (ax2, "accuracy", "pair accuracy")):
        if train:
            ax.plot([r["step"] for r in train], [r[key] for r in train], alpha=0.5, label="train")
        if evals:
            ax.plot(
                [r["step"] for r in evals], [r[f"val_{key}"] for r in evals], "o-", label="held-out"
            )
        ax.set_xlabel("step")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    return save_png(fig, png_path)


def write_report(out: Path, cfg: RewardConfig, res: RewardResult) -> Path:
    """run.json (what only this run knows) and report.md (the one report card, eval/report.py)."""
    from twofiles.eval.report import write_report as write_report_md
    from twofiles.eval.report import write_run_info

    mode = f"LoRA r={cfg.lora_rank}, alpha={cfg.lora_alpha:g}" if cfg.lora_rank else "every weight"
    rows = ["| held-out pairs | before | after |", "| --- | ---: | ---: |"]
    for key, label, pct in (
        ("val_accuracy", "accuracy", True),
        ("val_loss", "Bradley–Terry loss", False),
        ("val_margin", "mean margin", False),
    ):
        b, a = res.before.get(key, float("nan")), res.after.get(key, float("nan"))
        rows.append(
            f"| {label} | {b:.1%} | {a:.1%} |" if pct else f"| {label} | {b:.4f} | {a:.4f} |"
        )
    write_run_info(
        out,
        {
            "kind": "reward",
            "title": "Reward model report",
            "description": f"A scalar head on `{cfg.model}`, trained on `{cfg.data}` ({mode} + the "
            f"head; Bradley–Terry loss{f', reward centering {cfg.center_rewards:g}' if cfg.center_rewards else ''}).",
            "numbers": {
                "held-out pair accuracy": f"{res.before.get('val_accuracy', float('nan')):.1%} -> "
                f"{res.after.get('val_accuracy', float('nan')):.1%}",
                "held-out Bradley–Terry loss": f"{res.before.get('val_loss', float('nan')):.4f} -> "
                f"{res.after.get('val_loss', float('nan')):.4f}",
                "train_seconds": res.train_seconds,
                "steps": res.steps,
                "pairs": res.pairs,
                "val_pairs": res.val_pairs,
                "trainable_params": res.trainable_params,
                "params": res.params,
                "peak_memory_mb": res.peak_memory_mb,
                "model_path": f"`{res.model_path}`",
            },
            "data": f"{res.pairs} train / {res.val_pairs} held-out pairs; skipped: "
            + (", ".join(f"{k} {v}" for k, v in sorted(res.skipped.items())) or "none")
            + f"; {res.truncated} cut to {res.max_len} tokens",
            "sections": [{"title": "Held-out pairs", "markdown": "\n".join(rows)}],
        },
    )
    return write_report_md(out)


__all__ = [
    "PairLoader",
    "RewardConfig",
    "RewardObjective",
    "RewardResult",
    "bradley_terry",
    "evaluate_pairs",
    "load_pairs",
    "pair_rewards",
    "pair_rows",
    "train_reward",
]
