"""Supervised finetuning: a base model and conversations in, an assistant out.

Stage 2 of the story: the same next-token prediction as pretraining, on conversations rendered
with the model's chat template, with the loss only on what the assistant writes (the loss mask
of ChatFormat.render). Reads like a recipe: config -> runtime -> model (+ LoRA) -> chat format ->
data (render, pack) -> optimizer -> schedule -> one loop with a `last_step` flag.

What it owns: the SFT loop (full finetuning or LoRA), held-out loss, held-out skill accuracy
before and after (greedy, through the calculator where the task needs it), the run directory
(config.json, metrics.jsonl, atomic checkpoints that resume exactly, loss.png, report.md) and the
final model: model.safetensors carrying the chat template it was trained with, or LoRA adapters
(adapters.safetensors) that load onto their base. What it leaves to others: the data (data.skills,
chat.read_conversations), rendering (chat), packing (data.packing), LoRA (twofiles.lora), the model
math, optimizers (optim), device choice (runtime).

A run is one process (no DDP: SFT sets here are small).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from twofiles import runtime as rt_mod
from twofiles.artifact import atomic_write_bytes
from twofiles.data.packing import Example, PackedLoader, eval_batches, make_example
from twofiles.errors import TwofilesError
from twofiles.lora import (
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
from twofiles.train.runctl import StopSignals

if TYPE_CHECKING:
    from twofiles.artifact import LoadedModel
    from twofiles.chat import ChatFormat, Message
    from twofiles.data.skills import ModelIdentity, SkillTask
    from twofiles.model import Transformer


def default_optim() -> OptimConfig:
    return finetune_optim(lr=1e-3)


@dataclass(kw_only=True)
class SFTConfig(FinetuneConfig):
    """SFT's own fields; the model and LoRA fields are FinetuneConfig's, the run-control
    fields (out, optim, budget, intervals, seed, device, resume, ...) loop.RunConfig's."""

    data: str = "builtin"  # "builtin", "security", "builtin+security" (BUILTIN_DATA) or a JSONL file of {"messages": [...]}
    val_data: str = ""  # held-out JSONL; "" = the mix's own held-out split (builtin) or every 20th conversation of data
    max_val: int = 0  # held-out conversations scored for loss, at most (0: all)
    out: str = "runs/sft"  # (this stage's default run directory)
    optim: OptimConfig = field(default_factory=default_optim)  # (this stage's default)
    merge: bool = False  # LoRA: merge the adapters into the weights and write model.safetensors
    batch_size: int = 8  # rows per micro-batch
    seq_len: int = (
        512  # tokens per row (capped at the model's context); longer conversations are cut
    )
    epochs: float = 1.0  # passes over the training conversations (when max_steps is 0)
    pack: bool = True  # pack several conversations per row (block-diagonal attention)
    skill_tasks: int = 20  # held-out skill tasks per kind scored before and after (0: none)
    skill_max_tokens: int = 48  # tokens per generated reply when scoring skills
    identity: str = ""  # the assistant's name in the identity set; "" = twofiles for Shakespeare models, no identity set otherwise
    mix_seed: int = 0  # seed of the built-in mix
    mix_fraction: float = (
        1.0  # the built-in mix at this fraction of its size (per kind, at least 1)
    )


@dataclass
class SkillReport:
    accuracy: float  # over all tasks
    by_kind: dict[str, float]  # kind -> accuracy
    results: list[dict[str, Any]]  # per task: kind, prompt, answer, reply, tool_calls, correct

    def summary(self) -> dict[str, Any]:
        return {"accuracy": self.accuracy, "by_kind": self.by_kind, "tasks": len(self.results)}


