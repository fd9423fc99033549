"""`twofiles eval MODEL --tasks t1,t2`: benchmark a model on task files; print a results table.

MODEL is anything twofiles loads (model.safetensors, .gguf, a Hugging Face directory, an alias),
or, with --endpoint URL --model-name NAME, a model behind an OpenAI-compatible API. Tasks are
built-in names (`--list` shows them) or paths to .toml specs. Progress goes to stderr, the table
to stdout; --json adds one summary line: {"model", "tasks": {name: {"metric", "value",
"accuracy"|"bits_per_byte", "n", ...}}}. --out FILE also writes the full results (with samples)
as JSON, for `twofiles report`.
"""

from __future__ import annotations

import argparse
import sys

from twofiles.cli.common import (
    add_batch_size_flag,
    add_device_flag,
    add_inference_flags,
    add_json_flag,
    comma_list,
    emit_json,
    prepare_model,
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "model",
        metavar="MODEL",
        nargs="?",
        help="model.safetensors, .gguf, Hugging Face directory or alias (smollm2)",
    )
    p.add_argument(
        "--tasks",
        default="plays,quotes,capitals,arithmetic",
        help="comma-separated built-in task names or .toml paths",
    )
    p.add_argument("--list", action="store_true", help="list the built-in tasks and exit")
    p.add_argument(
        "--limit",
        type=int,
        default=None,
        help="at most N examples per task (bits per byte: N windows)",
    )
    p.add_argument(
        "--shots",
        type=int,
        default=None,
        help="few-shot examples per prompt (default: each task's own)",
    )
    add_batch_size_flag(p, default=8, what="requests")
    p.add_argument(
        "--seed", type=int, default=0, help="seed for choosing few-shot examples (default 0)"
    )
    chat = p.add_mutually_exclusive_group()
    chat.add_argument(
        "--chat",
        dest="chat",
        action="store_true",
        default=None,
        help="render generative prompts with the chat template",
    )
    chat.add_argument(
        "--no-chat",
        dest="chat",
        action="store_false",
        help="plain-text prompts even if the model has a chat template",
    )
    p.add_argument(
        "--endpoint",
        default=None,
        metavar="URL",
        help="evaluate a model behind an OpenAI-compatible API instead",
    )
    p.add_argument("--model-name", default=None, help="the endpoint's model name (with --endpoint)")
    p.add_argument(
        "--api-key", default=None, help="bearer token for the endpoint (default: $OPENAI_API_KEY)"
    )
    add_device_flag(p)
    add_inference_flags(p)
    p.add_argument(
        "--out",
        default=None,
        metavar="FILE",
        help="also write the full results (with samples) to this JSON file",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_json_flag(p)


def run(args: argparse.Namespace) -> int:
    import json
    import os
    import time

    from twofiles.errors import TwofilesError
    from twofiles.eval.tasks import builtin_tasks, load_spec

    if args.list:
        for name, path in builtin_tasks().items():
            spec = load_spec(str(path))
            print(f"{name:<12} {spec.type:<16} {spec.description}")
        return 0
    specs = [load_spec(t) for t in comma_list(args.tasks)]  # bad specs fail before a model loads
    if not specs:
        raise TwofilesError("--tasks: give at least one task")
    for name, value in (("--limit", args.limit), ("--shots", args.shots)):
        if value is not None and value < (1 if name == "--limit" else 0):
            raise TwofilesError(f"{name} {value}: must be >= {1 if name == '--limit' else 0}")
    if args.batch_size < 1:
        raise TwofilesError(f"--batch-size {args.batch_size}: must be >= 1")

    from twofiles.eval.runner import evaluate, format_results, summary

    t0 = time.perf_counter()
    if args.endpoint:
        from twofiles.eval.backends import Backend, EndpointBackend

        if not args.model_name:
            raise TwofilesError(
                "--endpoint needs --model-name (the name the server knows the model by)"
            )
        backend: Backend = EndpointBackend(
            args.endpoint,
            args.model_name,
            api_key=args.api_key or os.environ.get("OPENAI_API_KEY", ""),
        )
        label = f"{args.model_name} @ {args.endpoint}"
    else:
        if not args.model:
            raise TwofilesError("give a MODEL (or --endpoint URL --model-name NAME)")
        from twofiles.eval.backends import LocalBackend
        from twofiles.formats.resolve import resolve_model
        from twofiles.runtime import pick_device

        device, why = pick_device(args.device)
        loaded = resolve_model(args.model, device=device)
        # the model's own layout and precision unless quantized: scores comparable with training's
        setup = prepare_model(loaded, args, layout=False)
        backend = LocalBackend(loaded, name=args.model, chat=args.chat)
        label = args.model
        print(
            f"model {args.model} on {device.type} ({why}); {'; '.join(setup.reasons)}; prompts: {'chat template' if backend.is_chat else 'plain text'}",
            file=sys.stderr,
        )
    results = evaluate(
        backend,
        specs,
        limit=args.limit,
        shots=args.shots,
        batch_size=args.batch_size,
        seed=args.seed,
        progress=not args.no_progress,
    )
    seconds = time.perf_counter() - t0
    print(format_results(results, label))
    if args.out:
        from twofiles.artifact import atomic_write_bytes

        doc = {
            "model": label,
            "chat": backend.is_chat,
            "seed": args.seed,
            "seconds": seconds,
            "results": [r.to_dict() for r in results],
        }
        atomic_write_bytes(args.out, json.dumps(doc, indent=1, default=str).encode())
    if args.json:
        emit_json(
            {
                "model": label,
                "chat": backend.is_chat,
                "seconds": round(seconds, 3),
                "tasks": summary(results),
            }
        )
    return 0
