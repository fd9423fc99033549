"""Direct preference optimisation: a model and preference pairs in, a model that prefers the chosen
replies out.

Stage 3 of the story: after SFT, tune on comparisons. Each pair is a prompt with a chosen and a
rejected reply; the loss (train/preference.py: sigmoid DPO, IPO, hinge, robust, optionally + NLL)
raises the policy's log-prob margin of chosen over rejected relative to a frozen reference. Reads
like SFT's recipe: config -> runtime -> model (+ LoRA) -> chat format -> pairs (read, render) ->
reference -> optimizer -> one loop (train/loop.py) with DPOObjective.

The reference: with LoRA it is the base with the adapters switched off (lora.adapters_disabled: no
second copy of the weights); with full finetuning the reference log-probs of every training and
held-out pair are computed once before training (batched, no_grad) and kept in the run directory
(reference_logps.safetensors), so a resumed run reads them back instead of recomputing them.

What it owns: DPOConfig, DPOObjective (batches of pairs with a resumable position, chosen and
rejected rows in one forward), the held-out pair evaluation, `--data feedback` (the web UI's
thumbs, corrections and arena votes exported as pairs through twofiles.feedback's builders), and
the run's outputs (model or adapters, metrics.jsonl, dpo.png, report.md). What it leaves to
others: reading and rendering pairs (data/preferences.py), the loss (train/preference.py), LoRA,
the loop, scoring skills (train/sft.py).

A run is one process (no DDP: preference sets are small).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
import torch.nn.functional as F

from twofiles import runtime as rt_mod
from twofiles.artifact import atomic_write_bytes
from twofiles.errors import BadInputError, TwofilesError
from twofiles.lora import (
    adapters_disabled,
    apply_lora,
    trainable_parameters,
)
from twofiles.optim import OptimConfig, build_optimizers
from twofiles.train import loop
from twofiles.train.checkpoint import list_checkpoints
from twofiles.train.finetune import (
    FinetuneConfig,
    base_spec,
    finetune_optim,
    save_finetuned,
    single_process_run,
    stopped,
)
from twofiles.train.preference import LOSS_KINDS, LossKind, dpo_loss
from twofiles.train.runctl import StopSignals

if TYPE_CHECKING:
    from twofiles.data.preferences import PreferencePair, RenderedPair
    from twofiles.feedback import FeedbackRow
    from twofiles.model import Transformer
    from twofiles.train.sft import SkillReport

REFERENCE_MODES: tuple[str, ...] = ("auto", "adapters-off", "precomputed")
REFERENCE_FILE = "reference_logps.safetensors"


def default_optim() -> OptimConfig:
    # AdamW at a small LR: DPO moves a finetuned model a little, and β keeps it near the
    # reference. Big models use 5e-7 (full) to 5e-6 (LoRA); 135M parameters need more to move in
    # the few steps a CPU affords: at 1e-5, 8 full-finetuning steps of 2 pairs took SmolLM2-135M's
    # held-out DPO loss from 0.693 to 0.466 (reward accuracy 92%); LoRA r=8 needed 1e-4 to get
    # to 0.642 in the same steps (docs/LOG.md, 2026-12-06), so pass --lr 1e-4 with LoRA.
    return finetune_optim(lr=1e-5)


@dataclass(kw_only=True)
class DPOConfig(FinetuneConfig):
    """DPO's own fields; the model and LoRA fields are FinetuneConfig's, the
    run-control fields loop.RunConfig's."""

    data: str = ""  # preference JSONL (TRL's forms), or "feedback": the web UI's feedback + arena
    val_data: str = ""  # held-out preference JSONL; "" = every 20th pair of data
    feedback_db: str = ""  # data "feedback": the feedback database ("" = the web UI's)
    arena_db: str = ""  # data "feedback": the arena database ("" = the web UI's, when it exists)
    max_val: int = 0  # held-out pairs evaluated, at most (0: all)
    out: str = "runs/dpo"  # (this stage's default run directory)
    optim: OptimConfig = field(default_factory=default_optim)  # (this stage's default)
    beta: float = 0.1  # how far the policy may move from the reference (the KL weight)
    loss: str = "sigmoid"  # sigmoid (DPO), ipo, hinge or robust
    label_smoothing: float = 0.0  # sigmoid: conservative DPO's label noise; robust: rDPO's
    nll_weight: float = 0.0  # > 0: DPO+NLL, this times the chosen replies' NLL per token
    reference: str = (
        "auto"  # auto (LoRA: adapters-off, else precomputed), adapters-off, precomputed
    )
    merge: bool = False  # LoRA: merge the adapters into the weights and write model.safetensors
    batch_size: int = 4  # pairs per micro-batch (2x rows: chosen and rejected in one forward)
    max_len: int = 512  # prompt + completion tokens (capped at the model's context)
    max_prompt_len: int = 0  # longer prompts are skipped (0: max_len - 1)
    epochs: float = 1.0  # passes over the training pairs (when max_steps is 0)
    skill_tasks: int = 0  # held-out skill tasks per kind scored before and after (0: none)
    skill_max_tokens: int = 48  # tokens per generated reply when scoring skills
    identity: str = ""  # the assistant's name for the identity skill tasks (as SFT's)

    def reference_mode(self) -> str:
        if self.reference == "auto":
            return "adapters-off" if self.lora_rank else "precomputed"
        return self.reference


