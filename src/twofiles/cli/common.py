"""Helpers shared by the verb modules (not a verb itself)."""

from __future__ import annotations

import argparse
import json
import secrets
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from twofiles.artifact import LoadedModel, Persona
    from twofiles.engine import SamplingParams
    from twofiles.quant import InferenceSetup
    from twofiles.train.loop import RunConfig

RC = TypeVar("RC", bound="RunConfig")


def add_subcommands(
    parser: argparse.ArgumentParser, subcommands: dict[str, tuple[str, str]], dest: str
) -> None:
    """A verb made of subcommands (`twofiles sae train ...`): each name -> (module, one-line help),
    the module exposing `add_arguments(parser)` and `run(args)`; cli.main then calls the chosen
    subcommand's module directly (a subparser's defaults override its parent's `_module`)."""
    import importlib

    sub = parser.add_subparsers(dest=dest, metavar="CMD", required=True)
    for name, (module_name, help_text) in subcommands.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        module = importlib.import_module(module_name)
        module.add_arguments(p)
        p.set_defaults(_module=module)


def add_json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--json",
        action="store_true",
        help="print a one-line JSON summary as the last line of stdout",
    )


def emit_json(summary: dict[str, Any]) -> None:
    """The scripting contract: one JSON object, alone on the last line of stdout."""
    sys.stdout.flush()
    print(json.dumps(summary, default=str), flush=True)


