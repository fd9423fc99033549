"""LoRA against full finetuning: training throughput and peak memory on the same batches.

Both contenders start from the same model (two copies) and train on the same packed batches of the
built-in mix, rendered with the model's chat template. Throughput: one optimizer step of each,
alternating (full, LoRA, full, LoRA, ...), after one warm-up step each; the table gives the median
step time and tokens/s over the timed steps and the ratio. Peak memory: each contender alone in a
fresh process (the same script with --memory-only), the peak resident set after training minus the
resident set once the model is loaded, with the kernel's peak counter reset after loading, so loading
costs (GGUF dequantization, say) cancel out.

    .venv/bin/python bench/sft_lora.py MODEL [--steps 5] [--batch-size 4] [--seq-len 256] [--lora-rank 8] [--json]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import statistics
import subprocess
import sys
import time


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_mb() -> float:
    """Peak resident set since the last reset_peak() (VmHWM), else since the process started."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak() -> bool:
    """Reset the kernel's peak-RSS counter (Linux: writing 5 to clear_refs), so that the peak of
    loading the model (a GGUF is dequantized through temporaries) does not hide training's."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def setup(args: argparse.Namespace):
    import torch

    from twofiles.chat import ChatFormat
    from twofiles.data.packing import PackedLoader
    from twofiles.formats.resolve import resolve_model
    from twofiles.train.sft import SFTConfig, identity_for, load_conversations, render_examples

    torch.manual_seed(0)
    loaded = resolve_model(args.model)
    fmt = ChatFormat.for_model(loaded)
    seq_len = min(args.seq_len, loaded.model.config.max_seq_len - 1)
    train, _, _ = load_conversations(
        SFTConfig(model=args.model, mix_fraction=0.2), identity_for(loaded)
    )
    examples, _ = render_examples(fmt, train, seq_len)
    pad = loaded.tokenizer.special_ids.get("<|pad|>", loaded.tokenizer.bos_id)
    loader = PackedLoader(examples, args.batch_size, seq_len, pad, seed=0)
    batches = [loader.next_batch() for _ in range(args.steps + 1)]
    return loaded, batches


def contender(model, kind: str, rank: int):
    from twofiles.lora import LoRAConfig, apply_lora
    from twofiles.optim import build_optimizers
    from twofiles.train.sft import default_optim

    if kind == "lora":
        apply_lora(model, LoRAConfig(rank=rank, alpha=2 * rank))
    else:
        for p in model.parameters():
            p.requires_grad_(True)
    model.train()
    opts = build_optimizers(model, default_optim())

    def step(batch) -> float:
        from twofiles.runtime import setup as rt_setup
        from twofiles.train.sft import masked_loss_sum

        t = time.perf_counter()
        loss = masked_loss_sum(model, batch, rt_setup("cpu", "fp32")) / batch.n_targets
        loss.backward()
        for o in opts:
            o.step()
            o.zero_grad(set_to_none=True)
        return time.perf_counter() - t

    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return step, n_train


def memory_only(args: argparse.Namespace) -> None:
    import gc

    loaded, batches = setup(args)
    gc.collect()
    base = rss_mb()
    if not reset_peak():
        print(
            "warning: cannot reset the peak RSS; training memory includes loading", file=sys.stderr
        )
    step, n_train = contender(loaded.model, args.memory_only, args.lora_rank)
    for b in batches[:3]:
        step(b)
    print(
        json.dumps(
            {
                "kind": args.memory_only,
                "loaded_mb": base,
                "peak_mb": peak_mb(),
                "train_mb": peak_mb() - base,
                "trainable": n_train,
            }
        )
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--lora-rank", type=int, default=8)
    ap.add_argument("--memory-only", choices=["full", "lora"], default=None, help=argparse.SUPPRESS)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.memory_only:
        return memory_only(args)
    loaded, batches = setup(args)
    models = {"full": loaded.model, "lora": copy.deepcopy(loaded.model)}
    steps, trainable = {}, {}
    for kind, m in models.items():
        steps[kind], trainable[kind] = contender(m, kind, args.lora_rank)
        steps[kind](batches[0])  # warm-up
    times: dict[str, list[float]] = {k: [] for k in models}
    for b in batches[1:]:
        for kind in models:  # alternate: machine noise hits both
            times[kind].append(steps[kind](b))
    tokens = statistics.median(int((b.segments >= 0).sum()) for b in batches[1:])
    mem = {}
    for kind in models:
        cmd = [
            sys.executable,
            __file__,
            args.model,
            "--steps",
            "3",
            "--batch-size",
            str(args.batch_size),
            "--seq-len",
            str(args.seq_len),
            "--lora-rank",
            str(args.lora_rank),
            "--memory-only",
            kind,
        ]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True, env={**os.environ})
        mem[kind] = json.loads(out.stdout.strip().splitlines()[-1])
    rows = {
        k: {
            "median_step_s": statistics.median(v),
            "tokens_per_s": tokens / statistics.median(v),
            "trainable": trainable[k],
            "train_memory_mb": mem[k]["train_mb"],
            "peak_memory_mb": mem[k]["peak_mb"],
        }
        for k, v in times.items()
    }
    print(
        f"{args.model}: {args.steps} timed steps each, {args.batch_size} rows x {args.seq_len} tokens, LoRA r={args.lora_rank} on all projections"
    )
    print(
        "| | trainable params | median step | tokens/s | training memory (peak - loaded) | peak RSS |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for k, r in rows.items():
        print(
            f"| {k} | {r['trainable']:,} | {r['median_step_s']:.2f} s | {r['tokens_per_s']:,.0f} | {r['train_memory_mb']:,.0f} MB | {r['peak_memory_mb']:,.0f} MB |"
        )
    print(
        f"LoRA / full: {rows['full']['median_step_s'] / rows['lora']['median_step_s']:.2f}x the throughput, "
        f"{rows['lora']['train_memory_mb'] / max(rows['full']['train_memory_mb'], 1e-9):.2f}x the training memory"
    )
    if args.json:
        print(json.dumps(rows))


if __name__ == "__main__":
    main()
