"""The reversal curse (`twofiles experiment reversal MODEL`): finetune on "A is B", test "B is A".

Berglund et al. 2023, experiment 1, on any twofiles model used as a text model (a base model, or
an instruct model given plain text, no chat template): the built-in fictitious facts
(experiments.facts) are trained as plain documents, each fact only in the direction(s) of its
subset, for `epochs` passes with the loss on every token, through the project's one training loop
(train.loop, with SFT's objective over documents whose every token is a target). Then every fact
is tested in both directions on held-out paraphrases (experiments.scoring: greedy exact match and
the log-probability test), before finetuning and after.

Each mitigation is its own finetune from the same base: `none` (the paper's setting) and
`reverse` (Golovneva et al. 2024: every training document's entity-preserving reversal added, so
each document is seen forwards and backwards the same number of times).

The run directory: data/ (the facts as JSONL), before.jsonl, one directory per mitigation (the
training run: config.json, metrics.jsonl, checkpoints while it runs; result.jsonl when done),
results.jsonl (every probe of every stage), summary.json, report.md and reversal.png. A
mitigation whose result.jsonl exists is not run again, and an interrupted finetune resumes from
its checkpoint. What it leaves to others: the data, the scoring, the loop, generation and
log-likelihoods (eval.backends).
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from twofiles.errors import BadInputError
from twofiles.experiments import facts as F
from twofiles.experiments.scoring import (
    CellStats,
    candidates,
    cell_stats,
    exact_match,
)
from twofiles.paths import atomic_write_bytes

if TYPE_CHECKING:
    from twofiles.artifact import LoadedModel
    from twofiles.data.packing import Example
    from twofiles.runtime import Runtime
    from twofiles.train.runctl import StopSignals

MITIGATIONS: tuple[str, ...] = ("none", "reverse")
# above this many parameters the default is LoRA (full finetuning of smollm2 on one CPU thread
# costs about twice as long per token as LoRA: docs/LOG.md, 2026-12-06)
LORA_ABOVE_PARAMS = 50_000_000


@dataclass(kw_only=True)
class ReversalConfig:
    model: str  # the model to finetune: model.safetensors, .gguf, HF directory or alias
    out: str = "runs/reversal"
    facts: int = 30  # facts per subset (three subsets)
    seed: int = 0  # the facts, the candidates of the log-probability test, data order, LoRA init
    epochs: float = 10.0  # passes over the training documents
    mitigation: str = "both"  # none | reverse | both (run both and compare)
    lr: float = (
        0.0  # 0: 1e-3 (small models, or LoRA), 1e-4 (full finetuning above LORA_ABOVE_PARAMS)
    )
    batch_size: int = 8  # packed rows per step
    seq_len: int = 256  # tokens per packed row (capped at the model's context)
    lora_rank: int = -1  # -1: LoRA r=16 above LORA_ABOVE_PARAMS parameters, full below; 0: full
    eval_templates: int = 3  # held-out paraphrases per fact and direction for exact match
    logprob_templates: int = 1  # of which the first this many also take the log-probability test
    candidates: int = 10  # other answers the right one is compared with (same subset)
    max_tokens: int = 24  # greedy tokens per completion
    device: str = "auto"
    dtype: str = "auto"  # training precision (runtime.precision_for); scoring runs in fp32
    threads: int = 0
    progress: bool = True

    def mitigations(self) -> list[str]:
        if self.mitigation == "both":
            return list(MITIGATIONS)
        if self.mitigation not in MITIGATIONS:
            raise BadInputError(
                f"--mitigation: expected none, reverse or both, got {self.mitigation!r}"
            )
        return [self.mitigation]

    def check(self) -> None:
        self.mitigations()
        if self.epochs <= 0:
            raise BadInputError(f"--epochs must be positive, got {self.epochs:g}")
        for name in ("batch_size", "eval_templates", "candidates", "max_tokens"):
            if getattr(self, name) < 1:
                raise BadInputError(f"--{name.replace('_', '-')} must be at least 1")
        if self.seq_len < 16:
            raise BadInputError(f"--seq-len must be at least 16, got {self.seq_len}")
        if self.eval_templates > len(F.HELD_OUT_TEMPLATES["name_to_description"]):
            raise BadInputError(
                f"--eval-templates: at most {len(F.HELD_OUT_TEMPLATES['name_to_description'])}"
            )
        if not 0 <= self.logprob_templates <= self.eval_templates:
            raise BadInputError("--logprob-templates must be between 0 and --eval-templates")
        if not 2 <= self.facts <= F.MAX_FACTS_PER_SUBSET:
            raise BadInputError(
                f"--facts: {self.facts} is not between 2 and {F.MAX_FACTS_PER_SUBSET} (per "
                "subset; the log-probability test compares a fact with others)"
            )


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------- scoring


def score(
    loaded: LoadedModel,
    facts: list[F.Fact],
    cfg: ReversalConfig,
    stage: str,
    *,
    probes: list[F.Probe] | None = None,
    batch_size: int = 32,
) -> list[dict[str, Any]]:
    """Every probe of the facts (or the `probes` given), scored: one record per probe
    (results.jsonl's lines) with the greedy completion, exact match and, for the first
    `logprob_templates` paraphrases, the log-probabilities of the right answer and of its
    candidates (right first)."""
    from twofiles.eval.backends import LocalBackend, greedy_batch

    backend = LocalBackend(loaded, chat=False)
    tok, model = loaded.tokenizer, loaded.model
    probes = F.probes(facts, cfg.eval_templates) if probes is None else probes
    by_id = {f.id: f for f in facts}
    t0 = time.perf_counter()
    prompts = [backend.prompt_ids_for_text(p.prompt) for p in probes]
    order = sorted(range(len(probes)), key=lambda i: -len(prompts[i]))
    completions = [""] * len(probes)
    bar = _bar(len(probes) * 2, f"score {stage}", cfg.progress)
    for b in range(0, len(order), batch_size):
        rows = order[b : b + batch_size]
        texts = greedy_batch(
            model,
            tok,
            [prompts[i] for i in rows],
            max_tokens=cfg.max_tokens,
            stop=[".", "\n"],  # exact match reads the first sentence: no need to go on
            end_ids=backend.end_ids(),
        )
        for i, text in zip(rows, texts):
            completions[i] = text
        bar(len(rows))
    # the log-probability test: the right answer first, then the candidates' answers
    requests: list[tuple[str, str]] = []
    spans: dict[int, tuple[int, int]] = {}
    for i, p in enumerate(probes):
        if p.template >= cfg.logprob_templates:
            continue
        fact = by_id[p.fact]
        others = candidates(fact, facts, cfg.candidates, cfg.seed)
        answers = [p.answer] + [
            o.description if p.direction == "name_to_description" else o.name for o in others
        ]
        spans[i] = (len(requests), len(answers))
        requests += [(p.prompt, " " + a) for a in answers]
    lls: list[tuple[float, bool]] = []
    for b in range(0, len(requests), batch_size):
        lls += backend.loglikelihood(requests[b : b + batch_size], batch_size=batch_size)
        done = min(len(requests), b + batch_size)
        bar(round(len(probes) * (done / len(requests))) - round(len(probes) * (b / len(requests))))
    bar(0, close=True)
    out = []
    for i, p in enumerate(probes):
        span = spans.get(i)
        logp = [lls[j][0] for j in range(span[0], span[0] + span[1])] if span else None
        out.append(
            {
                "stage": stage,
                **asdict(p),
                "completion": completions[i],
                "correct": exact_match(p, completions[i]),
                "logp": logp,
            }
        )
    _log(f"{stage}: {len(probes)} probes scored in {time.perf_counter() - t0:.0f} s")
    return out


def _bar(total: int, desc: str, enabled: bool) -> Callable[..., None]:
    """A tqdm progress bar as a callable: bar(n) advances it, bar(0, close=True) closes it."""
    if not enabled:
        return lambda n, close=False: None
    from tqdm import tqdm

    t = tqdm(total=total, desc=desc, unit="probe", file=sys.stderr, dynamic_ncols=True)

    def step(n: int, close: bool = False) -> None:
        t.update(n)
        if close:
            t.close()

    return step


# ------------------------------------------------------------------------------------ training


def document_examples(
    loaded: LoadedModel, texts: list[str], seq_len: int, prompts: list[str] | None = None
) -> list[Example]:
    """Plain-text documents as training examples: the model's prompt rule (its bos when it adds
    one), the text, then its end token (eos, else bos: how pretraining separates documents), every
    token a target. With `prompts`, each text starts with its prompt and only the rest is a target
    (the held-out answer loss)."""
    from twofiles.data.packing import make_example
    from twofiles.engine import encode_prompt

    tok = loaded.tokenizer
    eos = list(getattr(tok, "eos_ids", None) or [])
    end = eos[0] if eos else tok.bos_id
    out = []
    for i, text in enumerate(texts):
        ids = encode_prompt(tok, text) + [end]
        mask = [1] * len(ids)
        if prompts is not None:
            n = len(encode_prompt(tok, prompts[i]))
            mask = [0] * n + [1] * (len(ids) - n)
        ex = make_example(ids, mask, seq_len)
        if ex is None:
            raise BadInputError(f"a document is empty after tokenizing: {text[:60]!r}")
        out.append(ex)
    return out


def finetune(
    loaded: LoadedModel,
    docs: list[F.Document],
    held_out: dict[str, tuple[list[str], list[str]]],
    cfg: ReversalConfig,
    out: Path,
    rt: Runtime,
    signals: StopSignals,
    lora_rank: int,
    lr: float,
) -> dict[str, Any]:
    """Finetune `loaded.model` in place on the documents through the one training loop; its
    held-out answer loss in each direction (`held_out`: name -> (prompts, documents)) at every
    evaluation. Resumes from the run's checkpoint when there is one."""
    from twofiles.data.packing import PackedLoader
    from twofiles.lora import apply_lora, trainable_parameters
    from twofiles.optim import build_optimizers
    from twofiles.train import loop
    from twofiles.train.checkpoint import list_checkpoints
    from twofiles.train.finetune import FinetuneConfig, finetune_optim
    from twofiles.train.runctl import RunInterrupted
    from twofiles.train.sft import SFTObjective, heldout_loss

    model, tok = loaded.model, loaded.tokenizer
    seq_len = min(cfg.seq_len, model.config.max_seq_len - 1)
    fcfg = FinetuneConfig(
        model=cfg.model,
        out=str(out),
        optim=finetune_optim(lr),
        seed=cfg.seed,
        device=cfg.device,
        dtype=cfg.dtype,
        threads=cfg.threads,
        progress=cfg.progress,
        lora_rank=lora_rank,
        eval_interval=0,
        resume=bool(list_checkpoints(out / "checkpoints")),
        provenance={"experiment": "reversal"},
    )
    model.train()
    if fcfg.lora is not None:
        apply_lora(model, fcfg.lora, seed=cfg.seed)
    else:
        for p in model.parameters():
            p.requires_grad_(True)
    model.to(rt.device)
    ckpt_module: torch.nn.Module = model
    if fcfg.lora is not None:
        ckpt_module = torch.nn.ParameterDict(
            {n.replace(".", "__"): p for n, p in model.named_parameters() if p.requires_grad}
        )
    pad_id = tok.special_ids.get("<|pad|>", tok.bos_id)
    train_ex = document_examples(loaded, [d.text for d in docs], seq_len)
    loader = PackedLoader(train_ex, cfg.batch_size, seq_len, pad_id, seed=cfg.seed)
    # an epoch's last batch may be short (a batch never mixes epochs): steps per epoch round up
    steps = max(1, math.ceil(cfg.epochs * math.ceil(loader.rows_per_epoch() / cfg.batch_size)))
    fcfg.max_steps = steps
    evals = {
        name: document_examples(loaded, texts, seq_len, prompts)
        for name, (prompts, texts) in held_out.items()
    }

    class Objective(SFTObjective):
        """SFT's objective over plain documents; its evaluation is the held-out answer loss in
        each direction (val_loss: the trained direction, the one the loop shows)."""

        def evaluate(self, model: torch.nn.Module, final: bool) -> dict[str, float]:
            return {
                name: heldout_loss(model, ex, self.rt, self.batch_size, self.seq_len, pad_id)
                for name, ex in evals.items()
            }

    objective = Objective(rt, loader, [], cfg.batch_size, seq_len, pad_id)
    spec = loop.run_spec(fcfg, f"finetune {out.name}")
    loop.open_run(spec, rt)
    n_params = sum(p.numel() for p in model.parameters())
    _log(
        f"{out.name}: {len(docs)} documents ({sum(e.n_targets for e in train_ex):,} target tokens), "
        f"{loader.rows_per_epoch()} rows of {seq_len} per epoch, {steps} steps "
        f"({cfg.epochs:g} epochs), {trainable_parameters(model):,} of {n_params:,} parameters "
        f"trained{f' (LoRA r={lora_rank})' if lora_rank else ''}, lr {lr:g}"
    )
    optimizers = build_optimizers(model, fcfg.optim)
    res = loop.run(spec, objective, rt, signals, model, ckpt_module, optimizers)
    if res.stopped:
        _log(f"stopped at step {res.step}; checkpoint saved. Run the same command to continue.")
        raise RunInterrupted(res.signum or 2, res.step, str(out))
    model.eval()
    return {
        "steps": res.step,
        "train_seconds": res.elapsed,
        "tokens": res.tokens,
        "tokens_per_second": res.tokens / max(res.elapsed, 1e-9),
        "documents": len(docs),
        "lora_rank": lora_rank,
        "lr": lr,
        "trainable_params": trainable_parameters(model),
        "final_eval": {k: v for k, v in res.last_eval.items() if k in held_out},
    }


