"""The sweep's plan: which models (N) and token budgets (D) to train, with the recipe they share,
written as SWEEP/sweep.json.

What it owns: the size dial (one integer, the depth, names a model shape), the grid of points
(sizes x token budgets, or isoFLOP budgets), the held-out larger point, the three parameter counts
of each point, and reading/writing sweep.json. What it leaves to others: running the points
(scaling.runner), the fit (scaling.fit), the training itself (`twofiles pretrain`).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from twofiles.errors import BadInputError, TwofilesError
from twofiles.model import ModelConfig

SWEEP_FILE = "sweep.json"
FORMAT = 1

# The size dial. As nanochat derives its whole model from `--depth` (width = 64 * depth, heads of
# 128), one integer names a model here: width = ASPECT * depth, heads of HEAD_DIM (so as many heads
# as layers), SwiGLU hidden = 8/3 * width rounded up to a multiple of 32 (the Llama ratio; the
# speedrun's 512 = 8/3 * 192). Our models are ~100x smaller than nanochat's smallest, so the
# aspect ratio is halved to reach ~13K non-embedding parameters at depth 1 and ~2.7M at depth 6:
# non-embedding N ~= 12 * depth * width^2 = 12 * 32^2 * depth^3, so each step of the dial is a
# clear step in N and six steps span ~200x.
ASPECT = 32
HEAD_DIM = 32

DEFAULT_SIZES = (1, 2, 3, 4, 5, 6)
# Token budgets shared by every size: 2.5x apart, 20 to 320 optimizer steps of the recipe's
# 8 x 256 tokens (41K to 655K tokens). The largest stays within half an epoch of the built-in
# corpus's ~1.34M training tokens, so no point sees repeated data; the whole grid costs ~45 minutes
# of one busy CPU thread.
DEFAULT_STEPS = (20, 50, 125, 320)
MIN_STEPS = 12  # isoFLOP points shorter than this are left out: warm-up and decay would be all


def shape(depth: int) -> dict[str, int]:
    """The model-shape fields (ModelConfig / `twofiles pretrain` flags) of dial position `depth`."""
    if depth < 1:
        raise TwofilesError(f"model size (depth) must be >= 1, got {depth}")
    dim = ASPECT * depth
    hidden = 32 * math.ceil(8 * dim / 3 / 32)
    heads = dim // HEAD_DIM
    return dict(dim=dim, n_layers=depth, n_heads=heads, n_kv_heads=heads, hidden_dim=hidden)


def param_counts(cfg: ModelConfig) -> dict[str, int]:
    """The three ways to count N: all parameters (Chinchilla's count); the matmul parameters
    (ModelConfig.num_params(embeddings=False): all but the embedding lookup, what costs FLOPs);
    and the non-embedding parameters in Kaplan et al.'s sense (also without the output
    projection, which GPT-2 tied to the embedding). Which count is N moves the fitted exponents
    (Pearce & Song 2024; Porian et al. 2024): at our size the 4096-token head is most of a model."""
    matmul = cfg.num_params(embeddings=False)
    return {
        "n_all": cfg.num_params(),
        "n_matmul": matmul,
        "n_nonembed": matmul - cfg.vocab_size * cfg.dim,
    }


N_COUNTS = {"non-embedding": "n_nonembed", "all": "n_all", "matmul": "n_matmul"}


@dataclass
class Point:
    name: str
    depth: int  # the size dial
    model: dict[str, int]  # model-shape fields (`twofiles pretrain` flags)
    steps: int  # optimizer steps (fixed steps: the loss does not depend on the machine's load)
    tokens: int  # D = steps x batch x seq
    n_all: int
    n_matmul: int
    n_nonembed: int
    flops: float  # 6 * n_matmul * D: the training compute, less attention's share
    run_dir: str  # relative to the sweep directory
    heldout: bool = False  # the larger point the fit never sees
    isoflop: float | None = None  # the isoFLOP budget that placed it (None: grid point)


@dataclass
class Sweep:
    recipe: dict[str, Any]  # what every point shares: preset, vocab, optimizer, batch, seq, dtype
    data: str  # the prepared data directory (absolute, or relative to the sweep directory)
    points: list[Point]
    train_tokens: int = 0  # tokens in the data's training split (one epoch)
    format: int = FORMAT
    notes: list[str] = field(default_factory=list)

    @property
    def tokens_per_step(self) -> int:
        r = self.recipe
        return int(r["batch_size"] * r["seq_len"] * r.get("grad_accum", 1))

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "recipe": self.recipe,
            "data": self.data,
            "train_tokens": self.train_tokens,
            "notes": self.notes,
            "points": [asdict(p) for p in self.points],
        }

    def data_dir(self, sweep_dir: str | Path) -> Path:
        p = Path(self.data)
        return p if p.is_absolute() else Path(sweep_dir) / p


def recipe_from_preset(p: Any) -> dict[str, Any]:
    """The recipe the points share, read from a presets.Preset (the speedrun's by default; the
    caller looks it up, as presets sit above this package): everything but the model's shape and
    the number of steps."""
    t = p.train
    return {
        "preset": p.name,
        "vocab_size": p.vocab_size,
        "tie_embeddings": bool(p.model.get("tie_embeddings", False)),
        "optim": dict(p.optim),
        "batch_size": int(t.get("batch_size", 16)),
        "seq_len": int(t.get("seq_len", 256)),
        "grad_accum": int(t.get("grad_accum", 1)),
        # fp32 whatever the machine: a precision chosen per machine would move the losses
        "dtype": "fp32",
        "seed": 1337,
    }


def model_config(recipe: dict[str, Any], depth: int) -> ModelConfig:
    fields: dict[str, Any] = {
        **shape(depth),
        "vocab_size": int(recipe["vocab_size"]),
        "max_seq_len": int(recipe["seq_len"]),
        "tie_embeddings": bool(recipe["tie_embeddings"]),
    }
    return ModelConfig(**fields)


def make_point(
    recipe: dict[str, Any],
    depth: int,
    steps: int,
    *,
    heldout: bool = False,
    iso: float | None = None,
) -> Point:
    cfg = model_config(recipe, depth)
    counts = param_counts(cfg)
    tokens = steps * int(recipe["batch_size"] * recipe["seq_len"] * recipe.get("grad_accum", 1))
    name = f"d{depth}-s{steps}"
    return Point(
        name=name,
        depth=depth,
        model=shape(depth),
        steps=steps,
        tokens=tokens,
        flops=6.0 * counts["n_matmul"] * tokens,
        run_dir=f"points/{name}",
        heldout=heldout,
        isoflop=iso,
        **counts,
    )


def make_plan(
    recipe: dict[str, Any],
    data: str,
    *,
    sizes: tuple[int, ...] = DEFAULT_SIZES,
    tokens: tuple[int, ...] | None = None,
    isoflop: tuple[float, ...] = (),
    heldout: tuple[int, int] | None = None,
    train_tokens: int = 0,
) -> Sweep:
    """The grid: every size at every token budget (or, with `isoflop`, every size at D = C / 6N
    for each budget C, N the matmul count), then the held-out point (depth, tokens)."""
    tps = int(recipe["batch_size"] * recipe["seq_len"] * recipe.get("grad_accum", 1))
    if len(set(sizes)) != len(sizes) or not sizes:
        raise TwofilesError(f"--sizes: give distinct depths, got {list(sizes)}")
    points: dict[str, Point] = {}
    if isoflop:
        for c in isoflop:
            for depth in sizes:
                n = param_counts(model_config(recipe, depth))["n_matmul"]
                steps = round(c / (6 * n) / tps)
                if steps >= MIN_STEPS:
                    p = make_point(recipe, depth, steps, iso=c)
                    points.setdefault(p.name, p)
    else:
        steps_list = DEFAULT_STEPS if tokens is None else tuple(round(t / tps) for t in tokens)
        for s in steps_list:
            if s < 1:
                raise TwofilesError(f"--tokens: give at least one step's {tps:,} tokens")
        for depth in sizes:
            for s in steps_list:
                p = make_point(recipe, depth, s)
                points.setdefault(p.name, p)
    grid = sorted(points.values(), key=lambda p: (p.flops, p.name))
    if heldout is None:  # one size beyond the grid, at a budget inside it (the cheaper middle)
        budgets = sorted({p.steps for p in grid})
        heldout = (max(sizes) + 1, budgets[(len(budgets) - 1) // 2])
    depth, steps = heldout
    h = make_point(recipe, depth, steps, heldout=True)
    if h.name in points:
        raise TwofilesError(f"the held-out point {h.name} is also in the grid: choose another")
    sweep = Sweep(recipe=recipe, data=data, points=[*grid, h], train_tokens=train_tokens)
    if train_tokens:
        over = [p.name for p in sweep.points if p.tokens > train_tokens]
        if over:
            sweep.notes.append(
                f"{len(over)} point(s) pass one epoch of the {train_tokens:,} training tokens "
                f"(they see repeated data): {', '.join(over)}"
            )
    return sweep


def parse_heldout(text: str, tokens_per_step: int) -> tuple[int, int]:
    """--heldout DEPTH:TOKENS -> (depth, steps)."""
    try:
        a, b = text.split(":")
        depth, tokens = int(a), int(float(b))
    except ValueError:
        raise TwofilesError(
            f"--heldout: expected DEPTH:TOKENS (e.g. 7:327680), got {text!r}"
        ) from None
    return depth, max(1, round(tokens / tokens_per_step))


def write_sweep(sweep_dir: str | Path, sweep: Sweep) -> Path:
    from twofiles.paths import atomic_write_bytes

    path = Path(sweep_dir) / SWEEP_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, (json.dumps(sweep.to_dict(), indent=1) + "\n").encode())
    return path


def read_sweep(sweep_dir: str | Path) -> Sweep:
    """sweep.json, checked enough that every later step can trust it."""
    path = Path(sweep_dir) / SWEEP_FILE
    if not path.is_file():
        raise BadInputError(
            "no sweep.json here: create the sweep with `twofiles scaling plan --out DIR`",
            path=str(Path(sweep_dir)),
        )
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        recipe, points = doc["recipe"], doc["points"]
        if not isinstance(recipe, dict) or not isinstance(points, list) or not points:
            raise ValueError("recipe must be an object and points a non-empty list")
        sweep = Sweep(
            recipe=recipe,
            data=str(doc["data"]),
            points=[Point(**p) for p in points],
            train_tokens=int(doc.get("train_tokens", 0)),
            format=int(doc.get("format", FORMAT)),
            notes=list(doc.get("notes", [])),
        )
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BadInputError(f"not valid JSON ({e})", path=str(path)) from None
    except (KeyError, TypeError, ValueError) as e:
        raise BadInputError(f"not a sweep plan ({type(e).__name__}: {e})", path=str(path)) from None
    if sweep.format != FORMAT:
        raise BadInputError(
            f"sweep format {sweep.format}, this version reads {FORMAT}", path=str(path)
        )
    names = [p.name for p in sweep.points]
    if len(set(names)) != len(names):
        raise BadInputError("duplicate point names", path=str(path))
    return sweep
