"""Our TopK SAE trainer against SAELens's, on the same activations: quality at equal L0, and speed.

One run: the model's activations at one hook are collected once (the held-out plays of the
built-in Shakespeare for evaluation, the rest for training), normalised as both trainers normalise
them (a fixed scalar: mean squared norm d_in) and saved as .npy; both trainers then read the same
rows in the same order, with the same width, k, learning rate, schedule (warm-up, then a linear
decay over the last fifth), batch and steps, on one thread.

    ours     twofiles.sae.train.SAETrainer (the loss `twofiles sae train` steps: MSE + AuxK,
             decoder rows kept unit-norm, b_dec from the geometric median) with Adam, stepped as
             train/loop.py steps it
    saelens  SAELens's TopKTrainingSAE stepped by its own SAETrainer (its defaults otherwise:
             its AuxK at coefficient 1 without variance normalisation, decoder init norm 0.1,
             its dead-feature window in steps), in a separate venv (bench/sae_saelens.py): SAELens
             pins transformer-lens < 4, which the main venv's parity tests need at 4.x

Quality: held-out MSE, explained variance, L0 and CE-loss recovered (the model's next-token loss
with each SAE's reconstruction spliced in at the hook, sae/metrics.py), SAELens's weights read into
our SparseAutoencoder (checked against SAELens's own reconstructions of the held-out rows).
Speed: training tokens per second over the steps (wall clock, steps only).

SAELens's venv (once): python3.11 -m venv /work/venv-saelens && /work/venv-saelens/bin/pip install
sae-lens (6.54.12 here: torch 2.14.1, transformer-lens 3.9.0).

    PYTHONPATH=src .venv/bin/python bench/sae.py [--model smollm2] [--layer 15] [--steps 60]
        [--train-tokens 24576] [--saelens-python /work/venv-saelens/bin/python]
        [--json-out bench/results/sae.json]
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch


def collect_activations(args: argparse.Namespace, work: Path) -> dict:
    from twofiles.formats.resolve import resolve_model
    from twofiles.sae.activations import activation_scale, collect, token_windows
    from twofiles.sae.train import corpus_texts, geometric_median

    loaded = resolve_model(args.model)
    model, tok = loaded.model.eval(), loaded.tokenizer
    hook = f"blocks.{args.layer}.hook_resid_post"
    per = args.context - 1
    train_w = token_windows(
        tok, corpus_texts(["builtin"], "train", 0), args.context, max_windows=4000
    )
    pick = np.random.default_rng(0).permutation(len(train_w))[: math.ceil(args.train_tokens / per)]
    eval_w = token_windows(
        tok,
        corpus_texts(["builtin"], "val", 0),
        args.context,
        max_windows=math.ceil(args.eval_tokens / per),
    )
    meta = work / "meta.json"
    base = {"loaded": loaded, "hook": hook, "eval_windows": eval_w}
    if args.reuse_activations and meta.is_file():  # the same windows, collected by an earlier run
        return {**base, **json.loads(meta.read_text())}
    t0 = time.perf_counter()
    train = collect(model, train_w[np.sort(pick)], hook, tok.bos_id)
    collect_s = time.perf_counter() - t0
    raw_eval = collect(model, eval_w, hook, tok.bos_id)
    scale = activation_scale(train)
    g = torch.Generator().manual_seed(0)
    train = train[torch.randperm(len(train), generator=g)] * scale
    np.save(work / "train.npy", train.numpy().astype(np.float32))
    np.save(work / "eval.npy", (raw_eval * scale).numpy().astype(np.float32))
    np.save(work / "b_dec_init.npy", geometric_median(train[:16384]).numpy().astype(np.float32))
    facts = {
        "scale": scale,
        "train_rows": len(train),
        "eval_rows": len(raw_eval),
        "collect_seconds": collect_s,
    }
    meta.write_text(json.dumps(facts))
    return {**base, **facts}


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def lr_at(step: int, steps: int, warmup: int, decay_frac: float) -> float:
    """Warm-up, constant, then a linear decay to 0 over the last `decay_frac` (both trainers)."""
    if step < warmup:
        return (step + 1) / warmup
    start = int(steps * (1 - decay_frac))
    return 1.0 if step < start else max(0.0, 1 - (step - start) / max(1, steps - start))


def train_ours(args: argparse.Namespace, work: Path, d_in: int) -> tuple[object, list[float]]:
    from twofiles.sae.model import SAEConfig, SparseAutoencoder
    from twofiles.sae.train import SAETrainConfig, SAETrainer

    rows = torch.from_numpy(np.load(work / "train.npy"))
    sae = SparseAutoencoder(SAEConfig(d_in=d_in, d_sae=d_in * args.expansion, k=args.k))
    sae.init_weights(seed=0)
    with torch.no_grad():  # as `sae train` starts: b_dec at the geometric median of a first buffer
        sae.b_dec.copy_(torch.from_numpy(np.load(work / "b_dec_init.npy")))
    trainer = SAETrainer(sae, SAETrainConfig(dead_tokens=args.dead_tokens))
    opt = torch.optim.Adam(trainer.parameters(), lr=args.lr, betas=(0.9, 0.999))
    times = []
    for step in range(args.steps):
        batch = batch_rows(rows, step, args.batch_tokens)
        t0 = time.perf_counter()
        trainer.normalize_decoder()
        for gr in opt.param_groups:
            gr["lr"] = args.lr * lr_at(step, args.steps, args.warmup, 0.2)
        loss, _ = trainer(batch)
        (loss / len(batch)).backward()
        torch.nn.utils.clip_grad_norm_(list(trainer.parameters()), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
    trainer.normalize_decoder()
    return sae, times


def batch_rows(rows: torch.Tensor, step: int, n: int) -> torch.Tensor:
    """Batch `step`: the next n rows, wrapping around (both trainers read exactly these)."""
    idx = (torch.arange(n) + step * n) % len(rows)
    return rows[idx]


def train_saelens(args: argparse.Namespace, work: Path, name: str, b_dec_init: bool) -> dict:
    cmd = [
        args.saelens_python,
        str(Path(__file__).with_name("sae_saelens.py")),
        "--work",
        str(work),
        "--expansion",
        str(args.expansion),
        "--k",
        str(args.k),
        "--lr",
        str(args.lr),
        "--steps",
        str(args.steps),
        "--warmup",
        str(args.warmup),
        "--batch-tokens",
        str(args.batch_tokens),
        "--threads",
        str(args.threads),
        "--dead-tokens",
        str(args.dead_tokens),
        "--name",
        name,
    ] + (["--b-dec-init", str(work / "b_dec_init.npy")] if b_dec_init else [])
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"sae_saelens.py failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def evaluate(sae: object, info: dict, work: Path, scale: float) -> dict:
    from twofiles.sae.metrics import explained_variance, spliced_losses
    from twofiles.sae.train import fold_scale

    x = torch.from_numpy(np.load(work / "eval.npy"))
    with torch.no_grad():
        f = sae.encode(x)
        x_hat = sae.decode(f)
    folded = fold_scale(sae, scale)
    losses = spliced_losses(
        info["loaded"].model,
        info["eval_windows"],
        info["hook"],
        folded,
        info["loaded"].tokenizer.bos_id,
    )
    return {
        "mse": float((x - x_hat).pow(2).sum(-1).mean()),
        "explained_variance": explained_variance(x, x_hat),
        "l0": float((f > 0).sum(-1).float().mean()),
        "dead_on_eval": float(((f > 0).sum(0) == 0).float().mean()),
        **losses.to_dict(),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="smollm2")
    p.add_argument("--layer", type=int, default=15)
    p.add_argument("--context", type=int, default=256)
    p.add_argument("--train-tokens", type=int, default=24576, help="activations collected")
    p.add_argument("--eval-tokens", type=int, default=2048)
    p.add_argument("--expansion", type=int, default=8)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--lr", type=float, default=4e-4)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--batch-tokens", type=int, default=4096)
    p.add_argument("--dead-tokens", type=int, default=100_000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--saelens-python", default="/work/venv-saelens/bin/python")
    p.add_argument("--work", default="/tmp/sae_bench")
    p.add_argument("--json-out", default="")
    p.add_argument(
        "--reuse-activations", action="store_true", help="use WORK's .npy files from a run before"
    )
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    info = collect_activations(args, work)
    d_in = info["loaded"].model.config.dim
    print(
        f"activations: {info['train_rows']:,} training rows, {info['eval_rows']:,} held out, "
        f"collected in {info['collect_seconds']:.0f}s; scale {info['scale']:.4g}",
        file=sys.stderr,
    )
    ours, ours_times = train_ours(args, work, d_in)
    from safetensors.torch import load_file

    from twofiles.sae.model import SAEConfig, SparseAutoencoder

    runs = [("ours", ours, ours_times)]
    gaps = {}
    x = torch.from_numpy(np.load(work / "eval.npy"))[:256]
    for name, median in (("saelens", False), ("saelens-median-b_dec", True)):
        theirs = train_saelens(args, work, name, median)
        sl = SparseAutoencoder(SAEConfig(d_in=d_in, d_sae=d_in * args.expansion, k=args.k))
        sl.load_state_dict(load_file(str(work / f"{name}.safetensors")))
        # SAELens's SAE read into ours computes what SAELens computes
        with torch.no_grad():
            want = torch.from_numpy(np.load(work / f"{name}_recon.npy"))
            gaps[name] = float((sl(x) - want).abs().max())
        runs.append((name, sl, theirs["step_seconds"]))
    results = {}
    for name, sae, times in runs:
        tokens = args.steps * args.batch_tokens
        results[name] = {
            **evaluate(sae, info, work, info["scale"]),
            "train_seconds": sum(times),
            "tokens_per_second": tokens / sum(times),
            "median_step_seconds": float(np.median(times)),
        }
    summary = {
        "model": args.model,
        "hook": info["hook"],
        "d_sae": d_in * args.expansion,
        "k": args.k,
        "steps": args.steps,
        "batch_tokens": args.batch_tokens,
        "train_rows": info["train_rows"],
        "eval_rows": info["eval_rows"],
        "collect_seconds": info["collect_seconds"],
        "saelens_version": theirs["version"],
        "saelens_read_back_max_abs_diff": gaps,
        "threads": args.threads,
        "cpu": cpu_name(),
        "results": results,
    }
    keys = [
        ("l0", "{:.1f}"),
        ("explained_variance", "{:.4f}"),
        ("mse", "{:.2f}"),
        ("ce_loss_recovered", "{:.4f}"),
        ("dead_on_eval", "{:.3f}"),
        ("tokens_per_second", "{:,.0f}"),
        ("median_step_seconds", "{:.2f}"),
    ]
    print("| trainer | " + " | ".join(k for k, _ in keys) + " |")
    print("| --- |" + " ---: |" * len(keys))
    for name, r in results.items():
        print(f"| {name} | " + " | ".join(fmt.format(r[k]) for k, fmt in keys) + " |")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