# ------------------------------------------------------------------------------------- the run

# the settings a run directory's results depend on: a resumed run must have the same ones
_DEFINING = (
    "model",
    "facts",
    "seed",
    "epochs",
    "lr",
    "batch_size",
    "seq_len",
    "lora_rank",
    "eval_templates",
    "logprob_templates",
    "candidates",
    "max_tokens",
    "dtype",
)


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    atomic_write_bytes(path, "".join(json.dumps(r) + "\n" for r in rows).encode())


def _check_out(out: Path, cfg: ReversalConfig) -> None:
    """Refuse a run directory holding results made with other settings (mixing them would make
    the table meaningless)."""
    path = out / "config.json"
    if not path.is_file():
        return
    try:
        old = json.loads(path.read_text())
    except json.JSONDecodeError:
        raise BadInputError(f"{path}: not JSON; choose another --out") from None
    new = asdict(cfg)
    diff = [k for k in _DEFINING if old.get(k) != new.get(k)]
    if diff:
        shown = ", ".join(f"{k} {old.get(k)!r} -> {new.get(k)!r}" for k in diff)
        raise BadInputError(
            f"{out} holds a reversal run with other settings ({shown}): choose another --out"
        )


def _held_out_sets(facts: list[F.Fact]) -> dict[str, tuple[list[str], list[str]]]:
    """The held-out answer loss sets: val_loss over the trained direction's probes (every
    subset), reverse_loss over the untrained ones (the two one-direction subsets)."""
    sets: dict[str, tuple[list[str], list[str]]] = {"val_loss": ([], []), "reverse_loss": ([], [])}
    for p in F.probes(facts):
        prompts, texts = sets["val_loss" if p.trained else "reverse_loss"]
        prompts.append(p.prompt)
        texts.append(f"{p.prompt} {p.answer}.")
    return sets


