"""RL against a verifiable reward: the model samples, a program checks, the model moves toward what
was checked right.

Stage 4 of the story ("let it improve itself against a reward"). Before each optimizer step the
objective samples P prompts x G rollouts in one batched decode per round (rollouts.py: the
calculator may be called inside a rollout; the reward is the verifier's verdict on the final
answer, 1 or 0), and trains on them:

    advantage   A_i = r_i - mean(r of i's group)                 one number per rollout
    ratio       rho_t = exp(logp_t - logp_old_t)                 per model token
    loss        sum over the step's model tokens of -min(rho_t A, clip(rho_t, 1-eps, 1+eps) A)
                (+ kl_coef * k3_t), divided by the number of those tokens

Tool results and template text inside a rollout (mask 0) are neither trained nor counted.

How it differs from its neighbours, exactly:
- PPO (Schulman et al. 2017): no value model and no GAE: the baseline is the group's mean reward,
  and every token of a rollout gets the same advantage (no per-token advantage); no KL penalty by
  default. The clipped ratio is PPO's, and only matters when `ppo_epochs` > 1 reuses a batch.
- GRPO (DeepSeekMath, arXiv:2402.03300): the advantage is not divided by the group's standard
  deviation, and the loss is a mean over all the step's tokens, not a mean per sequence then over
  sequences; both as Dr. GRPO (arXiv:2503.20783) argues: dividing by the std up-weights groups
  that are nearly all right or all wrong (too easy or too hard prompts), and a per-sequence mean
  gives each token of a short reply more weight than one of a long reply, which biases the length
  of wrong replies upward. Token-level normalisation is DAPO's (arXiv:2503.14476). KL to the
  reference is off by default (`kl_coef` 0), as DAPO and Dr. GRPO run it; when on, it is the k3
  estimator exp(ref - logp) - (ref - logp) - 1 per token, in the loss, not in the reward.
- REINFORCE (Williams 1992): with `ppo_epochs` 1 the ratio is exactly 1 and the gradient is
  REINFORCE's, with the group mean as baseline (RLOO-like, though the mean includes the rollout
  itself); with `ppo_epochs` > 1 the batch is reused for that many optimizer steps and the ratio
  is clipped, which REINFORCE has no need of.

`reward = "random"` is the control experiment: a seeded coin per rollout instead of the verifier,
so the same updates move the model without information about the task. What rises with the
verifier and not with the coin is what the reward taught.

What it owns: RLConfig, the objective, the run (LoRA adapters or every weight), held-out pass@1
(greedy) before, at `eval_interval` and after, metrics.jsonl, rl.png, report.md. What it leaves
to others: the tasks and the sampler (rollouts.py), the loop (train/loop.py), LoRA (lora.py).
A run is one process (no DDP).
"""

from __future__ import annotations

import copy
import hashlib
import json
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
from twofiles.lora import (
    adapters_disabled,
    apply_lora,
    trainable_parameters,
)
from twofiles.optim import OptimConfig, build_optimizers
from twofiles.rollouts import Rollout, VerifiableTask, load_tasks, sample_rollouts, shuffled
from twofiles.train import loop
from twofiles.train.checkpoint import list_checkpoints
from twofiles.train.finetune import (
    FinetuneConfig,
    base_spec,
    save_finetuned,
    single_process_run,
    stopped,
)
from twofiles.train.runctl import StopSignals

if TYPE_CHECKING:
    from twofiles.chat import ChatFormat
    from twofiles.model import Transformer

REWARDS = ("verifier", "random")


def default_optim() -> OptimConfig:
    # AdamW at a finetuning LR, constant after a short warm-up: an RL run's length is its time
    # budget, and its signal is noisy, so no decay phase to aim for.
    return OptimConfig(
        optimizer="adamw",
        lr=2e-4,
        embed_lr=None,
        weight_decay=0.0,
        schedule="constant",
        warmup_steps=2,
        grad_clip=1.0,
    )


