"""Training throughput (CPU, fp32): our Transformer against Hugging Face LlamaForCausalLM.

Both models have the identical shape and start from identical weights (ours, copied into HF with a
strict state_dict load). Each contender does the same training step on the same batches (random
tokens, fixed seed) at the same thread count: forward, cross-entropy, backward, AdamW step,
zero_grad. Attention is the same kernel class on both sides: `F.scaled_dot_product_attention` with
is_causal=True and no mask (HF's default attn_implementation="sdpa", which passes no mask when
there is no padding), i.e. ATen's CPU flash-attention kernel.

HF runs the way a trainer should call it: `model(input_ids=..., labels=..., use_cache=False)`
(its loss shifts the labels itself, so it gets the unshifted batch; same number of tokens).

The machine is shared and its speed drifts, so contenders alternate A B A B ... for --rounds
rounds; each round runs --warmup untimed steps (compilation happens here) then --steps timed
steps. We report the median tokens/s per contender, the ratio to HF, and the achieved GFLOP/s
(ModelConfig.flops_per_token, PaLM convention) as a share of the measured fp32 matmul peak.

    .venv/bin/python bench/train_throughput.py --shapes speedrun --rounds 5 --steps 3 [--compile both] [--json]
    .venv/bin/python bench/train_throughput.py --profile speedrun   # torch.profiler op table, eager

`--precision` compares our model against itself instead: fp32 against bf16 autocast, each with the
training's real optimizers (Muon + AdamW, OptimConfig's cpu-5min settings; under bf16, Muon's
Newton-Schulz in bf16 as in training), alternating rounds, reported as tokens/s and the ratio:

    .venv/bin/python bench/train_throughput.py --precision --shapes cpu-5min --threads 1 --json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date

import torch
from matmul_peak import measure_fp32_peak  # bench/ is on sys.path when run as a script

from twofiles.model import ModelConfig, Transformer


@dataclass(frozen=True)
class Shape:
    model: dict  # ModelConfig fields
    batch: int
    seq_len: int


# The speedrun shapes (vocab 4096, seq 256), then a larger one. Batch sizes keep a step at ~1-4 s on
# 2 cores so a whole invocation (4 contenders with --compile both) fits in a few minutes.
SHAPES: dict[str, Shape] = {
    # the cpu-5min preset's real shape (d192, batch 8): small matrices, where per-op overhead shows
    "cpu-5min": Shape(
        dict(
            vocab_size=4096,
            dim=192,
            n_layers=4,
            n_heads=3,
            n_kv_heads=3,
            hidden_dim=512,
            max_seq_len=256,
        ),
        batch=8,
        seq_len=256,
    ),
    "speedrun": Shape(
        dict(
            vocab_size=4096,
            dim=256,
            n_layers=4,
            n_heads=4,
            n_kv_heads=4,
            hidden_dim=768,
            max_seq_len=256,
        ),
        batch=16,
        seq_len=256,
    ),
    "speedrun-384": Shape(
        dict(
            vocab_size=4096,
            dim=384,
            n_layers=6,
            n_heads=6,
            n_kv_heads=6,
            hidden_dim=1024,
            max_seq_len=256,
        ),
        batch=8,
        seq_len=256,
    ),
    "speedrun-gqa": Shape(
        dict(
            vocab_size=4096,
            dim=384,
            n_layers=6,
            n_heads=6,
            n_kv_heads=2,
            hidden_dim=1024,
            max_seq_len=256,
        ),
        batch=8,
        seq_len=256,
    ),
    "d512": Shape(
        dict(
            vocab_size=4096,
            dim=512,
            n_layers=8,
            n_heads=8,
            n_kv_heads=8,
            hidden_dim=1536,
            max_seq_len=256,
        ),
        batch=4,
        seq_len=256,
    ),
}


def build_ours(cfg: ModelConfig, seed: int = 0) -> Transformer:
    model = Transformer(cfg)
    model.init_weights(seed=seed)
    # o_proj/down_proj start at zero; give them values so the two models do identical, non-trivial work
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("o_proj.weight", "down_proj.weight")):
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    return model


def build_hf(ours: Transformer, attn_implementation: str = "sdpa") -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    c = ours.config
    hf = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=c.vocab_size,
            hidden_size=c.dim,
            intermediate_size=c.hidden_dim,
            num_hidden_layers=c.n_layers,
            num_attention_heads=c.n_heads,
            num_key_value_heads=c.n_kv_heads,
            max_position_embeddings=c.max_seq_len,
            rms_norm_eps=c.norm_eps,
            rope_theta=c.rope_theta,
            tie_word_embeddings=c.tie_embeddings,
            attention_bias=False,
            mlp_bias=False,
            attn_implementation=attn_implementation,
            use_cache=False,
        )
    )
    hf.load_state_dict(ours.state_dict(), strict=True)
    return hf


def make_batches(
    cfg: ModelConfig, batch: int, seq_len: int, n: int, seed: int = 0
) -> list[torch.Tensor]:
    """n batches of seq_len + 1 random tokens: inputs are [:, :-1], targets [:, 1:]."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, cfg.vocab_size, (batch, seq_len + 1), generator=g) for _ in range(n)]