@dataclass
class DPOResult:
    out: str
    model_path: str  # model.safetensors, or adapters.safetensors for unmerged LoRA
    steps: int
    train_seconds: float
    train_pairs: int
    val_pairs: int
    skipped: dict[str, int]  # reason -> pairs left out (training and held-out together)
    truncated: int  # pairs kept with a completion cut to fit max_len
    max_len: int  # prompt + completion tokens (max_len, capped at the model's context)
    tokens: int  # row positions processed (chosen and rejected rows, padding excluded)
    tokens_per_second: float
    reference: str  # adapters-off or precomputed
    before: dict[str, float]  # held-out numbers of the model as it came
    after: dict[str, float]  # and after training
    skills_before: SkillReport | None
    skills_after: SkillReport | None
    trainable_params: int
    params: int
    peak_memory_mb: float

    def summary(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if not k.startswith("skills_")}
        out["skills_before"] = self.skills_before.summary() if self.skills_before else None
        out["skills_after"] = self.skills_after.summary() if self.skills_after else None
        return out


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------- data


def feedback_pairs(
    feedback_db: str | os.PathLike[str], arena_db: str | os.PathLike[str] | None
) -> tuple[list[dict[str, Any]], int]:
    """Preference pairs from the web UI: corrections over originals and upvoted over downvoted
    replies (twofiles.feedback.build_datasets), then arena votes, winner over loser
    (arena_preferences), without duplicates. Either database may be missing; nothing is written
    to them. Returns (pairs as TRL-form dicts, how many came from the arena)."""
    from twofiles.feedback import arena_preferences, build_datasets, read_rows

    rows: list[FeedbackRow] = []
    if Path(feedback_db).is_file():
        rows, bad = read_rows(feedback_db)
        if bad:
            raise BadInputError(
                f"{bad[0]}; `twofiles feedback export --skip-bad` writes the pairs without it, "
                "for --data",
                path=str(feedback_db),
            )
    _, pairs = build_datasets(rows)
    from_arena = 0
    if arena_db is not None and Path(arena_db).is_file():
        seen = {json.dumps(p, sort_keys=True) for p in pairs}
        for p in arena_preferences(arena_db):
            if (k := json.dumps(p, sort_keys=True)) not in seen:
                seen.add(k)
                pairs.append(p)
                from_arena += 1
    if not pairs:
        raise BadInputError(
            f"no preference pairs yet in the feedback database ({feedback_db}) or the arena's "
            f"({arena_db or 'none'}). Make some: in the web UI (`twofiles serve`), rate two replies "
            "to the same conversation up and down, or correct a reply; or vote in `twofiles arena`"
        )
    return pairs, from_arena