def run_reversal(cfg: ReversalConfig) -> dict[str, Any]:
    """The whole experiment (each part skipped when its result is on disk); the summary."""
    from twofiles.formats.resolve import resolve_model
    from twofiles.train.finetune import single_process_run
    from twofiles.train.loop import RunConfig

    cfg.check()
    out = Path(cfg.out)
    _check_out(out, cfg)
    t_start = time.perf_counter()
    facts = F.make_facts(cfg.facts, cfg.seed)
    run_cfg = RunConfig(device=cfg.device, dtype=cfg.dtype, threads=cfg.threads)
    with single_process_run(run_cfg, "experiment reversal", _log) as (rt, signals):
        # the model first: a model that does not load leaves no run directory behind
        loaded = resolve_model(cfg.model, device="cpu", cap_context=False)
        out.mkdir(parents=True, exist_ok=True)
        F.write_data(out / "data", facts, cfg.eval_templates)
        n_params = sum(p.numel() for p in loaded.model.parameters())
        lora_rank = (
            cfg.lora_rank if cfg.lora_rank >= 0 else (16 if n_params > LORA_ABOVE_PARAMS else 0)
        )
        lr = cfg.lr or (1e-4 if lora_rank == 0 and n_params > LORA_ABOVE_PARAMS else 1e-3)
        atomic_write_bytes(
            out / "config.json",
            json.dumps({**asdict(cfg), "params": n_params}, indent=1).encode(),
        )
        mode = f"LoRA r={lora_rank}" if lora_rank else "full finetuning"
        _log(
            f"reversal: {cfg.model} ({n_params:,} parameters, {mode}, lr {lr:g}); "
            f"{len(facts)} facts ({cfg.facts} per subset), {rt.describe()}"
        )
        records: dict[str, list[dict[str, Any]]] = {}
        train_info: dict[str, dict[str, Any]] = {}
        before_path = out / "before.jsonl"
        if before_path.is_file():
            records["before"] = _read_jsonl(before_path)
        else:
            loaded.model.to(rt.device).eval()
            with torch.no_grad():
                records["before"] = score(loaded, facts, cfg, "before")
            _write_jsonl(before_path, records["before"])
        for m in cfg.mitigations():
            mdir = out / m
            if (mdir / "result.jsonl").is_file() and (mdir / "train.json").is_file():
                records[m] = _read_jsonl(mdir / "result.jsonl")
                train_info[m] = json.loads((mdir / "train.json").read_text())
                _log(f"{m}: done before, read {mdir / 'result.jsonl'}")
                continue
            mdir.mkdir(exist_ok=True)
            model_m = resolve_model(cfg.model, device="cpu", cap_context=False)
            docs = F.training_documents(facts, reverse=(m == "reverse"))
            info = finetune(
                model_m, docs, _held_out_sets(facts), cfg, mdir, rt, signals, lora_rank, lr
            )
            with torch.no_grad():
                records[m] = score(model_m, facts, cfg, m)
            _write_jsonl(mdir / "result.jsonl", records[m])
            atomic_write_bytes(mdir / "train.json", json.dumps(info, indent=1).encode())
            train_info[m] = info
            # the scores are the result; the full-model checkpoints would only fill the disk
            shutil.rmtree(mdir / "checkpoints", ignore_errors=True)
            del model_m
    _write_jsonl(out / "results.jsonl", [r for rs in records.values() for r in rs])
    summary = summarize(records, train_info)
    summary.update(
        {
            "model": cfg.model,
            "params": n_params,
            "mode": mode,
            "facts_per_subset": cfg.facts,
            "seed": cfg.seed,
            "epochs": cfg.epochs,
            "lr": lr,
            "runtime": rt.describe(),
            "this_run_seconds": time.perf_counter() - t_start,
            "out": str(out),
        }
    )
    atomic_write_bytes(out / "summary.json", (json.dumps(summary, indent=1) + "\n").encode())
    atomic_write_bytes(out / "report.md", report(summary).encode())
    plot(summary, out / "reversal.png")
    return summary


