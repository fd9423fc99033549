"""Presets: plain data describing a whole speedrun (tokenizer size, model shape, optimizer, batch,
time budget) and what it is expected to reach. Chosen by experiment: see docs/LOG.md.

The one dial is the budget; each preset says what it expects on the hardware it was sized for. The
SFT stage (the base model finetuned on the built-in mix into a chat assistant that calls the
calculator) runs just after the base model's budget, with its own training budget, so the base
model's bits-per-byte contract is measured exactly as before.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from twofiles.model import ModelConfig
from twofiles.optim import OptimConfig

if TYPE_CHECKING:
    from twofiles.train.rl import RLConfig
    from twofiles.train.sft import SFTConfig


@dataclass(frozen=True)
class Preset:
    name: str
    description: str  # what it is for and what it expects (shown by --help and in the report)
    vocab_size: int  # tokenizer size
    model: dict[str, Any]  # ModelConfig fields
    optim: dict[str, Any]  # OptimConfig fields
    train: dict[str, Any] = field(
        default_factory=dict
    )  # PretrainConfig fields (batch, seq_len, ...)
    budget_s: float = 300.0  # wall-clock budget of the base model (tokenizer + data + pretraining + eval + samples)
    expect_bpb: float | None = (
        None  # validation bits per byte it should reach on the built-in corpus
    )
    sft: dict[str, Any] = field(
        default_factory=dict
    )  # SFTConfig fields of the finetuning stage (after the budget); {} = none
    rl: dict[str, Any] = field(
        default_factory=dict
    )  # RLConfig fields of the RL stage on the SFT assistant (after SFT); {} = none

    def model_config(self) -> ModelConfig:
        return ModelConfig(**{**self.model, "vocab_size": self.vocab_size})

    def optim_config(self) -> OptimConfig:
        return OptimConfig(**self.optim)

    def sft_config(self, model: str, out: str) -> SFTConfig:
        """The finetuning stage's config for `model` (the base model file), writing into `out`."""
        from twofiles.train.sft import SFTConfig

        return SFTConfig(model=model, data="builtin", out=out, **self.sft)

    def rl_config(self, model: str, out: str) -> RLConfig:
        """The RL stage's config for `model` (the SFT assistant), writing into `out`."""
        from twofiles.train.rl import RLConfig

        fields = dict(self.rl)
        optim = fields.pop("optim", {})  # OptimConfig fields over RL's defaults
        cfg = RLConfig(model=model, out=out, **fields)
        for k, v in optim.items():
            setattr(cfg.optim, k, v)
        return cfg


# The RL stage after SFT (train/rl.py): calculator arithmetic, the skill where the assistant's
# groups of samples disagree most (pass@1 ~68%, pass@8 ~90%), one micro-batch per step. Measured on
# the cpu-5min assistant, 60 s: arithmetic 67.5% -> 72.5% (200 held-out tasks); with letter
# counting added and 4 micro-batches per step it fell to 62%, and DPO on pairs it sampled itself
# gained 2 points (docs/LOG.md). Held-out skills are scored by the speedrun on SFT's tasks, so
# the stage skips RL's own evaluation (eval_tasks 0).
RL_STAGE: dict[str, Any] = dict(
    tasks="skills:arithmetic",
    time_budget_s=60.0,
    temperature=0.7,
    grad_accum=1,
    eval_tasks=0,
    optim=dict(lr=1e-4),
)