@dataclass
class SFTResult:
    out: str
    model_path: str  # model.safetensors, or adapters.safetensors for unmerged LoRA
    steps: int
    train_seconds: float
    target_tokens: int  # assistant tokens trained on
    tokens: int  # row positions processed (padding excluded)
    tokens_per_second: float
    val_loss_before: float  # held-out loss per assistant token, before finetuning
    val_loss: float  # and after
    skills_before: SkillReport | None
    skills_after: SkillReport | None
    trainable_params: int
    params: int
    peak_memory_mb: float  # peak resident memory of the process (CPU) or allocated (CUDA)

    def summary(self) -> dict[str, Any]:
        out = {
            k: getattr(self, k)
            for k in (
                "out",
                "model_path",
                "steps",
                "train_seconds",
                "target_tokens",
                "tokens",
                "tokens_per_second",
                "val_loss_before",
                "val_loss",
                "trainable_params",
                "params",
                "peak_memory_mb",
            )
        }
        out["skills_before"] = self.skills_before.summary() if self.skills_before else None
        out["skills_after"] = self.skills_after.summary() if self.skills_after else None
        return out


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    except ImportError:  # pragma: no cover (Windows)
        return float("nan")


# ----------------------------------------------------------------------------------------- data


def identity_for(loaded: LoadedModel, name: str = "") -> ModelIdentity | None:
    """What the identity set teaches: twofiles' Shakespeare model knows it is one; other models get
    an identity only when named (a GGUF's own system prompt may say otherwise)."""
    from twofiles.data.skills import ModelIdentity

    prov = loaded.provenance or {}
    seen = {k: prov.get(k) for k in ("corpus", "data", "speedrun", "identity")}
    manifest = (
        Path(str(prov.get("data", ""))) / "manifest.json"
    )  # a pretrained model names its prepared data
    if prov.get("stage") == "pretrain" and manifest.is_file():
        try:
            seen["sources"] = json.loads(manifest.read_text()).get("sources")
        except (OSError, json.JSONDecodeError):
            pass
    shakespeare = "shakespeare" in json.dumps(seen).lower()
    if shakespeare:
        return ModelIdentity(name=name or "twofiles")
    if name:
        return ModelIdentity(
            name=name,
            trained_on="a large collection of text, then conversations",
            trained_on_keyword="text",
            origin="a language model finetuned with twofiles",
        )
    return None


def _mix_sizes(split: str, who: ModelIdentity | None, fraction: float = 1.0) -> dict[str, int]:
    from twofiles.data.skills import MIX_SIZES

    sizes = {k: max(1, round(v * fraction)) for k, v in MIX_SIZES[split].items()}
    if who is None:
        sizes.pop("identity", None)
    return sizes


# the built-in mixes `--data` names; "builtin+security" trains on both, shuffled together
BUILTIN_DATA: tuple[str, ...] = ("builtin", "security")


def _builtin_conversations(
    cfg: SFTConfig, names: list[str], who: ModelIdentity | None
) -> tuple[list[list[Message]], list[list[Message]], dict[str, Any]]:
    import random

    from twofiles.data import security, skills

    prov: dict[str, Any] = {"data": cfg.data, "mix_seed": cfg.mix_seed}
    train: list[list[Message]] = []
    val: list[list[Message]] = []
    if "builtin" in names:
        frac = cfg.mix_fraction
        train += skills.builtin_mix(
            "train", cfg.mix_seed, sizes=_mix_sizes("train", who, frac), who=who
        )
        val += skills.builtin_mix("val", cfg.mix_seed, sizes=_mix_sizes("val", who, frac), who=who)
        prov["mix"] = skills.provenance()
    if "security" in names:
        train += security.security_mix(
            "train", cfg.mix_seed, sizes=security.mix_sizes("train", cfg.mix_fraction)
        )
        val += security.security_mix(
            "val", cfg.mix_seed, sizes=security.mix_sizes("val", cfg.mix_fraction)
        )
        prov["security"] = security.provenance()
    if len(names) > 1:  # interleave the mixes (each is shuffled alone)
        random.Random(f"mixes/{cfg.data}/{cfg.mix_seed}").shuffle(train)
    return train, val, prov


