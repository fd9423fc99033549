"""The speedrun: tokenizer -> data -> pretrain -> samples -> SFT -> RL -> report, on the built-in
corpus. The base model (through its samples) runs within a wall-clock budget; the post-training
stages run just after it, each with its own training budget: SFT (the preset's `sft`) finetunes it
on the built-in mix into a chat assistant that calls the calculator, then RL (the preset's `rl`)
improves the assistant against the skill tasks' verifiers. The report shows each stage's effect
on the same held-out skill tasks, side by side. Every stage is the same library code the
individual verbs use.

What it owns: the order of the stages, the budget arithmetic (training gets what the other
stages leave), and what goes into the run's report (run.json, eval.json). What it leaves to
others: everything each stage does; writing report.md (eval/report.py, shared with `twofiles report`).
"""

from __future__ import annotations

import json
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from twofiles.presets import Preset

# Seconds kept back from the training budget for what follows the final evaluation (which the
# training loop budgets itself): samples, saving, the plot and the report (~3 s for cpu-5min),
# plus a margin for this machine's ±30% speed drift.
TAIL_RESERVE_S = 12.0

SAMPLE_PROMPTS = ("ROMEO.\n", "To be, or not to be", "KING.\nMy lords,")
SPEEDRUN_BENCHMARKS = (
    "quotes",
    "capitals",
)  # multiple choice, 30 examples each: seconds on a small model


@dataclass
class SpeedrunResult:
    out: str
    model_path: str
    val_bpb: float
    val_loss: float
    wall_seconds: float
    train_seconds: float
    steps: int
    tokens: int
    params: int
    preset: str
    stages: dict[str, float]
    report: str
    base_wall_seconds: float = (
        0.0  # wall time of the budgeted part: tokenizer through the base model's samples
    )
    chat_model_path: str = ""  # the finetuned assistant ("" without an SFT stage)
    sft: dict[str, Any] | None = None  # the SFT stage's summary (SFTResult.summary())
    rl: dict[str, Any] | None = None  # the RL stage's summary, with the held-out skills after it
    precision: dict[str, str] = field(
        default_factory=dict
    )  # the base model's {"dtype", "reason"}: runtime's measured choice

    def summary(self) -> dict[str, Any]:
        return {
            k: getattr(self, k)
            for k in (
                "val_bpb",
                "val_loss",
                "wall_seconds",
                "base_wall_seconds",
                "train_seconds",
                "steps",
                "tokens",
                "params",
                "preset",
                "out",
                "model_path",
                "chat_model_path",
                "report",
                "precision",
                "stages",
                "sft",
                "rl",
            )
        }


def _say(msg: str) -> None:
    print(f"[speedrun] {msg}", file=sys.stderr, flush=True)