# cpu-5min and precision (docs/LOG.md, 2026-12-06): the preset names no dtype. runtime's probe
# picks bf16 autocast where bf16 matmuls are >= 1.5x fp32 and fp32 elsewhere; the time budget then
# turns the faster step into more tokens. AMD EPYC with AVX512-BF16, this shape, 1 thread: matmuls
# 4.2x, a training step 1.9-2.1x (Muon's Newton-Schulz in bf16 too: 1.76x without), and the same
# loss per token (300 steps, same seed: val 2.1678 bf16 against 2.16xx fp32; training losses equal
# to 1e-3). Tried at equal tokens and kept out: context 512 at batch 4 (2.1717 against 2.1678 at
# 300 steps, and 0.875x the tokens/s), and larger models at equal compute: d192 x 6 layers (0.77x
# the tokens/s, 230 steps) 2.1953, d256 x 4 (0.68x, 204 steps) 2.2247, against 2.1678. At 1,500
# steps (what a quiet 2-thread bf16 run should fit) it reaches 1.9638; one bf16 thread in the real
# speedrun made 885 steps, 2.0118. Batch 16 for the same 3.07M tokens (750 steps): 1.9677, no
# better. Not yet measured: LR and decay retuned for ~2x the tokens, vocab at equal wall time.
PRESETS: dict[str, Preset] = {
    "cpu-5min": Preset(
        name="cpu-5min",
        description="2-core laptop CPU, 5 minutes end to end: d192 x 4 layers, vocab 4096, Muon; "
        "bf16 autocast where runtime's probe measures fast bf16 matmuls (AVX512-BF16, AMX), else "
        "fp32; torch.compile where a C++ compiler is found; expects <= 2.25 bits/byte on the "
        "held-out plays (AMD EPYC with AVX512-BF16, 2 quiet cores: fp32 eager 2.01-2.02 in ~850 "
        "steps; bf16 eager 1.962 in 1,518; bf16 compiled 1.946 in 1,918); "
        "then ~1 minute of SFT on the built-in mix and ~1 minute of RL on calculator arithmetic, "
        "after the 5-minute budget",
        vocab_size=4096,
        model=dict(
            dim=192,
            n_layers=4,
            n_heads=3,
            n_kv_heads=3,
            hidden_dim=512,
            max_seq_len=256,
            tie_embeddings=False,
        ),
        optim=dict(
            optimizer="muon",
            lr=3e-3,
            matrix_lr=0.02,
            embed_lr=0.2,
            schedule="wsd",
            warmup_steps=10,
            decay_frac=0.4,
        ),
        train=dict(
            batch_size=8,
            seq_len=256,
            grad_accum=1,
            eval_interval=0,
            eval_tokens=16384,
            # 1.34x the steps under bf16 (16,600 against 12,400 tokens/s), 1.16x in fp32, for 8-25 s
            # of compiling inside the budget (docs/LOG.md, 2026-12-06); eager without a C++ compiler
            compile=True,
        ),
        budget_s=300.0,
        expect_bpb=2.25,
        # SFT: 60 s of training on the built-in mix (~1.5 passes at this speed), then held-out skills
        sft=dict(
            time_budget_s=60.0, batch_size=8, seq_len=255, skill_tasks=10, skill_max_tokens=48
        ),
        rl=RL_STAGE,
    ),
    "cpu-1h": Preset(
        name="cpu-1h",
        description="2-core laptop CPU, one hour: d384 x 6 layers, vocab 8192, context 512, ~12x the 5-minute compute "
        "(~2.5 epochs of the corpus); not yet measured end to end, expected clearly below the 5-minute result",
        vocab_size=8192,
        model=dict(dim=384, n_layers=6, n_heads=6, n_kv_heads=6, hidden_dim=1024, max_seq_len=512),
        optim=dict(
            optimizer="muon",
            lr=3e-3,
            matrix_lr=0.02,
            embed_lr=0.2,
            schedule="wsd",
            warmup_steps=20,
            decay_frac=0.4,
        ),
        train=dict(
            batch_size=8,
            seq_len=512,
            grad_accum=1,
            eval_interval=250,
            eval_tokens=65536,
            checkpoint_interval=250,
        ),
        budget_s=3600.0,
        expect_bpb=None,
        sft=dict(
            time_budget_s=300.0, batch_size=8, seq_len=511, skill_tasks=25, skill_max_tokens=48
        ),
        rl={**RL_STAGE, "time_budget_s": 300.0},
    ),
    "gpu": Preset(
        name="gpu",
        description="one CUDA GPU: bf16 autocast + torch.compile, d512 x 8 layers, 600 steps of 32x512 tokens "
        "(~8 epochs of the built-in corpus: more would only overfit it); not yet measured on a GPU",
        vocab_size=8192,
        model=dict(dim=512, n_layers=8, n_heads=8, n_kv_heads=8, hidden_dim=1408, max_seq_len=512),
        optim=dict(
            optimizer="muon",
            lr=3e-3,
            matrix_lr=0.02,
            embed_lr=0.2,
            schedule="wsd",
            warmup_steps=30,
            decay_frac=0.4,
        ),
        train=dict(
            batch_size=32,
            seq_len=512,
            grad_accum=1,
            eval_interval=100,
            eval_tokens=65536,
            compile=True,
            max_steps=600,
        ),
        budget_s=0.0,
        expect_bpb=None,
        sft=dict(epochs=3.0, batch_size=16, seq_len=511, skill_tasks=25, skill_max_tokens=48),
        rl={**RL_STAGE, "time_budget_s": 120.0},
    ),
    "tiny": Preset(
        name="tiny",
        description="smoke test: a minute on any machine, for tests and demos; no quality target",
        vocab_size=1024,
        model=dict(dim=64, n_layers=2, n_heads=2, n_kv_heads=1, hidden_dim=192, max_seq_len=128),
        optim=dict(
            optimizer="muon",
            lr=3e-3,
            matrix_lr=0.02,
            embed_lr=0.2,
            schedule="wsd",
            warmup_steps=5,
            decay_frac=0.4,
        ),
        train=dict(
            batch_size=8, seq_len=128, grad_accum=1, eval_interval=0, eval_tokens=8192, max_steps=30
        ),
        budget_s=0.0,
        expect_bpb=None,
        sft=dict(
            max_steps=6,
            batch_size=4,
            seq_len=127,
            skill_tasks=1,
            skill_max_tokens=16,
            mix_fraction=0.05,
        ),
        rl=dict(
            tasks="skills:arithmetic", max_steps=2, prompts=2, group=2, max_tokens=8, eval_tasks=0
        ),
    ),
}


def get_preset(name: str) -> Preset:
    from twofiles.errors import TwofilesError

    if name not in PRESETS:
        raise TwofilesError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}")
    return PRESETS[name]