class _Given(argparse.Action):
    """Store the flag's value and note that the user gave it: a persona's default yields only to
    an explicit flag, not to the flag's own default."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        setattr(namespace, self.dest, values)
        namespace._given = {*getattr(namespace, "_given", ()), self.dest}


def add_sampling_flags(
    parser: argparse.ArgumentParser, *, temperature: float, top_p: float, max_tokens: int, what: str
) -> None:
    """The die's settings, shared by the verbs that sample (defaults differ: a chat wants a
    sharper die than a free continuation). `what` names one generation in the help ("reply")."""
    parser.add_argument(
        "--temperature",
        action=_Given,
        type=float,
        default=temperature,
        help=f"0 = greedy; <1 sharper, >1 flatter (default {temperature:g})",
    )
    parser.add_argument(
        "--top-k",
        action=_Given,
        type=int,
        default=0,
        help="sample among the K most likely tokens only (0 = off)",
    )
    parser.add_argument(
        "--top-p",
        action=_Given,
        type=float,
        default=top_p,
        help=f"sample among the most likely tokens covering probability P (default {top_p:g}; 1 = off)",
    )
    parser.add_argument(
        "--min-p",
        action=_Given,
        type=float,
        default=0.0,
        help="drop tokens less likely than M x the top token (0 = off)",
    )
    parser.add_argument(
        "--repetition-penalty",
        action=_Given,
        type=float,
        default=1.0,
        help="> 1 discourages repeating tokens (1 = off)",
    )
    parser.add_argument(
        "--seed",
        action=_Given,
        type=int,
        default=None,
        help="seed for sampling (default: random, printed to stderr)",
    )
    parser.add_argument(
        "--max-tokens",
        action=_Given,
        type=int,
        default=max_tokens,
        help=f"most new tokens per {what} (default {max_tokens})",
    )


def sampling_params(args: argparse.Namespace, **extra: Any) -> SamplingParams:
    """SamplingParams from add_sampling_flags' flags, validated (before any model load: a typo
    should not cost one); a missing --seed becomes a random one, so the run can be repeated."""
    from twofiles.engine import SamplingParams

    seed = args.seed if args.seed is not None else secrets.randbelow(2**31)
    return SamplingParams(
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        min_p=args.min_p,
        repetition_penalty=args.repetition_penalty,
        seed=seed,
        max_tokens=args.max_tokens,
        **extra,
    ).validate()


def persona_sampling(
    params: SamplingParams, args: argparse.Namespace, loaded: LoadedModel
) -> SamplingParams:
    """`params` with the loaded persona's PARAMETERs (formats/persona.py) for every setting the
    user did not give as a flag (a --stop given replaces the persona's stop strings)."""
    from dataclasses import replace

    persona = getattr(loaded, "persona", None)
    if persona is None:
        return params
    given: set[str] = getattr(args, "_given", set())
    defaults = {
        k: v
        for k, v in persona.sampling.items()
        if (k not in given if k != "stop" else not getattr(args, "stop", None))
    }
    return replace(params, **defaults).validate()


def seeded(args: argparse.Namespace, loaded: LoadedModel) -> bool:
    """Whether the seed was chosen (--seed, or a persona's PARAMETER seed), not drawn at random."""
    persona = getattr(loaded, "persona", None)
    return args.seed is not None or (persona is not None and "seed" in persona.sampling)


def persona_summary(persona: Persona) -> str:
    """One stderr line: what a persona brings to this run."""
    parts = ["a system message"] * (persona.system is not None)
    parts += [f"{len(persona.messages)} few-shot messages"] * bool(persona.messages)
    parts += ["its own chat template"] * (persona.template is not None)
    defaults = " ".join(f"{k}={v!r}" for k, v in persona.sampling.items())
    parts += [f"defaults {defaults} (flags given win)"] * bool(defaults)
    return f"persona {persona.name}: {', '.join(parts) or 'no defaults'}"


def add_device_flag(parser: argparse.ArgumentParser) -> None:
    """--device, for every verb that runs a model (runtime.pick_device reads it)."""
    parser.add_argument(
        "--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda, cuda:N or mps"
    )


# A config field's flag: (flag, section, field, type, help); section "" is the config itself.
Row = tuple[str, str, str, type, str]


def given_flags(args: argparse.Namespace, fields: Sequence[Row]) -> dict[str, tuple[str, Any]]:
    """The config fields a user gave on the command line, as dotted field -> (flag, value), for
    a resume to check against the saved run. `fields`: (flag, section, name, type, help) rows."""
    given: dict[str, tuple[str, Any]] = {}
    for flag, section, name, _, _ in fields:
        value = getattr(args, flag[2:].replace("-", "_"))
        if value is not None:
            given[f"{section}.{name}" if section else name] = (flag, value)
    return given


def given_paths(
    given: dict[str, tuple[str, Any]],
    saved: dict[str, Any],
    rows: Sequence[tuple[str, str, str | None]],
) -> None:
    """Add the path arguments a user gave on resuming, as (field, flag, value) rows, to `given`;
    a path naming the same file as the run's own (relative or absolute) counts as the run's value,
    so it is never refused as a change."""
    from pathlib import Path

    for name, flag, value in rows:
        if value is None:
            continue
        old = str(saved.get(name, ""))
        same = value == old or (
            Path(value).exists() and Path(value).resolve() == Path(old).resolve()
        )
        given[name] = (flag, saved.get(name) if same else value)


def set_given_fields(cfg: RunConfig, args: argparse.Namespace, fields: Sequence[Row]) -> None:
    """A new run's config with the fields the user gave as flags set (`fields` as in given_flags;
    a section names the sub-config, "optim" or "model")."""
    for flag, section, name, _, _ in fields:
        value = getattr(args, flag[2:].replace("-", "_"))
        if value is not None:
            setattr(getattr(cfg, section) if section else cfg, name, value)


def saved_run(args: argparse.Namespace) -> dict[str, Any] | None:
    """The config of the run in --out that --resume continues (None: a new run)."""
    from pathlib import Path

    path = Path(args.out) / "config.json"
    return json.loads(path.read_text()) if args.resume and path.is_file() else None


def resumed_config(
    cls: type[RC],
    args: argparse.Namespace,
    saved: dict[str, Any],
    fields: Sequence[Row],
    *,
    paths: Sequence[tuple[str, str, str | None]] = (),
    extra: dict[str, tuple[str, Any]] | None = None,
) -> RC:
    """The saved run's config, with the flags that may change applied; conflicting flags refused
    (each named, with the run's value and the given one). `paths` as in given_paths; `extra`: the
    verb's other given flags, as dotted field -> (flag, value)."""
    from twofiles.train.runctl import resumed

    given = given_flags(args, fields)
    given_paths(given, saved, paths)
    given.update(extra or {})
    cfg = resumed(saved, cls.from_dict(saved), given)
    # the run is the one in --out, where its config was read: a run directory moved or copied
    # elsewhere resumes there, not into the directory it was started in
    cfg.out = args.out
    cfg.device = args.device
    if args.dtype != "auto":
        cfg.dtype = args.dtype
    return cfg


# The finetuning verbs' (sft, dpo, reward) shared config-field flags, as given_flags rows.
LORA_ROWS: list[Row] = [
    (
        "--lora-rank",
        "",
        "lora_rank",
        int,
        "train LoRA adapters of this rank instead of every weight (0: full finetuning)",
    ),
    (
        "--lora-alpha",
        "",
        "lora_alpha",
        float,
        "LoRA scale numerator: the update is scaled by alpha / rank",
    ),
]


def optim_rows(lr_help: str = "peak learning rate") -> list[Row]:
    """The optimizer's flags of a finetuning run."""
    return [
        ("--optimizer", "optim", "optimizer", str, "adamw (default) or muon"),
        ("--lr", "optim", "lr", float, lr_help),
        ("--weight-decay", "optim", "weight_decay", float, "decoupled weight decay on matrices"),
        ("--schedule", "optim", "schedule", str, "wsd, cosine or constant"),
        ("--warmup-steps", "optim", "warmup_steps", int, "linear warm-up steps"),
        ("--grad-clip", "optim", "grad_clip", float, "global gradient-norm clip (0: off)"),
    ]


# every training verb's checkpoint flags
CHECKPOINT_ROWS: list[Row] = [
    (
        "--checkpoint-interval",
        "",
        "checkpoint_interval",
        int,
        "steps between checkpoints (besides those every --checkpoint-seconds)",
    ),
    (
        "--checkpoint-seconds",
        "",
        "checkpoint_seconds",
        float,
        "seconds between checkpoints (default 60; 0: only at the end and on Ctrl-C/SIGTERM)",
    ),
]


def length_rows(data: str, eval_help: str = "steps between held-out evaluations") -> list[Row]:
    """A finetuning run's length and checkpoint flags; `data` names what an epoch passes over."""
    return [
        ("--grad-accum", "", "grad_accum", int, "micro-batches per optimizer step"),
        ("--epochs", "", "epochs", float, f"passes over the {data}"),
        ("--max-steps", "", "max_steps", int, "optimizer steps (overrides --epochs)"),
        ("--time-budget", "", "time_budget_s", float, "train for this many seconds"),
        ("--eval-interval", "", "eval_interval", int, eval_help),
        *CHECKPOINT_ROWS,
    ]


def add_lora_flags(parser: argparse.ArgumentParser, *, merge: bool) -> None:
    """--lora-targets (and --merge, where the verb can merge) of the finetuning verbs."""
    parser.add_argument(
        "--lora-targets",
        default=None,
        help="comma-separated Linear names LoRA adapts (default: all of q,k,v,o,gate,up,down_proj)",
    )
    if merge:
        parser.add_argument(
            "--merge",
            action="store_true",
            help="LoRA: merge the adapters into the weights (model.safetensors) instead of "
            "adapters.safetensors",
        )


def lora_targets(value: str) -> list[str]:
    """--lora-targets q_proj,v_proj -> the names."""
    return [t.strip() for t in value.split(",") if t.strip()]


def add_training_run_flags(parser: argparse.ArgumentParser) -> None:
    """The run-control flags of the training verbs (pretrain, sft): where, in what precision,
    whether to resume, whether to show progress. Resuming restores everything else from the run."""
    add_device_flag(parser)
    parser.add_argument(
        "--dtype",
        default="auto",
        help="auto (bf16 autocast on CUDA; on CPU where a measured probe finds bf16 matmuls "
        ">= 1.5x fp32, else fp32), fp32, bf16",
    )
    parser.add_argument(
        "--resume", action="store_true", help="continue exactly from the newest checkpoint in --out"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


class DeprecatedAlias(argparse.Action):
    """An old spelling of a flag: it still works, and says on stderr which spelling to use."""

    def __init__(self, option_strings: list[str], dest: str, *, canonical: str, **kw: Any) -> None:
        self.canonical = canonical
        kw.setdefault("help", f"old spelling of {canonical} (still accepted)")
        super().__init__(option_strings, dest, **kw)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        print(
            f"twofiles: {option_string} is deprecated; use {self.canonical}",
            file=sys.stderr,
        )
        setattr(namespace, self.dest, values)


def add_alias(parser: argparse.ArgumentParser, old: str, canonical: str, **kw: Any) -> None:
    """Accept `old` as a deprecated spelling of the already-added flag `canonical`."""
    action = next(a for a in parser._actions if canonical in a.option_strings)
    typed: dict[str, Any] = {"type": action.type} if action.type is not None else {}
    parser.add_argument(
        old,
        dest=action.dest,
        action=DeprecatedAlias,
        canonical=canonical,
        **typed,
        metavar=action.metavar,
        default=argparse.SUPPRESS,  # the canonical flag's default stands
        **kw,
    )


def add_batch_size_flag(parser: argparse.ArgumentParser, *, default: int, what: str) -> None:
    """--batch-size, the one spelling across verbs (--batch still works)."""
    parser.add_argument(
        "--batch-size",
        type=int,
        default=default,
        metavar="N",
        help=f"{what} per forward pass (default {default})",
    )
    add_alias(parser, "--batch", "--batch-size")


def comma_list(value: str | list[str] | None) -> list[str]:
    """A comma-separated list (the one list spelling across verbs); also takes the items of an
    nargs="+" flag, each of which may itself be a comma list. Empty items are dropped."""
    items = [value] if isinstance(value, str) else list(value or [])
    return [x.strip() for item in items for x in item.split(",") if x.strip()]


def add_inference_flags(
    parser: argparse.ArgumentParser, *, compile: bool = False, layout: bool = False
) -> None:
    """--quantize, --group-size and --threads for every verb that runs a model; --compile /
    --no-compile where the verb decodes through the model's forward (generate, chat), the part
    torch.compile wraps; --dtype and --layout where the verb runs the inference layout (generate,
    chat, serve): each forces what the measured probe would otherwise choose."""
    parser.add_argument(
        "--quantize",
        choices=("none", "int8", "int4"),
        default="none",
        help="weight-only quantization: int8 per channel, int4 in groups (default none)",
    )
    parser.add_argument(
        "--group-size",
        type=int,
        default=32,
        help="int4 group size: 32, 64, 128 or 256 (default 32)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        metavar="N",
        help="CPU threads for torch (default: the fastest count the decode probe measured)",
    )
    if layout:
        parser.add_argument(
            "--dtype",
            choices=("auto", "fp32", "bf16"),
            default="auto",
            help="weights' precision: auto (on CPU bf16 where the decode probe measures it "
            ">= 1.15x fp32, else fp32; bf16 on CUDA), fp32, bf16",
        )
        parser.add_argument(
            "--layout",
            choices=("auto", "packed", "fused", "plain"),
            default="auto",
            help="auto (the probe's choice), packed (fused, oneDNN-packed linears), fused "
            "(q/k/v and gate/up one matmul each), plain (the training layout)",
        )
    if compile:
        parser.add_argument(
            "--compile",
            action=argparse.BooleanOptionalAction,
            default=None,
            help="torch.compile each block (default: with --quantize on CPU where a C++ "
            "compiler exists; the first start compiles, later starts reuse inductor's disk cache)",
        )


def prepare_model(
    loaded: LoadedModel, args: argparse.Namespace, *, layout: bool = True
) -> InferenceSetup:
    """add_inference_flags' flags applied to a loaded model (quant.prepare_for_inference).
    `layout` False keeps the model's own layout and precision (fused, packed, cast weights)
    unless quantization is asked for: evaluation's numbers then match a training run's."""
    from twofiles.quant import InferenceSetup, prepare_for_inference

    changed = args.quantize != "none"
    if not layout and not changed:
        import torch

        from twofiles.errors import TwofilesError

        if args.threads is not None:
            if args.threads < 1:
                raise TwofilesError(f"--threads {args.threads}: must be >= 1")
            torch.set_num_threads(args.threads)
        dtype = str(next(loaded.model.parameters()).dtype).replace("torch.", "")
        return InferenceSetup(
            quantize="none",
            dtype=dtype,
            compiled=False,
            threads=torch.get_num_threads(),
            reasons=[f"the model's own {dtype} layout", f"{torch.get_num_threads()} CPU threads"],
        )
    return prepare_for_inference(
        loaded,
        quantize=args.quantize,
        group_size=args.group_size,
        compile=getattr(args, "compile", False),  # verbs without the flag never compile
        threads=args.threads,
        dtype=getattr(args, "dtype", "auto") if layout else "fp32",
        layout=getattr(args, "layout", "auto") if layout else "plain",
    )


def no_compile_when_steering(args: argparse.Namespace, steering: bool) -> None:
    """--steer adds Python hooks inside the model, which a compiled block would not run: with
    --compile that is an error, and otherwise no compile is chosen (args.compile = False)."""
    if not steering:
        return
    if args.compile:
        from twofiles.errors import TwofilesError

        raise TwofilesError("--steer adds Python hooks inside the model: drop --compile")
    args.compile = False


def add_steer_flags(parser: argparse.ArgumentParser) -> None:
    """--steer and --steer-units, for the verbs that generate (sae/steering.py reads them)."""
    parser.add_argument(
        "--steer",
        action="append",
        default=[],
        metavar="DIR:FEATURE=SCALE",
        help="add SCALE x an SAE feature's direction at the SAE's layer while generating "
        "(repeatable; SCALE in units of the activation's typical norm, see --steer-units)",
    )
    parser.add_argument(
        "--steer-units",
        choices=("norm", "abs"),
        default="norm",
        help="norm: SCALE x the median norm of the activation on the prompt (default); "
        "abs: SCALE as the added vector's norm",
    )