def run_speedrun(
    preset: Preset,
    out: str | Path,
    *,
    budget_s: float | None = None,
    device: str = "auto",
    seed: int = 1337,
    progress: bool = True,
    overrides: dict[str, Any] | None = None,
    started: float | None = None,
    sft_stage: bool = True,
    rl_stage: bool = True,
) -> SpeedrunResult:
    """Run every stage: the base model within `budget_s` seconds of wall time counted from
    `started` (a time.perf_counter() value; default now: pass the process's start so imports
    count too), then, with `sft_stage` and a preset that has one, the SFT stage."""
    from twofiles.data.prepare import prepare, train_texts
    from twofiles.tokenizer import Tokenizer
    from twofiles.train.pretrain import PretrainConfig, pretrain

    t_start = time.perf_counter() if started is None else started
    out = Path(out)
    _clear_previous_run(out)
    out.mkdir(parents=True, exist_ok=True)
    _write_marker(out, preset)
    budget = preset.budget_s if budget_s is None else budget_s
    stages: dict[str, float] = {}

    # 1. tokenizer, trained on the training plays only (the held-out plays stay unseen)
    t = time.perf_counter()
    tokenizer = Tokenizer.train(train_texts(["builtin:shakespeare"]), preset.vocab_size)
    tokenizer.save(out / "tokenizer.json")
    stages["tokenizer"] = time.perf_counter() - t
    _say(f"tokenizer: {tokenizer.vocab_size} tokens in {stages['tokenizer']:.1f}s")

    # 2. data: token shards with whole plays held out for validation
    t = time.perf_counter()
    manifest = prepare(["builtin:shakespeare"], out / "data", tokenizer, progress=False)
    stages["data"] = time.perf_counter() - t
    tr, va = manifest["splits"]["train"], manifest["splits"]["val"]
    _say(
        f"data: {tr['tokens']:,} train / {va['tokens']:,} val tokens ({tr['bytes'] / max(tr['tokens'], 1):.2f} bytes/token) in {stages['data']:.1f}s"
    )

    # 3. pretrain for whatever the budget leaves
    cfg = PretrainConfig(
        data=str(out / "data"),
        out=str(out),
        model=preset.model_config(),
        optim=preset.optim_config(),
        seed=seed,
        device=device,
        progress=progress,
        sample_prompt=SAMPLE_PROMPTS[0],
        provenance={"speedrun": preset.name, "corpus": "builtin:shakespeare"},
    )
    for k, v in {**preset.train, **(overrides or {})}.items():  # PretrainConfig fields
        setattr(cfg, k, v)
    if budget > 0:
        cfg.time_budget_s = max(10.0, budget - (time.perf_counter() - t_start) - TAIL_RESERVE_S)
        _say(f"pretrain: {cfg.time_budget_s:.0f}s of training in a {budget:.0f}s budget")
    t = time.perf_counter()
    res = pretrain(cfg)
    stages["pretrain"] = time.perf_counter() - t

    # 4. samples from the final model
    t = time.perf_counter()
    samples = _samples(res.model_path, seed)
    stages["samples"] = time.perf_counter() - t
    base_wall = time.perf_counter() - t_start

    # the cheap built-in benchmarks of the base model, for the report card (after the budget)
    t = time.perf_counter()
    _benchmarks(res.model_path, out)
    stages["benchmarks"] = time.perf_counter() - t

    # 5. SFT: the base model becomes a chat assistant (after the budget, with its own)
    sft_res = None
    if preset.sft and sft_stage:
        from twofiles.train.sft import sft

        t = time.perf_counter()
        scfg = preset.sft_config(res.model_path, str(out / "sft"))
        scfg.device, scfg.seed, scfg.progress = device, seed, progress
        scfg.provenance = {"speedrun": preset.name}
        _say(
            "sft: finetuning on the built-in mix"
            + (f" for {scfg.time_budget_s:.0f}s of training" if scfg.time_budget_s else "")
        )
        sft_res = sft(scfg)
        stages["sft"] = time.perf_counter() - t

    # 6. RL: the assistant improves against the skill tasks' verifiers (after SFT, its own budget)
    rl_summary = None
    if sft_res is not None and preset.rl and rl_stage:
        t = time.perf_counter()
        rl_summary = _rl_stage(preset, res.model_path, sft_res, scfg, out, device, seed, progress)
        stages["rl"] = time.perf_counter() - t
    wall = time.perf_counter() - t_start

    report = _write_report(
        out, preset, res, stages, wall, samples, manifest, budget, sft_res, rl_summary
    )
    return SpeedrunResult(
        out=str(out),
        model_path=res.model_path,
        val_bpb=res.val_bpb,
        val_loss=res.val_loss,
        wall_seconds=wall,
        train_seconds=res.train_seconds,
        steps=res.steps,
        tokens=res.tokens,
        params=res.params,
        preset=preset.name,
        stages=stages,
        report=str(report),
        base_wall_seconds=base_wall,
        chat_model_path=(
            rl_summary["model_path"] if rl_summary else sft_res.model_path if sft_res else ""
        ),
        sft=sft_res.summary() if sft_res else None,
        rl={k: v for k, v in rl_summary.items() if k != "skills"} if rl_summary else None,
        precision={"dtype": res.precision, "reason": res.precision_reason},
    )


def _rl_stage(
    preset: Preset,
    base_path: str,
    sft_res: Any,
    scfg: Any,
    out: Path,
    device: str,
    seed: int,
    progress: bool,
) -> dict[str, Any]:
    """RL on the SFT assistant, then the held-out skills of its result scored on SFT's own tasks
    (the same prompts, the same greedy replies through the calculator), so the report's columns
    compare like with like."""
    from twofiles.chat import ChatFormat
    from twofiles.formats.resolve import resolve_model
    from twofiles.train.rl import rl
    from twofiles.train.sft import heldout_skill_tasks, identity_for, skill_accuracy

    rcfg = preset.rl_config(sft_res.model_path, str(out / "rl"))
    rcfg.device, rcfg.seed, rcfg.progress = device, seed, progress
    rcfg.provenance = {"speedrun": preset.name}
    _say(
        f"rl: against the verifiers of {rcfg.tasks}"
        + (f" for {rcfg.time_budget_s:.0f}s of training" if rcfg.time_budget_s else "")
    )
    rl_res = rl(rcfg)
    summary = rl_res.summary()
    if scfg.skill_tasks:
        who = identity_for(resolve_model(base_path, device="cpu"), scfg.identity)
        tasks = heldout_skill_tasks(scfg.skill_tasks, scfg.mix_seed, who)
        loaded = resolve_model(rl_res.model_path, device="cpu")
        summary["skills"] = skill_accuracy(
            loaded.model,
            loaded.tokenizer,
            ChatFormat.for_model(loaded),
            tasks,
            max_tokens=scfg.skill_max_tokens,
        )
        summary["skills_after"] = summary["skills"].summary()
        _say(f"rl: held-out skills {summary['skills'].accuracy:.1%} after RL")
    return summary