def load_pairs(
    cfg: DPOConfig, out: Path
) -> tuple[list[PreferencePair], list[PreferencePair], dict[str, Any]]:
    """(train, held-out) PreferencePairs and their provenance. `--data feedback` first writes the
    web UI's pairs to OUT/pairs.jsonl, the file the run then trains on."""
    from twofiles.data.preferences import read_preferences
    from twofiles.paths import default_db

    prov: dict[str, Any] = {}
    path, val_path = cfg.data, cfg.val_data
    if not path:
        raise BadInputError("--data: give a preference JSONL file, `feedback` or `security`")
    if cfg.data == "feedback":
        fb = cfg.feedback_db or str(default_db("feedback"))
        arena = cfg.arena_db or str(default_db("arena"))
        exported, from_arena = feedback_pairs(fb, arena)
        path = str(out / "pairs.jsonl")
        atomic_write_bytes(path, "".join(json.dumps(p) + "\n" for p in exported).encode())
        prov = {"feedback_db": fb, "arena_db": arena, "arena_pairs": from_arena}
        _log(f"feedback: {len(exported)} pairs ({from_arena} from arena votes) -> {path}")
    if cfg.data == "security":  # the security mix's pairs, written where the run can show them
        from twofiles.data.security import provenance, security_pairs

        path = str(out / "pairs.jsonl")
        for name, pairs_of in (
            ("pairs.jsonl", security_pairs("train")),
            ("val_pairs.jsonl", security_pairs("val")),
        ):
            lines = "".join(json.dumps(p) + "\n" for p in pairs_of)
            atomic_write_bytes(out / name, lines.encode())
        val_path = val_path or str(out / "val_pairs.jsonl")  # the mix's own held-out phrasings
        prov = {"security": provenance()}
    pairs = read_preferences(path)
    if val_path:
        train, val = pairs, read_preferences(val_path)
    else:  # every 20th pair held out (at least one)
        train, val = [p for i, p in enumerate(pairs) if i % 20], pairs[::20]
    if not train or not val:
        raise BadInputError(f"{path}: need at least 2 pairs (training and held-out)")
    prov |= {
        "data": cfg.data if cfg.data in ("feedback", "security") else os.path.abspath(path),
        "pairs_file": os.path.abspath(path),
        "val_data": os.path.abspath(val_path) if val_path else "every 20th",
    }
    return train, val, prov


# -------------------------------------------------------------------------------------- batches


@dataclass
class PairBatch:
    """B pairs as 2B rows (chosen rows, then rejected rows), right-padded; `targets` holds each
    completion token at the position that predicts it and -1 elsewhere."""

    inputs: torch.Tensor  # [2B, T] token ids
    targets: torch.Tensor  # [2B, T] next-token targets, -1 outside the completions
    index: torch.Tensor  # [B] the pairs' positions in their set (for precomputed references)
    tokens: int  # real positions of the 2B rows (padding excluded)
    stats: dict[str, torch.Tensor] = field(default_factory=dict)  # per-pair values, set by loss()

    @property
    def pairs(self) -> int:
        return int(self.index.numel())

    def to(self, device: torch.device) -> PairBatch:
        return PairBatch(
            self.inputs.to(device), self.targets.to(device), self.index, self.tokens, {}
        )


def collate(pairs: Sequence[RenderedPair], index: Sequence[int], pad_id: int) -> PairBatch:
    rows = [(p.prompt_ids, p.chosen_ids, p.chosen_mask) for p in pairs] + [
        (p.prompt_ids, p.rejected_ids, p.rejected_mask) for p in pairs
    ]
    T = max(len(p) + len(c) for p, c, _ in rows) - 1
    inputs = torch.full((len(rows), T), pad_id, dtype=torch.long)
    targets = torch.full((len(rows), T), -1, dtype=torch.long)
    for b, (p, c, mask) in enumerate(rows):
        row = p + c
        inputs[b, : len(row) - 1] = torch.tensor(row[:-1])
        # target t is token t+1: the completion's tokens are targets len(p)-1 .. len(row)-2;
        # a tool's result inside the completion (mask 0) is context, not a target
        completion = torch.tensor(c)
        if mask is not None:
            completion[torch.tensor(mask) == 0] = -1
        targets[b, len(p) - 1 : len(row) - 1] = completion
    return PairBatch(
        inputs,
        targets,
        torch.tensor(list(index), dtype=torch.long),
        sum(len(p) + len(c) - 1 for p, c, _ in rows),
    )


def batch_logps(
    model: torch.nn.Module, batch: PairBatch, rt: rt_mod.Runtime
) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed completion log-probs [2B] fp32, completion tokens [2B]) of the batch's rows.

    The same numbers as preference.sequence_logps, computed for less: the vocabulary projection
    runs only at the positions that predict a completion token (a prompt's logits are never
    used, and over a 49k vocabulary they are most of a forward's memory)."""
    bare = cast("Transformer", getattr(model, "module", model))
    sel = batch.targets >= 0  # [2B, T]
    with rt.autocast():
        h = bare.hidden_states(batch.inputs)  # [2B, T, dim]
        logits = bare.lm_head(h[sel]).float()  # [N, V], N completion tokens of the batch
    token_logps = -F.cross_entropy(logits, batch.targets[sel], reduction="none")  # [N]
    rows = torch.arange(sel.shape[0], device=sel.device)[:, None].expand_as(sel)[sel]
    logps = torch.zeros(sel.shape[0], device=logits.device).index_add(0, rows, token_logps)
    return logps, sel.sum(dim=1)


class PairLoader:
    """Batches of pairs in a seeded shuffled order, one epoch after another; every batch is full
    (the last batch of an epoch takes its rest from the next). Resumes from (epoch, cursor)."""

    def __init__(self, pairs: list[RenderedPair], batch_size: int, pad_id: int, seed: int) -> None:
        self.pairs, self.batch_size, self.pad_id, self.seed = pairs, batch_size, pad_id, seed
        self.epoch, self.cursor = 0, 0
        self._order = self._shuffled(0)

    def _shuffled(self, epoch: int) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(len(self.pairs), generator=g).tolist()

    def next_batch(self) -> PairBatch:
        index: list[int] = []
        while len(index) < self.batch_size:
            if self.cursor >= len(self._order):
                self.epoch, self.cursor = self.epoch + 1, 0
                self._order = self._shuffled(self.epoch)
            take = self._order[self.cursor : self.cursor + self.batch_size - len(index)]
            index += take
            self.cursor += len(take)
        return collate([self.pairs[i] for i in index], index, self.pad_id)

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "cursor": self.cursor}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.cursor = state["epoch"], state["cursor"]
        self._order = self._shuffled(self.epoch)


