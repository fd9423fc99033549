"""`twofiles <verb>`: the command-line entry point.

Each verb is one thin module in this package exposing `add_arguments(parser)` and
`run(args) -> int`. Verb modules import only the standard library at top level (heavy imports
such as torch happen inside `run`), so `twofiles --help` is instant. Verbs never import each other;
shared code lives in the library.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time

# verb -> (module, one-line help). Order is the order of the story.
VERBS: dict[str, tuple[str, str]] = {
    "tokenizer": (
        "twofiles.cli.tokenizer",
        "train a byte-level BPE tokenizer, or show how text is tokenized",
    ),
    "data": ("twofiles.cli.data", "turn text/JSONL/Parquet into token shards"),
    "pretrain": ("twofiles.cli.pretrain", "pretrain a base model on token shards"),
    "sft": (
        "twofiles.cli.sft",
        "finetune a model into an assistant on conversations (built-in mix or JSONL), fully or with LoRA",
    ),
    "dpo": (
        "twofiles.cli.dpo",
        "tune a model on preference pairs (JSONL, or the web UI's feedback and arena votes) with DPO",
    ),
    "reward": (
        "twofiles.cli.reward",
        "train a reward model (a scalar head, Bradley-Terry loss) on preference pairs; it scores replies for chat, arena and pairs",
    ),
    "pairs": (
        "twofiles.cli.pairs",
        "sample K answers per prompt and label them with the task's verifier: preference pairs (JSONL)",
    ),
    "rl": (
        "twofiles.cli.rl",
        "RL against a verifiable reward: groups of rollouts, the verifier's reward, LoRA or full",
    ),
    "generate": ("twofiles.cli.generate", "sample a continuation from a model"),
    "export": (
        "twofiles.cli.export",
        "export run: model.safetensors + a numpy-only run.py (the two files); export hf: a Hugging Face directory",
    ),
    "speedrun": (
        "twofiles.cli.speedrun",
        "tokenizer -> data -> pretrain -> samples -> SFT -> RL on the built-in corpus",
    ),
    "pull": ("twofiles.cli.pull", "fetch a built-in model (smollm2) into the cache, once"),
    "create": (
        "twofiles.cli.create",
        "register a persona from an Ollama-style Modelfile (FROM, SYSTEM, PARAMETER, TEMPLATE, ...)",
    ),
    "list": ("twofiles.cli.listing", "list the registered personas"),
    "show": ("twofiles.cli.show", "show a registered persona (or print it as a Modelfile)"),
    "cp": ("twofiles.cli.cp", "copy a registered persona to a new name"),
    "rm": ("twofiles.cli.rm", "remove registered personas (never the files they name)"),
    "rag": (
        "twofiles.cli.rag",
        "index your documents (text, Markdown, HTML, PDF, JSONL) and search them: BM25, dense, hybrid",
    ),
    "chat": (
        "twofiles.cli.chat",
        "chat with a model in the terminal (streaming, system prompt, tools); scriptable through stdin",
    ),
    "serve": (
        "twofiles.cli.serve",
        "serve models over an OpenAI-compatible HTTP API (continuous batching)",
    ),
    "feedback": (
        "twofiles.cli.feedback",
        "turn thumbs up/down and corrections from the web UI into SFT and preference JSONL",
    ),
    "eval": (
        "twofiles.cli.eval",
        "benchmark a model: bits per byte, multiple choice, generative tasks (GSM8K, skills)",
    ),
    "arena": (
        "twofiles.cli.arena",
        "models fight anonymously on prompts; votes in SQLite; Elo / Bradley-Terry leaderboard",
    ),
    "report": (
        "twofiles.cli.report",
        "rebuild a run's report.md, or compare several runs side by side",
    ),
    "redteam": (
        "twofiles.cli.redteam",
        "attack a model (jailbreaks, prompt injection, GCG suffixes, data poisoning) and measure the guards",
    ),
    "guard": (
        "twofiles.cli.guard",
        "scan text for injection and jailbreak attempts (rules, decoding, a learned classifier)",
    ),
    "scaling": (
        "twofiles.cli.scaling",
        "scaling laws: plan a sweep of model sizes x token budgets, run it, fit L(N, D), report",
    ),
    "experiment": (
        "twofiles.cli.experiment",
        "reproduce a published result on a model (reversal: the reversal curse)",
    ),
    "compress": (
        "twofiles.cli.compress",
        "compress a file losslessly with arithmetic coding driven by a model's predictions",
    ),
    "decompress": (
        "twofiles.cli.compress",
        "restore a file made by `twofiles compress` (the same model is required)",
    ),
    "inspect": (
        "twofiles.cli.inspect",
        "look inside a model: logit lens, attention, attribution, patching, neurons, embeddings",
    ),
    "sae": (
        "twofiles.cli.sae",
        "sparse autoencoders on a layer's activations: train, feature dashboards",
    ),
}

# verbs whose first word may be left out: `twofiles redteam MODEL` is `twofiles redteam run MODEL`
DEFAULT_SUBCOMMAND: dict[str, tuple[str, frozenset[str]]] = {
    "redteam": ("run", frozenset({"run", "poison", "gcg"})),
}


def _with_default_subcommand(argv: list[str], verb: str | None) -> list[str]:
    if verb not in DEFAULT_SUBCOMMAND:
        return argv
    default, known = DEFAULT_SUBCOMMAND[verb]
    i = argv.index(verb)
    rest = argv[i + 1 :]
    first = next((a for a in rest if not a.startswith("-")), None)
    if first is None or first in known or any(a in ("-h", "--help") for a in rest[:1]):
        return argv
    return [*argv[: i + 1], default, *rest]


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The full parser; with `only`, just that verb's module is imported (fast start-up)."""
    parser = argparse.ArgumentParser(
        prog="twofiles", description="An LLM is two files: train, run and inspect them."
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for verb, (module_name, help_text) in VERBS.items():
        p = sub.add_parser(verb, help=help_text, description=help_text)
        if only is None or verb == only:
            module = importlib.import_module(module_name)
            module.add_arguments(p)
            p.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    started = time.perf_counter()  # verbs with a wall-clock budget count from here
    # Transparent huge pages for torch's large CPU tensors (read once, at torch's first
    # allocation; an explicit setting wins). A decode step streams every weight once, and 2 MB
    # pages spare the TLB a miss every 4 KB: ~10% faster fp32 decode (docs/LOG.md, 2026-11-24).
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
    argv = sys.argv[1:] if argv is None else argv
    verb = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(only=verb if verb in VERBS else None)
    args = parser.parse_args(_with_default_subcommand(argv, verb))
    if args.version:
        from twofiles import __version__

        print(f"twofiles {__version__}")
        return 0
    if not getattr(args, "verb", None):
        parser.print_help()
        return 2
    from twofiles.errors import TwofilesError

    args._started = started
    try:
        return int(args._module.run(args) or 0)
    except TwofilesError as e:
        print(f"twofiles {args.verb}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"twofiles {args.verb}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
