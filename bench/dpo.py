"""Our DPO step against TRL's DPOTrainer: training throughput and peak memory, same model, pairs
and batch.

The model is a Hugging Face directory (default: SmolLM2-135M exported from the built-in GGUF with
`twofiles export hf`, fp32), loaded by each contender its own way: ours through resolve_model, TRL's
through transformers. The pairs are plain-text (TRL's standard form): a passage of the built-in
Shakespeare as the prompt, its continuation as the chosen reply and another passage's as the
rejected one, so every batch has about the same length. Full finetuning, AdamW, fp32 on the CPU.

Contenders:

    ours           twofiles' DPOObjective with the reference log-probs precomputed once, stepped as
                   train/loop.py steps it (next batch, loss / count, backward, clip, AdamW)
    trl            DPOTrainer with precompute_ref_log_probs=True and gradient_checkpointing=False
                   (the same work as ours), stepped as its Trainer loop steps it (next batch,
                   training_step: loss and backward, clip, optimizer step)
    trl-default    DPOTrainer as its config defaults it on this machine: a reference model copy
                   run every step, gradient checkpointing on (bf16 off: fp32 on the CPU)
    ours-lora      ours with LoRA r=8 on every projection, the reference the adapters switched off
                   (TRL's LoRA needs peft, which is not installed: no TRL row for it)

Speed: ours, trl and trl-default in one process, a step of each in turn (the order reversed every
round) after warm-up, so a shared machine's load hits them alike; tokens (prompt + completion
positions of the chosen and rejected rows, padding excluded) per step over the fastest step's
wall time (the step least touched by other jobs, timeit's rule), the median step's and the mean.
Memory: each contender alone in its own process: the peak resident set once the model, data and
reference are loaded, with the kernel's peak counter reset there (VmHWM; "training peak"), and the
whole process's ru_maxrss (loading and imports included).

    .venv/bin/python bench/dpo.py [--hf-dir DIR] [--steps 6] [--solo-steps 2] [--warmup 1]
        [--batch-size 2] [--max-len 128] [--threads 2] [--json-out bench/results/dpo.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CONTENDERS = ("ours", "trl", "trl-default", "ours-lora")


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def hwm_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def reset_peak() -> None:
    """Reset VmHWM (Linux: 5 > clear_refs), so loading's peak does not hide training's."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def make_pairs(path: Path, n: int, prompt_words: int, reply_words: int) -> None:
    from twofiles.data.builtin import builtin_text

    words = builtin_text("train")[:400_000].split()
    span = prompt_words + reply_words
    rows = []
    for i in range(n):
        a, b = i * span, (i + n) * span
        rows.append(
            {
                "prompt": " ".join(words[a : a + prompt_words]),
                "chosen": " " + " ".join(words[a + prompt_words : a + span]),
                "rejected": " " + " ".join(words[b + prompt_words : b + span]),
            }
        )
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


# ------------------------------------------------------------------------------- one contender


def setup_ours(args: argparse.Namespace, lora: bool = False):
    """One step of ours, as train/loop.py runs it: () -> (seconds, tokens)."""
    import torch

    from twofiles import runtime
    from twofiles.chat import ChatFormat
    from twofiles.data.preferences import read_preferences, render_pairs
    from twofiles.formats.resolve import resolve_model
    from twofiles.lora import LoRAConfig, apply_lora
    from twofiles.optim import build_optimizers
    from twofiles.train.dpo import (
        DPOObjective,
        PairLoader,
        default_optim,
        fused_adamw,
        precomputed_reference,
    )

    rt = runtime.setup("cpu", "fp32", args.threads)
    loaded = resolve_model(args.hf_dir)
    model = loaded.model.train()
    if lora:
        apply_lora(model, LoRAConfig(rank=8, alpha=16))
    else:
        model.requires_grad_(True)
    fmt = ChatFormat.for_model(loaded)
    pairs, _ = render_pairs(read_preferences(args.pairs), fmt, max_len=args.max_len)
    pad = loaded.tokenizer.special_ids.get("<|pad|>", loaded.tokenizer.bos_id)
    ref = (
        None
        if lora
        else precomputed_reference(
            Path(args.tmp) / "ref.safetensors", model, {"train": pairs}, rt, args.batch_size, pad
        )
    )
    objective = DPOObjective(
        rt, model, PairLoader(pairs, args.batch_size, pad, seed=0), [], beta=0.1,
        loss="sigmoid", reference=ref,
    )  # fmt: skip
    optim = default_optim()
    opts = fused_adamw(build_optimizers(model, optim))
    params = [p for p in model.parameters() if p.requires_grad]

    def step() -> tuple[float, int]:
        t0 = time.perf_counter()
        batch = objective.next_batch()
        loss = objective.loss(model, batch)
        (loss / objective.count(batch)).backward()
        torch.nn.utils.clip_grad_norm_(params, optim.grad_clip)
        for opt in opts:
            opt.step()
            opt.zero_grad(set_to_none=True)
        loss.item()
        return time.perf_counter() - t0, objective.batch_tokens(batch)

    return step