def ours_loss(model: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda xy: model(xy[:, :-1], xy[:, 1:])


def hf_loss(model: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    def loss(xy: torch.Tensor) -> torch.Tensor:
        x = xy[:, :-1]
        return model(input_ids=x, labels=x, use_cache=False).loss

    return loss


class Contender:
    """One model + its own optimizers (AdamW, or the training's own with `real_optim`) + its loss
    function, under `autocast` (None: fp32); `run(batches)` does one step per batch."""

    def __init__(
        self,
        name: str,
        model: torch.nn.Module,
        loss_fn: Callable,
        compile_model: bool,
        autocast: torch.dtype | None = None,
        real_optim: bool = False,
    ) -> None:
        self.name = name
        self.model = model.train()
        if real_optim:
            from twofiles.optim import build_optimizers
            from twofiles.presets import get_preset

            self.opts = build_optimizers(model, get_preset("cpu-5min").optim_config(), autocast)
        else:
            self.opts = [torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0)]
        self.autocast = autocast
        self.loss_fn = loss_fn(torch.compile(model) if compile_model else model)
        self.tokens_per_s: list[float] = []
        self.last_loss = float("nan")

    def step(self, xy: torch.Tensor) -> None:
        with torch.autocast(
            "cpu", dtype=self.autocast or torch.bfloat16, enabled=bool(self.autocast)
        ):
            loss = self.loss_fn(xy)
        loss.backward()
        for opt in self.opts:
            opt.step()
            opt.zero_grad(set_to_none=True)
        self.last_loss = loss.item()

    def round(self, batches: list[torch.Tensor], warmup: int, steps: int) -> None:
        for i in range(warmup):
            self.step(batches[i % len(batches)])
        t0 = time.perf_counter()
        for i in range(steps):
            self.step(batches[(warmup + i) % len(batches)])
        dt = time.perf_counter() - t0
        tokens = steps * batches[0].shape[0] * (batches[0].shape[1] - 1)
        self.tokens_per_s.append(tokens / dt)


def bench_shape(name: str, shape: Shape, args: argparse.Namespace, peak: float) -> list[dict]:
    cfg = ModelConfig(**shape.model)
    ours = build_ours(cfg)
    variants = ["eager"] + (["compiled"] if args.compile != "none" else [])
    contenders: list[Contender] = []
    if args.precision:
        variants = []
        for dt in (None, torch.bfloat16):
            label = "bf16" if dt else "fp32"
            contenders.append(
                Contender(f"ours/{label}", build_ours(cfg), ours_loss, False, dt, True)
            )
    for variant in variants:
        compiled = variant == "compiled"
        contenders.append(Contender(f"ours/{variant}", build_ours(cfg), ours_loss, compiled))
        if not compiled or args.compile == "both":
            contenders.append(Contender(f"hf/{variant}", build_hf(ours), hf_loss, compiled))
    batches = make_batches(cfg, shape.batch, shape.seq_len, args.warmup + args.steps)
    for r in range(args.rounds):
        for c in contenders:  # A B A B ...: drift hits every contender alike
            c.round(
                batches,
                args.warmup if r or "compiled" not in c.name else max(args.warmup, 2),
                args.steps,
            )
        print(
            f"  [{name}] round {r + 1}/{args.rounds}: "
            + "  ".join(f"{c.name} {c.tokens_per_s[-1]:.0f}" for c in contenders),
            flush=True,
        )
    fpt = cfg.flops_per_token(shape.seq_len)
    rows = []
    med = {c.name: statistics.median(c.tokens_per_s) for c in contenders}
    for c in contenders:
        variant = c.name.split("/")[1]
        # --precision: ratios are against our own fp32 step (named in `vs`)
        ref_name = "ours/fp32" if args.precision else f"hf/{variant}"
        hf_ref = med.get(ref_name, med.get("hf/eager", 1.0))
        gflops = med[c.name] * fpt / 1e9
        rows.append(
            dict(
                shape=name,
                contender=c.name,
                batch=shape.batch,
                seq_len=shape.seq_len,
                **{
                    k: shape.model[k]
                    for k in ("dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size")
                },
                params=cfg.num_params(),
                tokens_per_s=round(med[c.name], 1),
                tokens_per_s_rounds=[round(t, 1) for t in c.tokens_per_s],
                ratio_vs_hf=round(med[c.name] / hf_ref, 3),
                vs=ref_name if ref_name in med else "hf/eager",
                ratio_vs_hf_eager=round(med[c.name] / med.get("hf/eager", hf_ref), 3),
                gflops=round(gflops, 2),
                share_of_peak=round(gflops / peak, 3),
                final_loss=round(c.last_loss, 4),
            )
        )
    return rows


def profile_shape(name: str, shape: Shape, args: argparse.Namespace) -> None:
    """Op-level CPU time of one training step of each model (eager), after warm-up."""
    from torch.profiler import ProfilerActivity, profile

    cfg = ModelConfig(**shape.model)
    ours = build_ours(cfg)
    batches = make_batches(cfg, shape.batch, shape.seq_len, 4)
    for c in (
        Contender("ours/eager", build_ours(cfg), ours_loss, False),
        Contender("hf/eager", build_hf(ours), hf_loss, False),
    ):
        c.step(batches[0])
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for xy in batches[1:3]:
                c.step(xy)
        print(f"\n=== {name} {c.name}: 2 steps ===")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.profile_rows))