@dataclass(kw_only=True)
class RLConfig(FinetuneConfig):
    """RL's own fields; the model and LoRA fields are FinetuneConfig's, the
    run-control fields loop.RunConfig's."""

    tasks: str = "arithmetic"  # --tasks names (rollouts.load_tasks), comma-separated
    out: str = "runs/rl"  # (this stage's default run directory)
    optim: OptimConfig = field(default_factory=default_optim)  # (this stage's default)
    max_steps: int = 20  # (this stage's default) optimizer steps unless time_budget_s is set
    grad_accum: int = 4  # (this stage's default) micro-batches the step's rollouts are split into
    merge: bool = False  # LoRA: merge the adapters and write model.safetensors
    prompts: int = 8  # P: prompts sampled per rollout batch
    group: int = 8  # G: rollouts per prompt (the group whose mean is the baseline)
    max_tokens: int = 48  # tokens per reply (per round)
    max_rounds: int = 3  # replies per rollout (tool call, result, answer)
    temperature: float = 1.0  # sampling temperature of the rollouts
    reward: str = "verifier"  # "verifier", or "random": a seeded coin (the control experiment)
    ppo_epochs: int = 1  # optimizer steps per rollout batch (> 1: reuse it with a clipped ratio)
    clip_eps: float = 0.2  # the ratio is clipped to [1 - clip_eps, 1 + clip_eps]
    kl_coef: float = 0.0  # weight of the k3 KL to the reference in the loss (0: off)
    eval_tasks: int = 100  # held-out tasks scored (greedy pass@1) before, at intervals, after
    max_rows: int = 64  # rows the decoder runs at once
    compare: str = ""  # another RL run directory drawn on rl.png (the control)

    def validate(self) -> None:
        def bad(name: str, why: str) -> BadInputError:
            return BadInputError(f"{name}={getattr(self, name)!r}: {why}")

        if self.reward not in REWARDS:
            raise bad("reward", f"choose from {', '.join(REWARDS)}")
        for name in ("prompts", "group", "max_tokens", "max_rounds", "ppo_epochs", "max_rows"):
            if getattr(self, name) < 1:
                raise bad(name, "must be >= 1")
        if self.group < 2:
            raise bad("group", "a group baseline needs at least 2 rollouts per prompt")
        if not 0 < self.clip_eps < 1:
            raise bad("clip_eps", "must be in (0, 1)")
        if self.kl_coef < 0 or self.temperature <= 0:
            raise bad("kl_coef" if self.kl_coef < 0 else "temperature", "must be > 0 (kl: >= 0)")
        if self.eval_tasks < 0:
            raise bad("eval_tasks", "must be >= 0")


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------- the math


def group_advantages(rewards: Sequence[float], group: int) -> list[float]:
    """r - mean(r over the group); rewards are task-major (group members adjacent). No division
    by the group's std (Dr. GRPO, arXiv:2503.20783)."""
    out = []
    for i in range(0, len(rewards), group):
        g = rewards[i : i + group]
        m = sum(g) / len(g)
        out += [r - m for r in g]
    return out


def coin_rewards(seed: int, step: int, n: int) -> list[float]:
    """The control's rewards: a fair coin per rollout, fixed by (seed, step)."""
    rng = random.Random(f"rl-coin/{seed}/{step}")
    return [float(rng.random() < 0.5) for _ in range(n)]


def policy_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float,
    ref_logp: torch.Tensor | None = None,
    kl_coef: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss summed over masked tokens, clipped-token fraction numerator, k3 KL sum).
    logp, old_logp, ref_logp, mask: [B, T]; advantages: [B] (each rollout's, for all its tokens)."""
    m = mask.float()
    ratio = torch.exp(logp - old_logp)
    adv = advantages[:, None]
    clipped = torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps)
    per_token = -torch.minimum(ratio * adv, clipped * adv)  # [B, T]
    n_clipped = (((ratio - clipped).abs() > 0).float() * m).sum().detach()
    kl = torch.zeros((), device=logp.device)
    if ref_logp is not None:
        d = ref_logp - logp
        k3 = torch.exp(d) - d - 1  # >= 0, unbiased for KL(policy || ref) under policy samples
        kl = (k3 * m).sum()
        if kl_coef:
            per_token = per_token + kl_coef * k3
    return (per_token * m).sum(), n_clipped, kl.detach()