# ------------------------------------------------------------------------------------ summaries


def _cell_dict(c: CellStats) -> dict[str, Any]:
    """A cell as JSON: a number that does not exist (no log-prob test) is null, not NaN."""
    lo, hi = c.ci()
    d = {**asdict(c), "accuracy": c.accuracy, "ci95": [lo, hi]}
    return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in d.items()}


def summarize(
    records: dict[str, list[dict[str, Any]]], train_info: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """Per stage: the cells (subset/direction -> CellStats), the forward and reverse exact match
    of the two one-direction subsets (the paper's headline), and the `both` subset's."""
    stages: dict[str, Any] = {}
    for stage, recs in records.items():
        cells = {}
        for subset in F.SUBSETS:
            for direction in F.DIRECTIONS:
                cell = [r for r in recs if r["subset"] == subset and r["direction"] == direction]
                cells[f"{subset}/{direction}"] = _cell_dict(cell_stats(cell))
        one_way = [r for r in recs if r["subset"] != "both"]
        fwd = [r for r in one_way if r["trained"]]
        rev = [r for r in one_way if not r["trained"]]
        both = [r for r in recs if r["subset"] == "both"]
        stages[stage] = {
            "cells": cells,
            "forward": _cell_dict(cell_stats(fwd)),
            "reverse": _cell_dict(cell_stats(rev)),
            "both": _cell_dict(cell_stats(both)),
        }
    head = {
        stage: {
            "forward_accuracy": s["forward"]["accuracy"],
            "reverse_accuracy": s["reverse"]["accuracy"],
            "both_accuracy": s["both"]["accuracy"],
            "reverse_logprob_diff": s["reverse"]["lp_diff"],
            "reverse_top1": s["reverse"]["top1"],
            "reverse_lp_n": s["reverse"]["lp_n"],
        }
        for stage, s in stages.items()
    }
    wall = sum(float(t.get("train_seconds", 0.0)) for t in train_info.values())
    return {"headline": head, "stages": stages, "train": train_info, "train_seconds": wall}


def _pct(c: dict[str, Any]) -> str:
    lo, hi = c["ci95"]
    return f"{c['correct']}/{c['n']} ({c['accuracy']:.0%} [{lo:.0%}, {hi:.0%}])"


def _lp(c: dict[str, Any]) -> str:
    if not c["lp_n"]:
        return "-"
    return (
        f"{c['lp_diff']:+.2f} [{c['lp_lo']:+.2f}, {c['lp_hi']:+.2f}], "
        f"top-1 {c['top1']}/{c['lp_n']}, p={c['sign_p']:.2g}"
    )


def report(summary: dict[str, Any]) -> str:
    """report.md: what was done, the table, the training runs and a few completions."""
    stages = summary["stages"]
    names = list(stages)
    title = {"before": "before finetuning", "none": "finetuned", "reverse": "finetuned + reverse"}
    lines = [
        "# The reversal curse",
        "",
        f"`{summary['model']}` ({summary['params']:,} parameters, {summary['mode']}, lr "
        f"{summary['lr']:g}, {summary['epochs']:g} epochs), finetuned as a text model on "
        f"{3 * summary['facts_per_subset']} fictitious facts (seed {summary['seed']}): "
        f"{summary['facts_per_subset']} trained only name -> description, as many only "
        "description -> name, as many in both orders. Tested on held-out paraphrases in both "
        "directions. **Exact match**: the greedy completion's first sentence holds the name "
        "(or the description's key words, in order); Wilson 95% intervals. **Log-prob test**: "
        "log P(right answer) minus the mean log P of other facts' answers from the same subset, "
        "nats, mean with a 95% t interval; top-1: the right answer is the most likely of all; "
        "p: two-sided sign test. `finetuned + reverse`: the mitigation (every training "
        "document's entity-preserving reversal added, Golovneva et al. 2024).",
        "",
        "## Headline (the two one-direction subsets)",
        "",
        "| stage | forward exact match (trained direction) | reverse exact match | reverse log-prob test |",
        "| --- | ---: | ---: | ---: |",
    ]
    for s in names:
        st = stages[s]
        lines.append(
            f"| {title.get(s, s)} | {_pct(st['forward'])} | {_pct(st['reverse'])} | {_lp(st['reverse'])} |"
        )
    lines += [
        "",
        "## Every subset and direction",
        "",
        "| subset | tested direction | trained | "
        + " | ".join(f"{title.get(s, s)}: exact match | log-prob test" for s in names)
        + " |",
        "| --- | --- | --- | " + " | ".join("---: | ---:" for _ in names) + " |",
    ]
    for subset in F.SUBSETS:
        for direction in F.DIRECTIONS:
            key = f"{subset}/{direction}"
            trained = "yes" if direction in F.TRAINED[subset] else "**no**"
            cells = " | ".join(
                f"{_pct(stages[s]['cells'][key])} | {_lp(stages[s]['cells'][key])}" for s in names
            )
            lines.append(
                f"| {subset.replace('_', ' ')} | {direction.replace('_', ' ')} | {trained} | {cells} |"
            )
    lines += ["", "![exact match and log-prob test](reversal.png)", "", "## Training", ""]
    for m, t in summary["train"].items():
        ev = ", ".join(f"{k} {v:.3f}" for k, v in t.get("final_eval", {}).items())
        lines.append(
            f"- {title.get(m, m)}: {t['documents']} documents, {t['steps']} steps, "
            f"{t['tokens']:,} tokens in {t['train_seconds']:.0f} s "
            f"({t['tokens_per_second']:,.0f} tokens/s); held-out answer loss (nats/token): {ev}"
        )
    lines.append(f"\nRuntime: {summary['runtime']}.")
    return "\n".join(lines) + "\n"


def plot(summary: dict[str, Any], path: Path) -> Path:
    """Two panels over the six subset/direction cells, one bar per stage: exact match (Wilson
    95%) and the log-prob test's mean difference (95% t interval)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from twofiles.plots import save_png

    stages = summary["stages"]
    names = list(stages)
    keys = [f"{s}/{d}" for s in F.SUBSETS for d in F.DIRECTIONS]
    short = {"name_to_description": "N→D", "description_to_name": "D→N", "both": "both"}
    labels = [
        f"{short[s]} facts\ntest {short[d]}{'' if d in F.TRAINED[s] else ' (rev)'}"
        for s in F.SUBSETS
        for d in F.DIRECTIONS
    ]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    width = 0.8 / len(names)
    for j, s in enumerate(names):
        xs = [i + (j - (len(names) - 1) / 2) * width for i in range(len(keys))]
        cells = [stages[s]["cells"][k] for k in keys]
        acc = [c["accuracy"] for c in cells]
        err = [
            [max(0.0, a - c["ci95"][0]) for a, c in zip(acc, cells)],
            [max(0.0, c["ci95"][1] - a) for a, c in zip(acc, cells)],
        ]
        axes[0].bar(xs, acc, width, yerr=err, label=s, capsize=2)
        lp = [c["lp_diff"] if c["lp_n"] else 0.0 for c in cells]
        lp_err = [
            [max(0.0, v - c["lp_lo"]) if c["lp_n"] > 1 else 0.0 for v, c in zip(lp, cells)],
            [max(0.0, c["lp_hi"] - v) if c["lp_n"] > 1 else 0.0 for v, c in zip(lp, cells)],
        ]
        axes[1].bar(xs, lp, width, yerr=lp_err, label=s, capsize=2)
    for ax in axes:
        ax.set_xticks(range(len(keys)))
        ax.set_xticklabels(labels, fontsize=7)
        ax.grid(alpha=0.3, axis="y")
    axes[0].set_ylim(0, 1.05)
    axes[0].set_ylabel("exact match (Wilson 95%)")
    axes[1].axhline(0, color="black", linewidth=0.8)
    axes[1].set_ylabel("log P(right) − mean log P(others), nats")
    axes[0].legend(fontsize=8, title="stage", title_fontsize=8)
    fig.suptitle(
        f"The reversal curse: {Path(summary['model']).name} ({summary['mode']})", fontsize=10
    )
    fig.tight_layout()
    return save_png(fig, path)


__all__ = [
    "MITIGATIONS",
    "ReversalConfig",
    "document_examples",
    "finetune",
    "plot",
    "report",
    "run_reversal",
    "score",
    "summarize",
]