def setup_trl(args: argparse.Namespace, default: bool):
    """One step of TRL's DPOTrainer as its Trainer loop runs it (next batch, training_step: the
    loss and its backward, clip, optimizer step): () -> (seconds, tokens)."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    torch.set_num_threads(args.threads)
    tok = AutoTokenizer.from_pretrained(args.hf_dir)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(args.hf_dir, dtype=torch.float32)
    rows = [json.loads(ln) for ln in Path(args.pairs).read_text().splitlines()]
    cfg = DPOConfig(
        output_dir=str(Path(args.tmp) / "trl"),
        beta=0.1,
        learning_rate=1e-5,
        per_device_train_batch_size=args.batch_size,
        max_steps=10_000,
        max_length=args.max_len,
        max_grad_norm=1.0,
        bf16=False,
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=0,
        gradient_checkpointing=default,
        precompute_ref_log_probs=not default,
    )
    trainer = DPOTrainer(
        model=model, args=cfg, processing_class=tok, train_dataset=Dataset.from_list(rows)
    )
    trainer.create_optimizer()
    trainer.current_gradient_accumulation_steps = 1  # as Trainer.train() sets it
    trainer.model.train()
    if default:  # as Trainer.train() switches it on
        trainer.model.gradient_checkpointing_enable(cfg.gradient_checkpointing_kwargs)
    batches = iter(())

    def step() -> tuple[float, int]:
        nonlocal batches
        t0 = time.perf_counter()
        inputs = next(batches, None)
        if inputs is None:
            batches = iter(trainer.get_train_dataloader())
            inputs = next(batches)
        loss = trainer.training_step(trainer.model, inputs)
        torch.nn.utils.clip_grad_norm_(trainer.model.parameters(), 1.0)
        trainer.optimizer.step()
        trainer.optimizer.zero_grad(set_to_none=True)
        loss.item()
        # positions that predict a token, as ours counts them: a row of n tokens is n - 1 inputs
        mask = inputs["attention_mask"]
        return time.perf_counter() - t0, int(mask.sum()) - mask.shape[0]

    return step


def contender(args: argparse.Namespace) -> None:
    """One contender alone (its memory), or `alternate`: ours, trl and trl-default in one process,
    step for step in turn, so the machine's load hits them alike (their speed)."""
    if args.contender == "alternate":
        steps = {
            "ours": setup_ours(args),
            "trl": setup_trl(args, default=False),
            "trl-default": setup_trl(args, default=True),
        }
    elif args.contender.startswith("ours"):
        steps = {args.contender: setup_ours(args, lora=args.contender == "ours-lora")}
    else:
        steps = {args.contender: setup_trl(args, default=args.contender == "trl-default")}
    loaded_mb = rss_mb()
    reset_peak()
    res: dict[str, dict] = {k: {"times": [], "tokens": []} for k in steps}
    for i in range(args.warmup + args.steps):
        for name, step in steps.items() if i % 2 == 0 else reversed(steps.items()):
            dt, n = step()
            if i >= args.warmup:
                res[name]["times"].append(dt)
                res[name]["tokens"].append(n)
    peak = hwm_mb()
    for r in res.values():
        r |= {
            "loaded_mb": loaded_mb,
            "training_peak_mb": peak,
            "ru_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        }
    print(json.dumps(res))


# ------------------------------------------------------------------------------------ the bench


def ensure_hf_dir(path: Path) -> None:
    if (path / "config.json").is_file():
        return
    from twofiles.formats.hf import export_hf
    from twofiles.formats.resolve import resolve_model

    export_hf(resolve_model("smollm2"), path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hf-dir", default=str(Path.home() / ".cache/twofiles/bench-smollm2-hf"))
    ap.add_argument("--steps", type=int, default=6, help="timed steps each, alternating")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=2, help="pairs per step")
    ap.add_argument("--max-len", type=int, default=128)
    ap.add_argument("--pairs-n", type=int, default=16)
    ap.add_argument(
        "--solo-steps", type=int, default=2, help="timed steps of each contender alone (memory)"
    )
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--contenders", default=",".join(CONTENDERS))
    ap.add_argument("--json-out", default="")
    ap.add_argument("--contender", choices=[*CONTENDERS, "alternate"], help=argparse.SUPPRESS)
    ap.add_argument("--pairs", help=argparse.SUPPRESS)
    ap.add_argument("--tmp", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.contender:
        return contender(args)
    ensure_hf_dir(Path(args.hf_dir))
    names = [c for c in args.contenders.split(",") if c]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "TOKENIZERS_PARALLELISM": "false"}
    solo: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        pairs = Path(tmp) / "pairs.jsonl"
        make_pairs(pairs, args.pairs_n, prompt_words=50, reply_words=25)

        def launch(name: str, steps: int) -> dict:
            cmd = [
                sys.executable, __file__, "--contender", name, "--hf-dir", args.hf_dir,
                "--pairs", str(pairs), "--tmp", tmp, "--steps", str(steps),
                "--warmup", str(args.warmup), "--batch-size", str(args.batch_size),
                "--max-len", str(args.max_len), "--threads", str(args.threads),
            ]  # fmt: skip
            p = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if p.returncode != 0:
                sys.exit(f"{name} failed:\n{p.stderr[-4000:]}")
            return json.loads(p.stdout.strip().splitlines()[-1])

        for name in names:  # memory: each alone in its own process
            solo |= launch(name, args.solo_steps)
            r = solo[name]
            print(
                f"{name} alone: {sum(r['tokens']) / sum(r['times']):,.0f} tokens/s, training "
                f"peak {r['training_peak_mb']:,.0f} MB, ru_maxrss {r['ru_maxrss_mb']:,.0f} MB",
                file=sys.stderr,
            )
        alt = launch("alternate", args.steps) if args.steps else {}
    rows = {}
    for name, r in solo.items():
        a = alt.get(name)
        rows[name] = {
            # a step that a burst of another job's load lands on skews a mean over a few steps:
            # the median step is the headline, the mean is kept beside it
            "tokens_per_s": statistics.median(a["tokens"]) / statistics.median(a["times"])
            if a
            else None,
            "tokens_per_s_mean": sum(a["tokens"]) / sum(a["times"]) if a else None,
            # the fastest step: the one least touched by other jobs (timeit's rule)
            "tokens_per_s_best": max(n / t for n, t in zip(a["tokens"], a["times"], strict=True))
            if a
            else None,
            "median_step_s": statistics.median(a["times"]) if a else None,
            "step_times_s": a["times"] if a else None,
            "tokens_per_s_alone": sum(r["tokens"]) / sum(r["times"]),
            "tokens_per_step": statistics.median(r["tokens"]),
            "training_peak_mb": r["training_peak_mb"],
            "training_memory_mb": r["training_peak_mb"] - r["loaded_mb"],
            "ru_maxrss_mb": r["ru_maxrss_mb"],
        }
    cpu = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        ),
        platform.processor(),
    )
    print(
        f"{args.hf_dir}: {args.batch_size} pairs/step, max {args.max_len} tokens, {args.threads} "
        f"threads, {cpu}; speed: {args.steps} steps each, alternating in one process, after "
        f"{args.warmup} warm-up; memory: each alone, {args.solo_steps} steps"
    )
    print(
        "| contender | tokens/s (fastest step, in turn) | tokens/s (median step) | median step | "
        "tokens/s (mean) | tokens/s (alone) | training peak RSS | training memory (peak - "
        "loaded) | ru_maxrss | speed vs trl (fastest) | peak vs trl |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    base = rows.get("trl")

    def ratio(r: dict, key: str) -> str:
        if not base or r[key] is None or base[key] is None:
            return "-"
        return f"{r[key] / base[key]:.2f}x"

    def num(v: float | None, fmt: str) -> str:
        return "-" if v is None else fmt.format(v)

    for name, r in rows.items():
        print(
            f"| {name} | {num(r['tokens_per_s_best'], '{:,.1f}')} "
            f"| {num(r['tokens_per_s'], '{:,.1f}')} | {num(r['median_step_s'], '{:.1f} s')} "
            f"| {num(r['tokens_per_s_mean'], '{:,.1f}')} | {r['tokens_per_s_alone']:,.1f} | {r['training_peak_mb']:,.0f} MB | "
            f"{r['training_memory_mb']:,.0f} MB | {r['ru_maxrss_mb']:,.0f} MB | "
            f"{ratio(r, 'tokens_per_s_best')} | {ratio(r, 'training_peak_mb')} |"
        )
    if args.json_out:
        Path(args.json_out).write_text(
            json.dumps(
                {
                    "date": time.strftime("%Y-%m-%d"),
                    "cpu": cpu,
                    "model": args.hf_dir,
                    "settings": {
                        k: getattr(args, k)
                        for k in (
                            "steps",
                            "solo_steps",
                            "warmup",
                            "batch_size",
                            "max_len",
                            "threads",
                        )
                    },
                    "results": rows,
                },
                indent=1,
            )
            + "\n"
        )


if __name__ == "__main__":
    main()