def load_conversations(
    cfg: SFTConfig, who: ModelIdentity | None
) -> tuple[list[list[Message]], list[list[Message]], dict[str, Any]]:
    """(train, held-out) conversations and their provenance."""
    names = cfg.data.split("+")
    if all(n in BUILTIN_DATA for n in names):
        return _builtin_conversations(cfg, names, who)
    from twofiles.chat import read_conversations

    convs = read_conversations(cfg.data)
    if cfg.val_data:
        val = read_conversations(cfg.val_data)
        train = convs
    else:  # every 20th conversation held out (at least one)
        val = convs[::20]
        train = [c for i, c in enumerate(convs) if i % 20]
    if not train or not val:
        raise TwofilesError(f"{cfg.data}: need at least 2 conversations (training and held-out)")
    return (
        train,
        val,
        {
            "data": os.path.abspath(cfg.data),
            "val_data": os.path.abspath(cfg.val_data) if cfg.val_data else "every 20th",
        },
    )


def render_examples(
    fmt: ChatFormat, conversations: list[list[Message]], seq_len: int
) -> tuple[list[Example], dict[str, int]]:
    """Rendered, shifted and cut examples, with counts of what was cut or dropped."""
    examples, stats = [], {"conversations": len(conversations), "cut": 0, "dropped": 0}
    for conv in conversations:
        ids, mask = fmt.render(conv)
        if len(ids) > seq_len + 1:
            stats["cut"] += 1
        ex = make_example(ids, mask, seq_len)
        if ex is None:
            stats["dropped"] += 1
        else:
            examples.append(ex)
    return examples, stats


# -------------------------------------------------------------------------------------- scoring


def masked_loss_sum(model: torch.nn.Module, batch: Any, rt: rt_mod.Runtime) -> torch.Tensor:
    """Sum of the next-token losses over the batch's assistant targets, each conversation seeing
    only itself."""
    with rt.autocast():
        return model(
            batch.inputs,
            batch.targets,
            positions=batch.positions,
            attn_mask=batch.attn_mask(),
            reduction="sum",
        )


@torch.no_grad()
def heldout_loss(
    model: torch.nn.Module,
    examples: list[Example],
    rt: rt_mod.Runtime,
    batch_size: int,
    seq_len: int,
    pad_id: int,
) -> float:
    """Mean loss (nats) per assistant token over the held-out examples."""
    was_training = model.training
    model.eval()
    total, n = 0.0, 0
    for b in eval_batches(examples, batch_size, seq_len, pad_id):
        b = b.to(rt.device)
        total += float(masked_loss_sum(model, b, rt))
        n += b.n_targets
    model.train(was_training)
    return total / max(n, 1)


@torch.no_grad()
def skill_accuracy(
    model: Transformer,
    tokenizer: Any,
    fmt: ChatFormat,
    tasks: list[SkillTask],
    *,
    max_tokens: int = 48,
    progress: bool = False,
    max_rounds: int = 3,
) -> SkillReport:
    """Greedy replies to each task's prompt, scored by its exact checker. A tool call is run (the
    calculator) and the model continues after its result, for at most `max_rounds` replies. The
    tools are not listed in the prompt: the built-in mix teaches the call itself (the
    calculator's schema alone would take more than a small model's whole context). All tasks
    generate together, round by round, through the rollout sampler RL uses (rollouts.py)."""
    from functools import partial

    from twofiles.data.skills import check
    from twofiles.engine import SamplingParams
    from twofiles.rollouts import VerifiableTask, sample_rollouts

    if progress:
        _log(f"skills: {len(tasks)} greedy replies")
    outs = sample_rollouts(
        model,
        tokenizer,
        fmt,
        [
            VerifiableTask(
                f"{t.kind}:{t.prompt}", t.kind, t.prompt, "", t.answer, partial(check, t)
            )
            for t in tasks
        ],
        SamplingParams(temperature=0.0, max_tokens=max_tokens),
        max_rounds=max_rounds,
        max_rows=16,
    )
    results: list[dict[str, Any]] = [
        {
            "kind": t.kind,
            "prompt": t.prompt,
            "answer": t.answer,
            "reply": r.reply,
            "tool_calls": r.tool_calls,
            "correct": r.correct,
        }
        for t, r in zip(tasks, outs)
    ]
    by_kind: dict[str, list[bool]] = {}
    for r in results:
        by_kind.setdefault(r["kind"], []).append(r["correct"])
    acc = {k: sum(v) / len(v) for k, v in by_kind.items()}
    return SkillReport(
        accuracy=sum(r["correct"] for r in results) / max(len(results), 1),
        by_kind=acc,
        results=results,
    )