@dataclass
class RolloutBatch:
    """One micro-batch of rollouts as tensors: rows are prompt + rollout ids."""

    inputs: torch.Tensor  # [B, T] ids, right-padded
    targets: torch.Tensor  # [B, T] the next id (only read where mask is 1)
    mask: torch.Tensor  # [B, T] 1 where the target is a token the model sampled
    advantages: torch.Tensor  # [B]
    count: int  # model tokens this micro-batch stands for (its rows + skipped zero-signal rows)
    old_logp: torch.Tensor | None = None  # [B, T], set on the batch's first epoch


def collate_rollouts(
    rollouts: Sequence[Rollout], advantages: Sequence[float], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    rows = [r.prompt_ids + r.ids for r in rollouts]
    T = max(len(x) for x in rows) - 1
    inputs = torch.zeros(len(rows), T, dtype=torch.long)
    targets = torch.zeros(len(rows), T, dtype=torch.long)
    mask = torch.zeros(len(rows), T, dtype=torch.bool)
    for b, (r, row) in enumerate(zip(rollouts, rows)):
        n = len(row) - 1
        inputs[b, :n] = torch.tensor(row[:-1])
        targets[b, :n] = torch.tensor(row[1:])
        p = len(r.prompt_ids)  # target t is token t+1: rollout id j is target p - 1 + j
        mask[b, p - 1 : p - 1 + len(r.ids)] = torch.tensor(r.mask, dtype=torch.bool)
    adv = torch.tensor(list(advantages), dtype=torch.float32)
    return inputs.to(device), targets.to(device), mask.to(device), adv.to(device)


def token_logps(
    model: torch.nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(log p(target) [B, T], entropy of each position's distribution [B, T], detached); with
    `mask` [B, T] only its positions are computed (0 elsewhere): the output layer and its
    [N, V] log-softmax run on the model's tokens alone, not on the prompt's, which in a chat
    rollout are most of the row. Right padding is never seen by a real token (causal mask)."""
    if mask is None:
        mask = torch.ones_like(targets, dtype=torch.bool)
    hidden = model.hidden_states(inputs)  # type: ignore[operator]  # [B, T, dim]
    logits = model.lm_head(hidden[mask]).float()  # type: ignore[operator]  # [N, V]
    logp_all = F.log_softmax(logits, dim=-1)
    logp = torch.zeros(targets.shape, dtype=logp_all.dtype, device=logp_all.device)
    logp[mask] = logp_all.gather(-1, targets[mask][:, None]).squeeze(-1)
    with torch.no_grad():
        entropy = torch.zeros_like(logp)
        entropy[mask] = -(logp_all.exp() * logp_all).sum(-1)
    return logp, entropy


# ------------------------------------------------------------------------------------ objective


class RLObjective(loop.ObjectiveBase):
    """Rollouts sampled before each step (or reused for `ppo_epochs` steps), the clipped
    policy-gradient loss as (sum over model tokens, their count)."""

    def __init__(
        self,
        rt: rt_mod.Runtime,
        model: Transformer,
        tokenizer: Any,
        fmt: ChatFormat | None,
        train_tasks: list[VerifiableTask],
        val_tasks: list[VerifiableTask],
        cfg: RLConfig,
        reference: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None,
    ) -> None:
        self.rt, self.model, self.tokenizer, self.fmt = rt, model, tokenizer, fmt
        self.train_tasks, self.val_tasks, self.cfg = train_tasks, val_tasks, cfg
        self.reference = reference  # (inputs, targets, mask) -> reference log-probs [B, T]
        self.epoch, self.pos = 0, 0  # where the next prompts come from
        self.order = shuffled(train_tasks, cfg.seed, 0)
        self.rollouts: list[Rollout] = []
        self.advantages: list[float] = []
        self.rewards: list[float] = []
        self.batches: list[RolloutBatch] = []
        self.queue: list[RolloutBatch] = []
        self.sample_seconds = 0.0
        self.eval_seconds = 0.0
        self.last_replies: list[Rollout] = []  # the last held-out evaluation's
        self._metrics: dict[str, Any] = {}
        self._stats: dict[str, float] = {}
        # over the run: rollouts, their rewards, groups and those without signal, sampling time
        self.totals: dict[str, float] = dict.fromkeys(
            ("rollouts", "reward", "groups", "zero", "sample_s", "tokens"), 0
        )

    # --- rollouts ---

    def _next_tasks(self) -> list[VerifiableTask]:
        out: list[VerifiableTask] = []
        while len(out) < self.cfg.prompts:
            if self.pos >= len(self.order):
                self.epoch, self.pos = self.epoch + 1, 0
                self.order = shuffled(self.train_tasks, self.cfg.seed, self.epoch)
            out.append(self.order[self.pos])
            self.pos += 1
        return out

    def _sample(self, step: int) -> None:
        from twofiles.engine import SamplingParams

        cfg = self.cfg
        t0 = time.perf_counter()
        tasks = self._next_tasks()
        seed = int.from_bytes(
            hashlib.sha256(f"rl/{cfg.seed}/{step}".encode()).digest()[:6], "little"
        )
        params = SamplingParams(temperature=cfg.temperature, max_tokens=cfg.max_tokens)
        self.rollouts = sample_rollouts(
            self.model,
            self.tokenizer,
            self.fmt,
            tasks,
            params,
            group=cfg.group,
            max_rounds=cfg.max_rounds,
            max_rows=cfg.max_rows,
            seed=seed,
        )
        self.rewards = (
            [r.reward for r in self.rollouts]
            if cfg.reward == "verifier"
            else coin_rewards(cfg.seed, step, len(self.rollouts))
        )
        self.advantages = group_advantages(self.rewards, cfg.group)
        self.sample_seconds = time.perf_counter() - t0
        self._build_batches()
        groups = [self.rewards[i : i + cfg.group] for i in range(0, len(self.rewards), cfg.group)]
        n = len(self.rollouts)
        self._metrics = {
            "reward": sum(self.rewards) / n,
            "accuracy": sum(r.correct for r in self.rollouts) / n,  # the verifier's, either way
            "frac_zero_std": sum(len(set(g)) == 1 for g in groups) / len(groups),
            "completion_len": sum(r.n_model_tokens for r in self.rollouts) / n,
            "tool_calls": sum(len(r.tool_calls) for r in self.rollouts) / n,
            "sample_seconds": self.sample_seconds,
            "sample_tok_s": sum(r.n_model_tokens for r in self.rollouts)
            / max(self.sample_seconds, 1e-9),
        }
        t = self.totals
        t["rollouts"] += n
        t["reward"] += sum(self.rewards)
        t["groups"] += len(groups)
        t["zero"] += sum(len(set(g)) == 1 for g in groups)
        t["sample_s"] += self.sample_seconds
        t["tokens"] += sum(r.n_model_tokens for r in self.rollouts)

    def _build_batches(self) -> None:
        """The rollouts as `grad_accum` micro-batches. Rows whose advantage is 0 add nothing to the
        policy gradient; without a KL term they are not run, but their tokens still count in the
        step's token mean, so the loss is the one over all rollouts."""
        keep = [
            i
            for i, r in enumerate(self.rollouts)
            if r.n_model_tokens and (self.advantages[i] != 0 or self.cfg.kl_coef > 0)
        ]
        total = sum(r.n_model_tokens for r in self.rollouts)
        k = self.cfg.grad_accum
        parts = [keep[j::k] for j in range(k)]
        counts = [total // k + (1 if j < total % k else 0) for j in range(k)]
        self.batches = []
        for part, count in zip(parts, counts):
            if not part:
                self.batches.append(
                    RolloutBatch(*(torch.zeros(0, 0, dtype=torch.long),) * 3, torch.zeros(0), count)
                )
                continue
            inputs, targets, mask, adv = collate_rollouts(
                [self.rollouts[i] for i in part], [self.advantages[i] for i in part], self.rt.device
            )
            self.batches.append(RolloutBatch(inputs, targets, mask, adv, count))

    def before_step(self, step: int) -> None:
        if step % self.cfg.ppo_epochs == 0 or not self.batches:
            self._sample(step)
        self.queue = list(self.batches)
        self._stats = {"tokens": 0.0, "entropy": 0.0, "kl": 0.0, "clipped": 0.0, "kl_tokens": 0.0}

    def next_batch(self) -> RolloutBatch:
        return self.queue.pop(0)

    def count(self, batch: RolloutBatch) -> int:
        return batch.count

    def batch_tokens(self, batch: RolloutBatch) -> int:
        return int(batch.mask.sum()) if batch.mask.numel() else 0

    def loss(self, model: torch.nn.Module, batch: RolloutBatch) -> torch.Tensor:
        if batch.inputs.numel() == 0:  # every rollout here carried no signal
            return sum(
                (p.sum() * 0.0 for p in model.parameters() if p.requires_grad),
                torch.zeros((), device=self.rt.device),
            )
        with self.rt.autocast():
            logp, entropy = token_logps(model, batch.inputs, batch.targets, batch.mask)
        if batch.old_logp is None:  # the first epoch: the policy that sampled is this one
            batch.old_logp = logp.detach()
        ref = None
        if self.reference is not None:
            with torch.no_grad(), self.rt.autocast():
                ref = self.reference(batch.inputs, batch.targets, batch.mask)
        loss, n_clipped, kl = policy_loss(
            logp,
            batch.old_logp,
            batch.advantages,
            batch.mask,
            self.cfg.clip_eps,
            ref,
            self.cfg.kl_coef,
        )
        m = batch.mask.float()
        s = self._stats
        s["tokens"] += float(m.sum())
        s["entropy"] += float((entropy * m).sum())
        s["clipped"] += float(n_clipped)
        if ref is not None:
            s["kl"] += float(kl)
            s["kl_tokens"] += float(m.sum())
        return loss

    def step_metrics(self, batches: list[Any]) -> dict[str, Any]:
        s, n = self._stats, max(self._stats.get("tokens", 0.0), 1.0)
        return {
            **self._metrics,
            "entropy": s["entropy"] / n if s["tokens"] else None,
            "kl": s["kl"] / s["kl_tokens"] if s["kl_tokens"] else None,
            "clip_frac": s["clipped"] / n if s["tokens"] else None,
            "trained_tokens": int(s["tokens"]),
        }

    # --- evaluation ---

    def heldout(self) -> dict[str, float]:
        """Greedy pass@1 on the held-out tasks, overall and per source."""
        from twofiles.engine import SamplingParams

        t0 = time.perf_counter()
        tasks = self.val_tasks[: self.cfg.eval_tasks]
        if not tasks:
            return {}
        outs = sample_rollouts(
            self.model,
            self.tokenizer,
            self.fmt,
            tasks,
            SamplingParams(temperature=0.0, max_tokens=self.cfg.max_tokens),
            max_rounds=self.cfg.max_rounds,
            max_rows=self.cfg.max_rows,
        )
        by: dict[str, list[bool]] = {}
        for r in outs:
            by.setdefault(r.task.source, []).append(r.correct)
        self.eval_seconds = time.perf_counter() - t0
        self.last_replies = outs
        out = {"pass@1": sum(r.correct for r in outs) / len(outs), "eval_tasks": float(len(outs))}
        if len(by) > 1:
            out.update({f"pass@1 {k}": sum(v) / len(v) for k, v in by.items()})
        return out

    def evaluate(self, model: torch.nn.Module, final: bool) -> dict[str, float]:
        return self.heldout()

    def reserve_s(self, per_step: float) -> float:
        return self.eval_seconds  # measured on the "before" evaluation

    # --- resume ---

    def state_dict(self) -> dict[str, Any]:
        """The prompt position; and while a batch is being reused, the batch itself (its rollouts,
        advantages and first-epoch log-probs), since re-sampling it would draw from a moved policy.
        Rollout seeds are a function of (seed, step), so no generator state is needed."""
        st: dict[str, Any] = {
            "rl_epoch": self.epoch,
            "rl_pos": self.pos,
            "rl_metrics": self._metrics,
            "rl_totals": self.totals,
        }
        if self.cfg.ppo_epochs > 1 and self.batches:
            st["rl_batches"] = [
                {
                    "inputs": b.inputs.tolist(),
                    "targets": b.targets.tolist(),
                    "mask": b.mask.tolist(),
                    "advantages": b.advantages.tolist(),
                    "count": b.count,
                    "old_logp": None if b.old_logp is None else b.old_logp.tolist(),
                }
                for b in self.batches
            ]
        return st

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.pos = state["rl_epoch"], state["rl_pos"]
        self.order = shuffled(self.train_tasks, self.cfg.seed, self.epoch)
        self._metrics = state.get("rl_metrics", {})
        self.totals = dict(state["rl_totals"])
        dev = self.rt.device
        self.batches = [
            RolloutBatch(
                _tensor(b["inputs"], torch.long, dev),
                _tensor(b["targets"], torch.long, dev),
                _tensor(b["mask"], torch.bool, dev),
                torch.tensor(b["advantages"], dtype=torch.float32, device=dev),
                b["count"],
                None if b["old_logp"] is None else _tensor(b["old_logp"], torch.float32, dev),
            )
            for b in state.get("rl_batches", [])
        ]


def _tensor(rows: list[list[Any]], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A [B, T] tensor from nested lists, [0, 0] when there are no rows."""
    return torch.tensor(rows, dtype=dtype, device=device).reshape(len(rows), -1 if rows else 0)


# ------------------------------------------------------------------------------------------ run


@dataclass
class RLResult:
    out: str
    model_path: str
    steps: int
    train_seconds: float
    pass1_before: float  # held-out greedy pass@1 of the starting model
    pass1_after: float
    by_task_before: dict[str, float]
    by_task_after: dict[str, float]
    eval_tasks: int
    rollouts: int  # sampled over the run
    mean_reward: float  # over the run's rollouts
    frac_zero_std: float  # over the run's groups
    sample_seconds: float  # spent generating rollouts
    rollout_tok_s: float  # model tokens generated per second of sampling
    reward: str
    trainable_params: int
    params: int

    def summary(self) -> dict[str, Any]:
        return dict(self.__dict__)


def rl(
    cfg: RLConfig, tasks: tuple[list[VerifiableTask], list[VerifiableTask]] | None = None
) -> RLResult:
    """Run (or resume) RL against a verifiable reward as configured; `tasks` (train, held-out)
    replaces the ones `cfg.tasks` names (your own prompts and verifiers)."""
    cfg.validate()
    with single_process_run(cfg, "rl", _log) as (rt, signals):
        return _rl(cfg, rt, signals, tasks)


def _rl(
    cfg: RLConfig,
    rt: rt_mod.Runtime,
    signals: StopSignals,
    tasks: tuple[list[VerifiableTask], list[VerifiableTask]] | None,
) -> RLResult:
    from twofiles.chat import ChatFormat
    from twofiles.formats.resolve import resolve_model

    out = Path(cfg.out)
    ckpt_dir = out / "checkpoints"
    if not cfg.resume and list_checkpoints(ckpt_dir):
        raise TwofilesError(
            f"{out} already holds checkpoints: pass --resume to continue, or choose another --out"
        )
    if cfg.resume and not list_checkpoints(ckpt_dir):
        raise TwofilesError(f"--resume: no checkpoint in {ckpt_dir}")
    if cfg.merge and not cfg.lora_rank:
        raise TwofilesError("--merge applies to LoRA adapters: pass --lora-rank too")
    train_tasks, val_tasks = tasks or (load_tasks(cfg.tasks, "train"), load_tasks(cfg.tasks, "val"))

    # --- model, chat format, reference ---
    t0 = time.perf_counter()
    loaded = resolve_model(cfg.model, device="cpu", cap_context=False)
    tokenizer, model = loaded.tokenizer, loaded.model
    # a model without a chat template (and without twofiles' chat tokens) gets plain prompts
    fmt: ChatFormat | None
    try:
        fmt = ChatFormat.for_model(loaded)
    except TwofilesError:
        fmt = None
    model.train()
    if cfg.lora is not None:
        apply_lora(model, cfg.lora, seed=cfg.seed)
    else:
        for p in model.parameters():
            p.requires_grad_(True)
    model.to(rt.device)
    reference: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    if cfg.lora is not None:

        def reference(
            inputs: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor
        ) -> torch.Tensor:
            with adapters_disabled(model):
                return token_logps(model, inputs, targets, mask)[0]

    elif cfg.kl_coef > 0:  # full finetuning: the reference is a frozen copy
        frozen = copy.deepcopy(model).eval().requires_grad_(False)

        def reference(
            inputs: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor
        ) -> torch.Tensor:
            return token_logps(frozen, inputs, targets, mask)[0]

    n_params = sum(p.numel() for p in model.parameters())
    n_trainable = trainable_parameters(model)
    ckpt_module: torch.nn.Module = model
    if cfg.lora is not None:
        ckpt_module = torch.nn.ParameterDict(
            {n.replace(".", "__"): p for n, p in model.named_parameters() if p.requires_grad}
        )
    _log(
        f"rl: {cfg.model} ({n_params:,} parameters, {n_trainable:,} trained"
        f"{' by LoRA r=%d' % cfg.lora_rank if cfg.lora_rank else ''}), "
        f"{'chat prompts' if fmt else 'plain prompts (no chat template)'}; "
        f"tasks {cfg.tasks if tasks is None else '(given)'}: "
        f"{len(train_tasks)} train / {len(val_tasks)} held-out; reward {cfg.reward}; "
        f"loaded in {time.perf_counter() - t0:.1f}s"
    )

    # --- optimizer, objective, the loop ---
    optimizers = build_optimizers(model, cfg.optim)
    objective = RLObjective(rt, model, tokenizer, fmt, train_tasks, val_tasks, cfg, reference)
    spec = loop.run_spec(cfg, "rl")
    loop.open_run(spec, rt)
    before: dict[str, Any] = {}

    def measure_before(log_metrics: Callable[[dict[str, Any]], None]) -> None:
        before.update(objective.heldout())
        log_metrics({"step": 0, **before, "time": 0.0})
        if "pass@1" in before:
            _log(f"before: held-out pass@1 {before['pass@1']:.1%}")

    def on_resume(state: dict[str, Any]) -> None:
        before.update(state["rl_before"])
        objective.eval_seconds = state.get("rl_eval_seconds", 0.0)

    res = loop.run(
        spec,
        objective,
        rt,
        signals,
        model,
        ckpt_module,
        optimizers,
        on_start=measure_before,
        on_resume=on_resume,
        extra_state=lambda: {
            "rl_before": before,
            "rl_eval_seconds": objective.eval_seconds,
        },
    )
    metrics_path = out / "metrics.jsonl"
    from twofiles.train.plots import plot_rl

    compare = Path(cfg.compare) / "metrics.jsonl" if cfg.compare else None
    if res.stopped:
        plot_rl(metrics_path, out / "rl.png", compare=compare)
        stopped(cfg, "rl", res.step, res.signum, _log)
    after, totals = res.last_eval, objective.totals
    if "pass@1" in after:  # --eval-tasks 0: no held-out evaluation, nothing to say
        _log(
            f"after: held-out pass@1 {after['pass@1']:.1%} "
            f"(before {before.get('pass@1', float('nan')):.1%})"
        )

    provenance = {
        "stage": "rl",
        "base": base_spec(cfg.model),
        "base_provenance": loaded.provenance,
        "tasks": cfg.tasks,
        "reward": cfg.reward,
        "steps": res.step,
        "pass1_before": before.get("pass@1"),
        "pass1_after": after.get("pass@1"),
        "config": cfg.to_dict(),
        "runtime": rt.describe(),
        **cfg.provenance,
    }
    template = fmt.template if fmt is not None else ""  # "": none (plain prompts)
    model_path = save_finetuned(
        out,
        model,
        tokenizer,
        cfg,
        merge=cfg.merge,
        chat_template=template,
        provenance=provenance,
    )
    result = RLResult(
        out=str(out),
        model_path=str(model_path),
        steps=res.step,
        train_seconds=res.elapsed,
        pass1_before=float(before.get("pass@1", float("nan"))),
        pass1_after=float(after.get("pass@1", float("nan"))),
        by_task_before=_by_task(before),
        by_task_after=_by_task(after),
        eval_tasks=int(after.get("eval_tasks", 0)),
        rollouts=int(totals["rollouts"]),
        mean_reward=totals["reward"] / max(totals["rollouts"], 1),
        frac_zero_std=totals["zero"] / max(totals["groups"], 1),
        sample_seconds=totals["sample_s"],
        rollout_tok_s=totals["tokens"] / max(totals["sample_s"], 1e-9),
        reward=cfg.reward,
        trainable_params=n_trainable,
        params=n_params,
    )
    plot_rl(metrics_path, out / "rl.png", compare=compare)
    write_report(out, cfg, result, objective)
    _log(f"saved {model_path}")
    return result


def _by_task(rec: dict[str, Any]) -> dict[str, float]:
    return {k.split(" ", 1)[1]: v for k, v in rec.items() if k.startswith("pass@1 ")}


def write_report(out: Path, cfg: RLConfig, res: RLResult, objective: RLObjective) -> Path:
    """run.json for the report card (eval/report.py) and every held-out reply to replies.jsonl."""
    from twofiles.artifact import atomic_write_bytes
    from twofiles.eval.report import write_report as write_report_md
    from twofiles.eval.report import write_run_info

    mode = f"LoRA r={cfg.lora_rank}" if cfg.lora_rank else "full finetuning"
    rows = ["| held-out task | before | after |", "| --- | ---: | ---: |"]
    for k in res.by_task_after or res.by_task_before:
        b, a = res.by_task_before.get(k), res.by_task_after.get(k)
        rows.append(
            f"| {k} | {'-' if b is None else f'{100 * b:.0f}%'} | {'-' if a is None else f'{100 * a:.0f}%'} |"
        )
    rows.append(
        f"| **all** | **{100 * res.pass1_before:.0f}%** | **{100 * res.pass1_after:.0f}%** |"
    )
    replies = objective.last_replies
    examples = [
        f"- ({'right' if r.correct else 'wrong'}) {r.task.prompt!r} ->"
        + (
            f" [calculator({r.tool_calls[0]['arguments']}) -> {r.tool_calls[0]['result']}]"
            if r.tool_calls
            else ""
        )
        + f" {r.reply!r}"
        for r in replies[:5]
    ]
    write_run_info(
        out,
        {
            "kind": "rl",
            "title": "RL report",
            "description": f"`{cfg.model}` trained against the {cfg.reward} reward on `{cfg.tasks}` ({mode}; "
            f"{cfg.prompts} prompts x {cfg.group} rollouts per batch, {cfg.ppo_epochs} epoch(s) per batch, "
            f"KL coefficient {cfg.kl_coef:g}).",
            "numbers": {
                "pass1_before": res.pass1_before,
                "pass1_after": res.pass1_after,
                "eval_tasks": res.eval_tasks,
                "steps": res.steps,
                "train_seconds": res.train_seconds,
                "rollouts": res.rollouts,
                "mean_reward": res.mean_reward,
                "frac_zero_std": res.frac_zero_std,
                "rollout_tok_s": res.rollout_tok_s,
                "trainable_params": res.trainable_params,
                "model_path": f"`{res.model_path}`",
            },
            "sections": [
                {"title": "Held-out pass@1 (greedy)", "markdown": "\n".join(rows)},
                {
                    "title": "Held-out replies after training (first 5)",
                    "markdown": "\n".join(examples),
                },
            ],
        },
    )
    atomic_write_bytes(
        out / "replies.jsonl",
        "".join(
            json.dumps(
                {
                    "prompt": r.task.prompt,
                    "answer": r.task.answer,
                    "reply": r.reply,
                    "tool_calls": r.tool_calls,
                    "correct": r.correct,
                }
            )
            + "\n"
            for r in replies
        ).encode(),
    )
    return write_report_md(out)


__all__ = [
    "REWARDS",
    "RLConfig",
    "RLObjective",
    "RLResult",
    "coin_rewards",
    "collate_rollouts",
    "group_advantages",
    "policy_loss",
    "rl",
    "token_logps",
]