def eval_batches(pairs: list[RenderedPair], batch_size: int, pad_id: int) -> list[PairBatch]:
    return [
        collate(pairs[i : i + batch_size], range(i, min(i + batch_size, len(pairs))), pad_id)
        for i in range(0, len(pairs), batch_size)
    ]


# ------------------------------------------------------------------------------------ reference


def pairs_digest(pairs: Sequence[RenderedPair]) -> str:
    """What the reference log-probs were computed for (a resumed run checks it)."""
    h = hashlib.sha256()
    for p in pairs:
        h.update(
            json.dumps(
                [p.prompt_ids, p.chosen_ids, p.rejected_ids, p.chosen_mask, p.rejected_mask]
            ).encode()
        )
    return h.hexdigest()


@torch.no_grad()
def reference_logps(
    model: torch.nn.Module,
    pairs: list[RenderedPair],
    rt: rt_mod.Runtime,
    batch_size: int,
    pad_id: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(chosen [N], rejected [N]) summed log-probs of every pair under `model`, on the CPU."""
    chosen, rejected = [], []
    for b in eval_batches(pairs, batch_size, pad_id):
        logps, _ = batch_logps(model, b.to(rt.device), rt)
        chosen.append(logps[: b.pairs].cpu())
        rejected.append(logps[b.pairs :].cpu())
    return torch.cat(chosen), torch.cat(rejected)


def precomputed_reference(
    path: Path,
    model: torch.nn.Module,
    sets: dict[str, list[RenderedPair]],
    rt: rt_mod.Runtime,
    batch_size: int,
    pad_id: int,
) -> dict[str, torch.Tensor]:
    """The frozen model's log-probs of each set's pairs ("<set>_chosen", "<set>_rejected"), read
    from `path` when it holds them for these very pairs, else computed once and written there."""
    from safetensors import safe_open
    from safetensors.torch import save

    digest = pairs_digest([p for ps in sets.values() for p in ps])
    if path.is_file():
        with safe_open(str(path), framework="pt") as f:
            if (f.metadata() or {}).get("pairs") == digest:
                return {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no iter)
        _log(f"{path.name} was computed for other pairs: computing it again")
    t0 = time.perf_counter()
    out: dict[str, torch.Tensor] = {}
    was_training = model.training
    model.eval()
    for name, pairs in sets.items():
        out[f"{name}_chosen"], out[f"{name}_rejected"] = reference_logps(
            model, pairs, rt, batch_size, pad_id
        )
    model.train(was_training)
    atomic_write_bytes(path, save(out, metadata={"pairs": digest}))
    _log(
        f"reference: log-probs of {sum(map(len, sets.values()))} pairs in {time.perf_counter() - t0:.1f}s"
    )
    return out


# ----------------------------------------------------------------------------------------- loop


class DPOObjective(loop.ObjectiveBase):
    """The DPO family's loss on batches of pairs against a frozen reference. A micro-batch's loss
    is the sum of its pairs' losses, counted by its pairs, so under gradient accumulation every
    pair of the step weighs the same. `reference` holds precomputed log-probs ("train_chosen",
    "train_rejected", "val_chosen", "val_rejected"); None means the model with its LoRA adapters
    switched off is the reference."""

    def __init__(
        self,
        rt: rt_mod.Runtime,
        model: torch.nn.Module,
        loader: PairLoader,
        val_pairs: list[RenderedPair],
        *,
        beta: float,
        loss: str,
        label_smoothing: float = 0.0,
        nll_weight: float = 0.0,
        reference: dict[str, torch.Tensor] | None = None,
    ) -> None:
        self.rt, self.model, self.loader, self.val_pairs = rt, model, loader, val_pairs
        self.beta, self.kind = beta, cast(LossKind, loss)
        self.label_smoothing, self.nll_weight = label_smoothing, nll_weight
        self.reference = reference

    # --- the reference ---

    def _reference(
        self, model: torch.nn.Module, batch: PairBatch, split: str
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.reference is not None:
            i = batch.index
            return (
                self.reference[f"{split}_chosen"][i].to(self.rt.device),
                self.reference[f"{split}_rejected"][i].to(self.rt.device),
            )
        with adapters_disabled(self.model), torch.no_grad():
            logps, _ = batch_logps(model, batch, self.rt)
        return logps[: batch.pairs], logps[batch.pairs :]

    def pair_losses(
        self, model: torch.nn.Module, batch: PairBatch, split: str
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(the batch's mean loss, per-pair values for the metrics)."""
        B = batch.pairs
        logps, n = batch_logps(model, batch, self.rt)
        ref_c, ref_r = self._reference(model, batch, split)
        loss, _ = dpo_loss(
            logps[:B],
            logps[B:],
            ref_c,
            ref_r,
            beta=self.beta,
            kind=self.kind,
            label_smoothing=self.label_smoothing,
            chosen_tokens=n[:B],
            rejected_tokens=n[B:],
            nll_weight=self.nll_weight,
        )
        stats = {
            "rewards/chosen": self.beta * (logps[:B].detach() - ref_c),
            "rewards/rejected": self.beta * (logps[B:].detach() - ref_r),
            "logps/chosen": logps[:B].detach(),
            "logps/rejected": logps[B:].detach(),
            "chosen_tokens": n[:B],
        }
        return loss, stats

    # --- loop.Objective ---

    def next_batch(self) -> PairBatch:
        return self.loader.next_batch().to(self.rt.device)

    def loss(self, model: torch.nn.Module, batch: PairBatch) -> torch.Tensor:
        loss, batch.stats = self.pair_losses(model, batch, "train")
        return loss * batch.pairs

    def count(self, batch: PairBatch) -> int:
        return batch.pairs

    def batch_tokens(self, batch: PairBatch) -> int:
        return batch.tokens

    def step_metrics(self, batches: list[PairBatch]) -> dict[str, Any]:
        """TRL's metrics, as means over the step's pairs."""
        s = {k: torch.cat([b.stats[k] for b in batches]) for k in batches[0].stats}
        margins = s["rewards/chosen"] - s["rewards/rejected"]
        out = {
            "rewards/chosen": s["rewards/chosen"].mean(),
            "rewards/rejected": s["rewards/rejected"].mean(),
            "rewards/margins": margins.mean(),
            "rewards/accuracies": (margins > 0).float().mean(),
            "logps/chosen": s["logps/chosen"].mean(),
            "logps/rejected": s["logps/rejected"].mean(),
        }
        if self.nll_weight:
            out["nll_loss"] = -s["logps/chosen"].sum() / s["chosen_tokens"].sum().clamp(min=1)
        vals = torch.stack(list(out.values())).tolist()  # one host sync
        return {**dict(zip(out, vals)), "epoch": self.loader.epoch}

    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module, final: bool) -> dict[str, float]:
        """Held-out loss (mean over pairs), implicit-reward accuracy and margin, and how often
        the policy itself gives the chosen reply the higher log-prob."""
        was_training = model.training
        model.eval()
        losses, margins, prefers = [], [], []
        for b in eval_batches(self.val_pairs, self.loader.batch_size, self.loader.pad_id):
            b = b.to(self.rt.device)
            loss, st = self.pair_losses(model, b, "val")
            losses.append(loss * b.pairs)
            margins.append(st["rewards/chosen"] - st["rewards/rejected"])
            prefers.append(st["logps/chosen"] > st["logps/rejected"])
        model.train(was_training)
        m = torch.cat(margins)
        return {
            "eval_loss": float(torch.stack(losses).sum()) / len(self.val_pairs),
            "eval_rewards/accuracies": float((m > 0).float().mean()),
            "eval_rewards/margins": float(m.mean()),
            "eval_logps/accuracies": float(torch.cat(prefers).float().mean()),
        }

    def state_dict(self) -> dict[str, Any]:
        return {"loader": self.loader.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.loader.load_state_dict(state["loader"])


# ------------------------------------------------------------------------------------------ run


def dpo(cfg: DPOConfig) -> DPOResult:
    """Run (or resume) DPO as configured."""
    with single_process_run(cfg, "dpo", _log) as (rt, signals):
        return _dpo(cfg, rt, signals)


def _check(cfg: DPOConfig) -> None:
    """Refuse a bad config before anything is loaded."""
    if cfg.loss not in LOSS_KINDS:
        raise BadInputError(f"--loss {cfg.loss!r}: one of {', '.join(LOSS_KINDS)}")
    if cfg.beta <= 0:
        raise BadInputError(f"--beta {cfg.beta}: must be positive")
    if cfg.loss == "robust" and not 0 <= cfg.label_smoothing < 0.5:
        raise BadInputError("--label-smoothing: the robust loss needs 0 <= it < 0.5")
    if not 0 <= cfg.label_smoothing < 1:
        raise BadInputError(f"--label-smoothing {cfg.label_smoothing}: must be in [0, 1)")
    if cfg.nll_weight < 0:
        raise BadInputError(f"--nll-weight {cfg.nll_weight}: must be >= 0")
    if cfg.reference not in REFERENCE_MODES:
        raise BadInputError(f"--reference {cfg.reference!r}: one of {', '.join(REFERENCE_MODES)}")
    if cfg.reference == "adapters-off" and not cfg.lora_rank:
        raise BadInputError("--reference adapters-off needs LoRA adapters: pass --lora-rank")
    if cfg.merge and not cfg.lora_rank:
        raise BadInputError("--merge applies to LoRA adapters: pass --lora-rank too")
    if cfg.batch_size < 1 or cfg.max_len < 2:
        raise BadInputError("--batch-size must be >= 1 and --max-len >= 2")


def _dpo(cfg: DPOConfig, rt: rt_mod.Runtime, signals: StopSignals) -> DPOResult:
    from twofiles.chat import ChatFormat
    from twofiles.data.preferences import SKIP_REASONS, render_pairs
    from twofiles.formats.resolve import resolve_model
    from twofiles.train.sft import (
        SkillReport,
        heldout_skill_tasks,
        identity_for,
        peak_memory_mb,
        skill_accuracy,
    )

    _check(cfg)
    out = Path(cfg.out)
    ckpt_dir = out / "checkpoints"
    out.mkdir(parents=True, exist_ok=True)
    if not cfg.resume and list_checkpoints(ckpt_dir):
        raise TwofilesError(
            f"{out} already holds checkpoints: pass --resume to continue, or choose another --out"
        )
    if cfg.resume and not list_checkpoints(ckpt_dir):
        raise TwofilesError(f"--resume: no checkpoint in {ckpt_dir}")

    # --- pairs (read before the model: a bad line should not cost a model load) ---
    if cfg.resume and cfg.data == "feedback" and (out / "pairs.jsonl").is_file():
        # the run trains on the pairs it exported when it started, not on newer feedback
        cfg_data = DPOConfig.from_dict({**cfg.to_dict(), "data": str(out / "pairs.jsonl")})
        train_raw, val_raw, data_prov = load_pairs(cfg_data, out)
        data_prov["data"] = "feedback"
    else:
        train_raw, val_raw, data_prov = load_pairs(cfg, out)
    if cfg.max_val:
        val_raw = val_raw[: cfg.max_val]

    # --- model and chat format ---
    t0 = time.perf_counter()
    loaded = resolve_model(cfg.model, device="cpu", cap_context=False)
    fmt = ChatFormat.for_model(loaded)
    tokenizer, model = loaded.tokenizer, loaded.model
    max_len = min(cfg.max_len, model.config.max_seq_len)
    model.train()
    if cfg.lora is not None:
        apply_lora(model, cfg.lora, seed=cfg.seed)
    else:
        for p in model.parameters():
            p.requires_grad_(True)
    model.to(rt.device)
    n_params = sum(p.numel() for p in model.parameters())
    n_trainable = trainable_parameters(model)
    ckpt_module: torch.nn.Module = model
    if cfg.lora is not None:
        ckpt_module = torch.nn.ParameterDict(
            {n.replace(".", "__"): p for n, p in model.named_parameters() if p.requires_grad}
        )
    pad_id = tokenizer.special_ids.get("<|pad|>", tokenizer.bos_id)
    mode = cfg.reference_mode()
    _log(
        f"dpo: {cfg.model} ({n_params:,} parameters, {n_trainable:,} trained"
        f"{' by LoRA r=%d' % cfg.lora_rank if cfg.lora_rank else ''}), {cfg.loss} loss, "
        f"beta {cfg.beta:g}, reference {mode}; loaded in {time.perf_counter() - t0:.1f}s"
    )

    # --- render ---
    prompt_len = cfg.max_prompt_len or None
    train_pairs, train_rep = render_pairs(
        train_raw, fmt, max_len=max_len, max_prompt_len=prompt_len
    )
    val_pairs, val_rep = render_pairs(val_raw, fmt, max_len=max_len, max_prompt_len=prompt_len)
    skipped = {
        r: train_rep.skipped[r] + val_rep.skipped[r]
        for r in SKIP_REASONS
        if train_rep.skipped[r] + val_rep.skipped[r]
    }
    truncated = train_rep.truncated + val_rep.truncated
    _log(
        f"pairs: {len(train_pairs)} train / {len(val_pairs)} held-out; "
        + (
            "skipped " + ", ".join(f"{n} {r.replace('_', ' ')}" for r, n in skipped.items())
            if skipped
            else "none skipped"
        )
        + f"; {truncated} cut to {max_len} tokens"
    )
    if not train_pairs or not val_pairs:
        raise BadInputError(
            f"{data_prov['pairs_file']}: no usable {'training' if not train_pairs else 'held-out'} "
            f"pair left after skipping {sum(skipped.values())} ({skipped})"
        )

    # --- the reference, the objective, the loop ---
    reference = None
    if mode == "precomputed":
        # LoRA's B = 0 makes the adapted model its base already; switched off, it is so exactly
        frozen = adapters_disabled(model) if cfg.lora is not None else contextlib.nullcontext()
        with frozen:
            reference = precomputed_reference(
                out / REFERENCE_FILE,
                model,
                {"train": train_pairs, "val": val_pairs},
                rt,
                cfg.batch_size,
                pad_id,
            )
    loader = PairLoader(train_pairs, cfg.batch_size, pad_id, cfg.seed)
    objective = DPOObjective(
        rt,
        model,
        loader,
        val_pairs,
        beta=cfg.beta,
        loss=cfg.loss,
        label_smoothing=cfg.label_smoothing,
        nll_weight=cfg.nll_weight,
        reference=reference,
    )
    optimizers = build_optimizers(model, cfg.optim)
    pairs_per_step = cfg.batch_size * cfg.grad_accum
    spec = loop.run_spec(
        cfg,
        "dpo",
        cfg.max_steps or max(1, math.ceil(cfg.epochs * len(train_pairs) / pairs_per_step)),
    )
    loop.open_run(spec, rt)
    who = identity_for(loaded, cfg.identity)
    skill_tasks = heldout_skill_tasks(cfg.skill_tasks, 0, who) if cfg.skill_tasks else []
    before: dict[str, Any] = {"eval": {}, "skills": None}

    def measure_before(log_metrics: Callable[[dict[str, Any]], None]) -> None:
        before["eval"] = objective.evaluate(model, False)
        log_metrics({"step": 0, **before["eval"], "time": 0.0})
        if skill_tasks:
            before["skills"] = skill_accuracy(
                model, tokenizer, fmt, skill_tasks, max_tokens=cfg.skill_max_tokens
            )
            log_metrics({"step": 0, "skills": before["skills"].summary()})
        _log(
            f"before: held-out loss {before['eval']['eval_loss']:.4f}, the model prefers the "
            f"chosen reply in {before['eval']['eval_logps/accuracies']:.0%} of held-out pairs"
        )

    def load_before(state: dict[str, Any]) -> None:
        before["eval"] = state["eval_before"]
        if state.get("skills_before"):
            before["skills"] = SkillReport(**state["skills_before"])

    res = loop.run(
        spec,
        objective,
        rt,
        signals,
        model,
        ckpt_module,
        optimizers,
        on_start=measure_before,
        on_resume=load_before,
        extra_state=lambda: {
            "eval_before": before["eval"],
            "skills_before": asdict(before["skills"]) if before["skills"] else None,
        },
    )
    metrics_path = out / "metrics.jsonl"
    from twofiles.train.plots import plot_dpo

    if res.stopped:
        plot_dpo(metrics_path, out / "dpo.png")
        stopped(cfg, "dpo", res.step, res.signum, _log)
    after = {
        k: v for k, v in res.last_eval.items() if k.startswith("eval_") and k != "eval_seconds"
    }
    skills_after = None
    if skill_tasks:
        skills_after = skill_accuracy(
            model, tokenizer, fmt, skill_tasks, max_tokens=cfg.skill_max_tokens
        )
        with open(metrics_path, "a") as f:
            f.write(json.dumps({"step": res.step, "skills": skills_after.summary(), "final": True}))
            f.write("\n")

    # --- the tuned model ---
    provenance = {
        "stage": "dpo",
        "base": base_spec(cfg.model),
        "base_provenance": loaded.provenance,
        **data_prov,
        "beta": cfg.beta,
        "loss": cfg.loss,
        "label_smoothing": cfg.label_smoothing,
        "nll_weight": cfg.nll_weight,
        "reference": mode,
        "train_pairs": len(train_pairs),
        "val_pairs": len(val_pairs),
        "skipped": skipped,
        "truncated": truncated,
        "steps": res.step,
        "eval_before": before["eval"],
        "eval_after": after,
        "config": cfg.to_dict(),
        "runtime": rt.describe(),
        **cfg.provenance,
    }
    model_path = save_finetuned(
        out,
        model,
        tokenizer,
        cfg,
        merge=cfg.merge,
        chat_template=fmt.template,
        provenance=provenance,
    )
    result = DPOResult(
        out=str(out),
        model_path=str(model_path),
        steps=res.step,
        train_seconds=res.elapsed,
        train_pairs=len(train_pairs),
        val_pairs=len(val_pairs),
        skipped=skipped,
        truncated=truncated,
        max_len=max_len,
        tokens=res.tokens,
        tokens_per_second=res.tokens / max(res.elapsed, 1e-9),
        reference=mode,
        before=before["eval"],
        after=after,
        skills_before=before["skills"],
        skills_after=skills_after,
        trainable_params=n_trainable,
        params=n_params,
        peak_memory_mb=peak_memory_mb(rt.device),
    )
    plot_dpo(metrics_path, out / "dpo.png")
    write_report(out, cfg, result)
    _log(f"saved {model_path}")
    return result


# --------------------------------------------------------------------------------------- report


def write_report(out: Path, cfg: DPOConfig, res: DPOResult) -> Path:
    """run.json (what only this run knows) and report.md, the one report card (eval/report.py)."""
    from twofiles.eval.report import write_report as write_report_md
    from twofiles.eval.report import write_run_info
    from twofiles.train.sft import skills_table

    mode = (
        f"LoRA r={cfg.lora_rank}, alpha={cfg.lora_alpha:g}{', merged' if cfg.merge else ''}"
        if cfg.lora_rank
        else "full finetuning"
    )
    rows = [
        ("loss (mean over pairs)", "eval_loss", "{:.4f}"),
        ("implicit-reward accuracy (rewards/accuracies)", "eval_rewards/accuracies", "{:.0%}"),
        ("implicit-reward margin (rewards/margins)", "eval_rewards/margins", "{:.4f}"),
        ("log p(chosen) > log p(rejected)", "eval_logps/accuracies", "{:.0%}"),
    ]

    def cell(d: dict[str, float], key: str, f: str) -> str:
        return f.format(d[key]) if key in d else "-"

    table = ["| held-out pairs | before | after |", "| --- | ---: | ---: |"] + [
        f"| {label} | {cell(res.before, k, f)} | {cell(res.after, k, f)} |" for label, k, f in rows
    ]
    sections = [{"title": "Held-out preference pairs", "markdown": "\n".join(table)}]
    skills = skills_table(res.skills_before, res.skills_after)
    if skills:
        sections.append(
            {"title": "Held-out skills (exact match, greedy)", "markdown": "\n".join(skills)}
        )
    skipped = ", ".join(f"{n} {r.replace('_', ' ')}" for r, n in res.skipped.items()) or "none"
    write_run_info(
        out,
        {
            "kind": "dpo",
            "title": "DPO report",
            "description": f"`{cfg.model}` tuned on the preference pairs `{cfg.data}` ({mode}; "
            f"{cfg.loss} loss{f' + {cfg.nll_weight:g} NLL' if cfg.nll_weight else ''}, "
            f"beta {cfg.beta:g}, reference: {res.reference}).",
            "numbers": {
                "train_seconds": res.train_seconds,
                "steps": res.steps,
                "tokens": res.tokens,
                "tokens_per_second": res.tokens_per_second,
                "trainable_params": res.trainable_params,
                "params": res.params,
                "peak_memory_mb": res.peak_memory_mb,
                "model_path": f"`{res.model_path}`",
            },
            "data": f"{res.train_pairs} train / {res.val_pairs} held-out pairs; skipped: "
            f"{skipped}; {res.truncated} with a completion cut to {res.max_len} tokens",
            "sections": sections,
        },
    )
    return write_report_md(out)


__all__ = [
    "REFERENCE_MODES",
    "DPOConfig",
    "DPOObjective",
    "DPOResult",
    "PairBatch",
    "PairLoader",
    "batch_logps",
    "collate",
    "default_optim",
    "dpo",
    "feedback_pairs",
    "load_pairs",
    "precomputed_reference",
    "reference_logps",
]