def heldout_skill_tasks(n_per_kind: int, seed: int, who: ModelIdentity | None) -> list[SkillTask]:
    from twofiles.data import skills

    sizes = {k: min(n_per_kind, v) for k, v in _mix_sizes("val", who).items() if k != "chat"}
    return skills.builtin_tasks("val", seed, sizes=sizes, who=who)


# ----------------------------------------------------------------------------------------- loop


class SFTObjective(loop.ObjectiveBase):
    """Next-token prediction on rendered conversations, the loss only on the assistant's tokens:
    each micro-batch's loss is its sum over assistant targets, counted by their number, so the
    step's loss is the mean over every assistant token of the step."""

    def __init__(
        self,
        rt: rt_mod.Runtime,
        loader: PackedLoader,
        val_ex: list[Example],
        batch_size: int,
        seq_len: int,
        pad_id: int,
    ) -> None:
        self.rt, self.loader, self.val_ex = rt, loader, val_ex
        self.batch_size, self.seq_len, self.pad_id = batch_size, seq_len, pad_id
        self.target_tokens = 0  # assistant tokens trained on

    def next_batch(self) -> Any:
        return self.loader.next_batch().to(self.rt.device)

    def loss(self, model: torch.nn.Module, batch: Any) -> torch.Tensor:
        return masked_loss_sum(model, batch, self.rt)

    def count(self, batch: Any) -> int:
        return int(batch.n_targets)

    def batch_tokens(self, batch: Any) -> int:
        return int((batch.segments >= 0).sum())  # padding excluded

    def step_metrics(self, batches: list[Any]) -> dict[str, Any]:
        self.target_tokens += sum(b.n_targets for b in batches)
        return {"target_tokens": self.target_tokens, "epoch": self.loader.epoch}

    def evaluate(self, model: torch.nn.Module, final: bool) -> dict[str, float]:
        loss = heldout_loss(model, self.val_ex, self.rt, self.batch_size, self.seq_len, self.pad_id)
        return {"val_loss": loss}

    def state_dict(self) -> dict[str, Any]:
        return {"loader": self.loader.state_dict(), "target_tokens": self.target_tokens}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.loader.load_state_dict(state["loader"])
        self.target_tokens = state["target_tokens"]


def sft(cfg: SFTConfig) -> SFTResult:
    """Run (or resume) supervised finetuning as configured."""
    with single_process_run(cfg, "sft", _log) as (rt, signals):
        return _sft(cfg, rt, signals)