def print_table(rows: list[dict], peak: float) -> None:
    print(f"\nfp32 matmul peak {peak:.1f} GFLOP/s, {torch.get_num_threads()} threads")
    head = f"{'shape':<14}{'contender':<15}{'B x T':>9}{'params':>8}{'tokens/s':>10}{'vs ref':>7}{'vs HF eager':>12}{'GFLOP/s':>9}{'% peak':>8}"
    print(head)
    print("-" * len(head))
    for r in rows:
        print(
            f"{r['shape']:<14}{r['contender']:<15}{str(r['batch']) + 'x' + str(r['seq_len']):>9}{r['params'] / 1e6:>7.1f}M"
            f"{r['tokens_per_s']:>10.0f}{r['ratio_vs_hf']:>7.2f}{r['ratio_vs_hf_eager']:>12.2f}{r['gflops']:>9.1f}{100 * r['share_of_peak']:>7.1f}%"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", nargs="+", default=["speedrun"], choices=list(SHAPES))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=3, help="timed steps per round")
    ap.add_argument(
        "--warmup", type=int, default=1, help="untimed steps per round (compiled: >= 2 in round 1)"
    )
    ap.add_argument(
        "--compile",
        choices=["none", "ours", "both"],
        default="none",
        help="also run torch.compile'd contenders",
    )
    ap.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads for everything (default: torch's choice)",
    )
    ap.add_argument(
        "--peak", type=float, default=None, help="fp32 peak GFLOP/s (default: measure it)"
    )
    ap.add_argument(
        "--profile",
        choices=list(SHAPES),
        default=None,
        help="print a torch.profiler op table instead",
    )
    ap.add_argument("--profile-rows", type=int, default=25)
    ap.add_argument(
        "--precision",
        action="store_true",
        help="fp32 against bf16 autocast, our model with the training's optimizers, instead of vs HF",
    )
    ap.add_argument("--json", action="store_true", help="print one JSON line last")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.profile:
        profile_shape(args.profile, SHAPES[args.profile], args)
        return
    peak = args.peak or measure_fp32_peak()
    print(
        f"fp32 matmul peak: {peak:.1f} GFLOP/s ({torch.get_num_threads()} threads); torch {torch.__version__}",
        flush=True,
    )
    rows = []
    for name in args.shapes:
        rows += bench_shape(name, SHAPES[name], args, peak)
    print_table(rows, peak)
    if args.json:
        import transformers

        print(
            json.dumps(
                {
                    "bench": "train_throughput",
                    "date": date.today().isoformat(),
                    "machine": platform.machine(),
                    "cpus": os.cpu_count(),
                    "threads": torch.get_num_threads(),
                    "torch": torch.__version__,
                    "transformers": transformers.__version__,
                    "fp32_peak_gflops": round(peak, 2),
                    "rounds": args.rounds,
                    "steps": args.steps,
                    "warmup": args.warmup,
                    "rows": rows,
                }
            )
        )


if __name__ == "__main__":
    main()