# Written first into a speedrun's directory: what says the files there are a speedrun's own.
MARKER = "speedrun.json"

# What a speedrun writes into its directory; a new speedrun into the same directory replaces
# exactly these (so `make speedrun` can be run again) and leaves anything else there alone.
RUN_FILES = (
    MARKER,
    "tokenizer.json",
    "config.json",
    "metrics.jsonl",
    "loss.png",
    "model.safetensors",
    "report.md",
    "run.json",
    "eval.json",
)
RUN_DIRS = ("checkpoints", "data", "sft", "rl")


def _write_marker(out: Path, preset: Preset) -> None:
    from datetime import UTC, datetime

    from twofiles.artifact import atomic_write_bytes

    doc = {
        "kind": "speedrun",
        "preset": preset.name,
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    atomic_write_bytes(out / MARKER, json.dumps(doc, indent=1).encode())


def _is_speedrun(out: Path) -> bool:
    """The directory's run is a speedrun's: its marker says so (or, from before the marker, its
    run.json's title does)."""
    for name, key, want in ((MARKER, "kind", "speedrun"), ("run.json", "title", "Speedrun report")):
        try:
            doc = json.loads((out / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(doc, dict) and str(doc.get(key, "")).startswith(want):
            return True
    return False


def _clear_previous_run(out: Path) -> None:
    """Replace a previous speedrun's own files; refuse any other run (pretrain, sft, ...): a
    speedrun never destroys work it did not make."""
    import shutil

    from twofiles.errors import TwofilesError

    present = [n for n in (*RUN_FILES, *RUN_DIRS) if (out / n).exists()]
    if not present:
        return
    if not _is_speedrun(out):
        raise TwofilesError(
            f"{out} holds another run ({', '.join(present)}), not a speedrun's: "
            "choose another --out, or move that run away"
        )
    _say(f"replacing the previous run in {out}")
    for name in RUN_DIRS:
        shutil.rmtree(out / name, ignore_errors=True)
    for name in RUN_FILES:
        (out / name).unlink(missing_ok=True)


def _samples(model_path: str, seed: int) -> list[tuple[str, str]]:
    from twofiles.artifact import load_model
    from twofiles.engine import SamplingParams, generate

    loaded = load_model(model_path)
    tok = loaded.tokenizer
    out = []
    for i, prompt in enumerate(SAMPLE_PROMPTS):
        ids = [tok.bos_id] + tok.encode(prompt)
        gen = list(
            generate(
                loaded.model,
                ids,
                SamplingParams(temperature=0.8, top_k=50, max_tokens=80, seed=seed + i),
                tokenizer=tok,
            )
        )
        out.append((prompt, tok.decode(gen)))
    return out


def _benchmarks(model_path: str, out: Path) -> None:
    """The built-in multiple-choice tasks (a second or two for a small model) into eval.json."""
    from twofiles.artifact import atomic_write_bytes, load_model
    from twofiles.eval.backends import LocalBackend
    from twofiles.eval.runner import evaluate

    results = evaluate(
        LocalBackend(load_model(model_path), name=model_path, chat=False),
        list(SPEEDRUN_BENCHMARKS),
        progress=False,
    )
    doc = {"model": model_path, "chat": False, "results": [r.to_dict() for r in results]}
    atomic_write_bytes(out / "eval.json", json.dumps(doc, indent=1, default=str).encode())


def _write_report(
    out: Path,
    preset: Preset,
    res: Any,
    stages: dict[str, float],
    wall: float,
    samples: list[tuple[str, str]],
    manifest: dict[str, Any],
    budget: float,
    sft_res: Any = None,
    rl_summary: dict[str, Any] | None = None,
) -> Path:
    """What only the speedrun knows goes to run.json; report.md itself is the shared report card."""
    import torch

    from twofiles.eval.report import write_report, write_run_info
    from twofiles.runtime import cpu_identity

    tr, va = manifest["splits"]["train"], manifest["splits"]["val"]
    sections = []
    if sft_res is not None:
        from twofiles.train.sft import skills_table

        rel = (
            Path(sft_res.out).relative_to(out)
            if Path(sft_res.out).is_relative_to(out)
            else Path(sft_res.out)
        )
        sections.append(
            {
                "title": "SFT: the base model becomes a chat assistant",
                "markdown": "\n".join(
                    [
                        f"Finetuned on the built-in mix (chat dialogs, calculator arithmetic, spelling, letter counting, instructions, identity) "
                        f"after the base model's budget: {sft_res.steps} steps in {sft_res.train_seconds:.1f} s of training, "
                        f"{sft_res.target_tokens:,} assistant tokens ({stages.get('sft', 0):.1f} s for the whole stage, evaluations included). "
                        f"Held-out loss per assistant token {sft_res.val_loss_before:.3f} -> **{sft_res.val_loss:.3f}**. "
                        f"The assistant: `{sft_res.model_path}`; its own report: [{rel}/report.md]({rel}/report.md).",
                        "",
                        *skills_table(sft_res.skills_before, sft_res.skills_after),
                    ]
                ),
            }
        )
    if sft_res is not None and rl_summary is not None:
        from twofiles.train.sft import stages_table

        r = rl_summary
        rel = Path(r["out"]).relative_to(out) if Path(r["out"]).is_relative_to(out) else r["out"]
        columns = [("base", sft_res.skills_before), ("SFT", sft_res.skills_after)]
        if r.get("skills") is not None:
            columns.append(("SFT + RL", r["skills"]))
        sections.append(
            {
                "title": "RL: the assistant against the skill tasks' verifiers",
                "markdown": "\n".join(
                    [
                        f"After SFT, {r['steps']} RL steps in {r['train_seconds']:.1f} s of training "
                        f"({stages.get('rl', 0):.1f} s for the whole stage): groups of rollouts sampled in one batch, "
                        f"rewarded by the verifier, advantage = reward - the group's mean. "
                        f"Mean reward {r['mean_reward']:.2f}; {100 * r['frac_zero_std']:.0f}% of groups all equal (no signal); "
                        f"{r['rollouts']} rollouts at {r['rollout_tok_s']:.0f} tokens/s. "
                        f"The model: `{r['model_path']}`; its own report: [{rel}/report.md]({rel}/report.md).",
                        "",
                        "Each stage on the same held-out skill tasks (exact match, greedy, the calculator run where called):",
                        "",
                        *stages_table(columns),
                    ]
                ),
            }
        )
    base = sum(stages.get(k, 0.0) for k in ("tokenizer", "data", "pretrain", "samples"))
    write_run_info(
        out,
        {
            "kind": "speedrun",
            "title": f"Speedrun report: {preset.name}",
            "description": f"{preset.description}.",
            "numbers": {
                "val_bpb": res.val_bpb,
                "val_loss": res.val_loss,
                "wall_seconds": wall,
                "base_wall_seconds": base,
                "budget_s": budget,
                "train_seconds": res.train_seconds,
                "steps": res.steps,
                "tokens": res.tokens,
                "tokens_per_second": res.tokens_per_second,
                "params": res.params,
                "achieved_flops": res.achieved_flops,
                "peak_flops": res.peak_flops,
                "mfu": res.mfu,
            },
            "stages": stages,
            "data": f"Built-in Shakespeare; whole plays held out for validation. Train: {tr['documents']} works, {tr['tokens']:,} tokens, "
            f"{tr['bytes']:,} bytes. Validation: {va['documents']} works, {va['tokens']:,} tokens, {va['bytes']:,} bytes.",
            "hardware": f"{cpu_identity()[0]} ({platform.machine()}), {torch.get_num_threads()} threads, torch {torch.__version__}, Python {platform.python_version()}; "
            f"base model: {res.precision_reason or res.precision}",
            "precision": {"dtype": res.precision, "reason": res.precision_reason},
            "samples": [{"prompt": p, "text": t} for p, t in samples],
            "sample_settings": "temperature 0.8, top-k 50",
            "sections": sections,
        },
    )
    return write_report(out)