def _sft(cfg: SFTConfig, rt: rt_mod.Runtime, signals: StopSignals) -> SFTResult:
    from twofiles.chat import ChatFormat
    from twofiles.formats.resolve import resolve_model

    out = Path(cfg.out)
    ckpt_dir = out / "checkpoints"
    out.mkdir(parents=True, exist_ok=True)
    if not cfg.resume and list_checkpoints(ckpt_dir):
        raise TwofilesError(
            f"{out} already holds checkpoints: pass --resume to continue, or choose another --out"
        )
    if cfg.resume and not list_checkpoints(ckpt_dir):  # before the model load, not after
        raise TwofilesError(f"--resume: no checkpoint in {ckpt_dir}")
    if cfg.merge and not cfg.lora_rank:
        raise TwofilesError("--merge applies to LoRA adapters: pass --lora-rank too")

    # --- model and chat format ---
    t0 = time.perf_counter()
    loaded = resolve_model(cfg.model, device="cpu", cap_context=False)
    fmt = ChatFormat.for_model(loaded)
    tokenizer, model = loaded.tokenizer, loaded.model
    seq_len = min(cfg.seq_len, model.config.max_seq_len - 1)
    who = identity_for(loaded, cfg.identity)
    model.train()
    if cfg.lora is not None:
        apply_lora(model, cfg.lora, seed=cfg.seed)
    else:
        for p in model.parameters():
            p.requires_grad_(True)
    model.to(rt.device)
    n_params = sum(p.numel() for p in model.parameters())
    n_trainable = trainable_parameters(model)
    # what a checkpoint holds: every weight, or only the adapters (the base is the model file)
    ckpt_module: torch.nn.Module = model
    if cfg.lora is not None:
        ckpt_module = torch.nn.ParameterDict(
            {n.replace(".", "__"): p for n, p in model.named_parameters() if p.requires_grad}
        )
    pad_id = tokenizer.special_ids.get("<|pad|>", tokenizer.bos_id)
    _log(
        f"sft: {cfg.model} ({n_params:,} parameters, {n_trainable:,} trained{' by LoRA r=%d' % cfg.lora_rank if cfg.lora_rank else ''}), "
        f"{'built-in' if fmt.builtin else 'its own'} chat template; loaded in {time.perf_counter() - t0:.1f}s"
    )

    # --- data ---
    t0 = time.perf_counter()
    train_convs, val_convs, data_prov = load_conversations(cfg, who)
    if cfg.max_val:
        val_convs = val_convs[: cfg.max_val]
    train_ex, train_stats = render_examples(fmt, train_convs, seq_len)
    val_ex, val_stats = render_examples(fmt, val_convs, seq_len)
    if not train_ex or not val_ex:
        raise TwofilesError(f"no conversation has an assistant turn within {seq_len} tokens")
    loader = PackedLoader(
        train_ex, cfg.batch_size, seq_len, pad_id, seed=cfg.seed, pack_rows=cfg.pack
    )
    rows_per_step = cfg.batch_size * cfg.grad_accum
    steps_per_epoch = math.ceil(loader.rows_per_epoch() / rows_per_step)
    _log(
        f"data: {len(train_ex)} train / {len(val_ex)} held-out conversations ({sum(e.n_targets for e in train_ex):,} assistant tokens), "
        f"{loader.rows_per_epoch()} rows of {seq_len} per epoch; {train_stats['cut']} cut, {train_stats['dropped']} dropped; "
        f"rendered in {time.perf_counter() - t0:.1f}s"
    )

    # --- optimizer, objective, the loop ---
    optimizers = build_optimizers(model, cfg.optim)
    objective = SFTObjective(rt, loader, val_ex, cfg.batch_size, seq_len, pad_id)
    spec = loop.run_spec(
        cfg, "sft", cfg.max_steps or max(1, math.ceil(cfg.epochs * steps_per_epoch))
    )
    loop.open_run(spec, rt)
    before: dict[str, Any] = {"val_loss": float("nan"), "skills": None}
    skill_tasks = heldout_skill_tasks(cfg.skill_tasks, cfg.mix_seed, who) if cfg.skill_tasks else []

    def measure_before(log_metrics: Callable[[dict[str, Any]], None]) -> None:
        """The "before" numbers: the model as it came."""
        before["val_loss"] = objective.evaluate(model, False)["val_loss"]
        log_metrics({"step": 0, "val_loss": before["val_loss"], "time": 0.0})
        if skill_tasks:
            before["skills"] = skill_accuracy(
                model,
                tokenizer,
                fmt,
                skill_tasks,
                max_tokens=cfg.skill_max_tokens,
                progress=cfg.progress,
            )
            log_metrics({"step": 0, "skills": before["skills"].summary()})
        _log(
            f"before: held-out loss {before['val_loss']:.4f}"
            + (f", skill accuracy {before['skills'].accuracy:.1%}" if before["skills"] else "")
        )

    def load_before(state: dict[str, Any]) -> None:
        before["val_loss"] = state["val_loss_before"]
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
            "val_loss_before": before["val_loss"],
            "skills_before": asdict(before["skills"]) if before["skills"] else None,
        },
    )
    step, elapsed = res.step, res.elapsed
    tokens_seen, targets_seen = res.tokens, objective.target_tokens
    val_loss_before: float = before["val_loss"]
    skills_before: SkillReport | None = before["skills"]
    val_loss = float(res.last_eval.get("val_loss", float("nan")))
    metrics_path = out / "metrics.jsonl"
    if res.stopped:  # a checkpoint is saved; the finished run's files come with the resumed run
        from twofiles.train.plots import plot_sft

        plot_sft(metrics_path, out / "loss.png")
        stopped(cfg, "sft", step, res.signum, _log)

    skills_after = None
    if skill_tasks:
        skills_after = skill_accuracy(
            model,
            tokenizer,
            fmt,
            skill_tasks,
            max_tokens=cfg.skill_max_tokens,
            progress=cfg.progress,
        )
        with open(metrics_path, "a") as f:
            f.write(json.dumps({"step": step, "skills": skills_after.summary(), "final": True}))
            f.write("\n")
        _log(f"after: held-out loss {val_loss:.4f}, skill accuracy {skills_after.accuracy:.1%}")

    # --- the finetuned model ---
    provenance = {
        "stage": "sft",
        "base": base_spec(cfg.model),
        "base_provenance": loaded.provenance,
        **data_prov,
        "chat_template": "built-in" if fmt.builtin else "the base model's",
        "tools_in_prompt": False,
        "steps": step,
        "target_tokens": targets_seen,
        "val_loss_before": val_loss_before,
        "val_loss": val_loss,
        "skills_before": skills_before.summary() if skills_before else None,
        "skills_after": skills_after.summary() if skills_after else None,
        "identity": asdict(who) if who else None,
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
    result = SFTResult(
        out=str(out),
        model_path=str(model_path),
        steps=step,
        train_seconds=elapsed,
        target_tokens=targets_seen,
        tokens=tokens_seen,
        tokens_per_second=tokens_seen / max(elapsed, 1e-9),
        val_loss_before=val_loss_before,
        val_loss=val_loss,
        skills_before=skills_before,
        skills_after=skills_after,
        trainable_params=n_trainable,
        params=n_params,
        peak_memory_mb=peak_memory_mb(rt.device),
    )
    from twofiles.train.plots import plot_sft

    plot_sft(metrics_path, out / "loss.png")
    write_report(out, cfg, result, train_stats, val_stats)
    _log(f"saved {model_path}")
    return result


# --------------------------------------------------------------------------------------- report


def skills_table(before: SkillReport | None, after: SkillReport | None) -> list[str]:
    """Markdown rows: held-out exact-match accuracy per kind, before and after."""
    return stages_table([("before", before), ("after", after)])


def stages_table(columns: Sequence[tuple[str, SkillReport | None]]) -> list[str]:
    """Markdown rows: held-out exact-match accuracy per kind, one column per (name, report) on
    the same tasks (a missing report shows as -)."""
    shown = next((r for _, r in reversed(columns) if r is not None), None)
    if shown is None:
        return []
    kinds = list(shown.by_kind)

    def cell(r: SkillReport | None, k: str | None) -> str:
        if r is None:
            return "-"
        v = r.accuracy if k is None else r.by_kind.get(k, float("nan"))
        return f"{100 * v:.0f}%"

    n = {k: len([r for r in shown.results if r["kind"] == k]) for k in kinds}
    rows = [
        "| held-out skill | tasks | " + " | ".join(name for name, _ in columns) + " |",
        "| --- | ---: | " + " | ".join("---:" for _ in columns) + " |",
    ]
    rows += [
        f"| {k} | {n[k]} | " + " | ".join(cell(r, k) for _, r in columns) + " |" for k in kinds
    ]
    rows.append(
        f"| **all** | {sum(n.values())} | "
        + " | ".join(f"**{cell(r, None)}**" for _, r in columns)
        + " |"
    )
    return rows


def write_report(
    out: Path,
    cfg: SFTConfig,
    res: SFTResult,
    train_stats: dict[str, int],
    val_stats: dict[str, int],
) -> Path:
    """What only this run knows goes to run.json (and every skill reply to skills.jsonl); report.md
    is the one report card (eval/report.py), which `twofiles report` rebuilds from the same files."""
    from twofiles.eval.report import write_report as write_report_md
    from twofiles.eval.report import write_run_info

    mode = (
        f"LoRA r={cfg.lora_rank}, alpha={cfg.lora_alpha:g}{', merged' if cfg.merge else ''}"
        if cfg.lora_rank
        else "full finetuning"
    )
    sections = []
    table = skills_table(res.skills_before, res.skills_after)
    if table:
        sections.append(
            {"title": "Held-out skills (exact match, greedy)", "markdown": "\n".join(table)}
        )
    if res.skills_after:
        replies: list[str] = []
        seen: set[str] = set()
        for r in res.skills_after.results:
            if r["kind"] in seen:
                continue
            seen.add(r["kind"])
            call = (
                f" [calculator({r['tool_calls'][0]['arguments']}) -> {r['tool_calls'][0]['result']}]"
                if r["tool_calls"]
                else ""
            )
            replies.append(
                f"- **{r['kind']}** ({'right' if r['correct'] else 'wrong'}): {r['prompt']!r} ->{call} {r['reply']!r}"
            )
        sections.append(
            {
                "title": "Replies after finetuning (first of each kind)",
                "markdown": "\n".join(replies),
            }
        )
    write_run_info(
        out,
        {
            "kind": "sft",
            "title": "SFT report",
            "description": f"`{cfg.model}` finetuned on `{cfg.data}` ({mode}).",
            "numbers": {
                "val_loss_before": res.val_loss_before,
                "val_loss": res.val_loss,
                "train_seconds": res.train_seconds,
                "steps": res.steps,
                "target_tokens": res.target_tokens,
                "tokens": res.tokens,
                "tokens_per_second": res.tokens_per_second,
                "trainable_params": res.trainable_params,
                "params": res.params,
                "peak_memory_mb": res.peak_memory_mb,
                "model_path": f"`{res.model_path}`",
            },
            "data": f"{train_stats['conversations']} train / {val_stats['conversations']} held-out conversations; "
            f"{train_stats['cut']} cut to {cfg.seq_len} tokens, {train_stats['dropped']} without an assistant token dropped",
            "sections": sections,
        },
    )
    if res.skills_after:
        atomic_write_bytes(
            out / "skills.jsonl",
            "".join(
                json.dumps({**r, "stage": stage}) + "\n"
                for stage, rep in (("before", res.skills_before), ("after", res.skills_after))
                if rep
                for r in rep.results
            ).encode(),
        )
    return write_report_md(out)


__all__ = [
    "SFTConfig",
    "SFTResult",
    "SkillReport",
    "default_optim",
    "heldout_loss",
    "heldout_skill_tasks",
    "identity_for",
    "load_conversations",
    "masked_loss_sum",
    "render_examples",
    "sft",
    "skill_accuracy",
    "skills_table",
    "stages_table",
]
