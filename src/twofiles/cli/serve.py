"""Serve models over an OpenAI-compatible HTTP API (continuous batching, streaming, tools).

  twofiles serve runs/sft/model.safetensors smollm2 --port 8000
  twofiles serve mine=runs/sft/model.safetensors --api-key secret --max-seqs 16
  twofiles serve smollm2 --rag docs.db    (grounded replies: the `rag` request field, the
                                            retrieve tool, citations in the web UI)
  twofiles serve smollm2 --sae runs/sae   (the web UI's Inside page shows the SAE's features)

Each MODEL is a spec any verb takes (parameters file, GGUF, Hugging Face directory, alias,
registered persona), optionally NAME=SPEC to choose the name clients send as `model`. Registered
personas (`twofiles create`) whose FROM is a model served here, with no ADAPTER, are served too,
on that model's engine (one copy of the weights, one KV cache), each request getting the
persona's system message, few-shot turns, template and sampling defaults (--no-personas: only the
models named). A persona named here that has adapters, or whose FROM is not served, gets its own. The server listens on 127.0.0.1
unless told otherwise, prints its URL, and runs until Ctrl-C. Any OpenAI client works with
base_url URL/v1. Limits (slots, queue, prefix cache, prefill chunk, prompt/output tokens, body
size, timeout) are ServeSettings fields, each a flag here.

Security: --guard SPEC runs the guards (twofiles.guard) on every chat request, --secret and
--allow-hosts feed the output guard, and a request's "guard" field may add guards (never remove
them; serve.guarding). CORS is closed unless --cors-origin names origins.
"""

from __future__ import annotations

import argparse
import sys

from twofiles.cli.common import (
    add_device_flag,
    add_inference_flags,
    add_json_flag,
    emit_json,
    prepare_model,
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "models",
        nargs="+",
        metavar="MODEL",
        help="a model spec (file, directory, alias), or NAME=SPEC to choose the name clients use",
    )
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1: this machine only)",
    )
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 = any free port)")
    p.add_argument(
        "--api-key",
        action="append",
        default=[],
        metavar="KEY",
        help="require 'Authorization: Bearer KEY' on /v1 (repeatable)",
    )
    p.add_argument(
        "--api-keys-file",
        metavar="FILE",
        help="file with one accepted key per line ('#' starts a comment)",
    )
    p.add_argument(
        "--max-seqs",
        type=int,
        default=None,
        help="sequences decoded together per model (default 8)",
    )
    p.add_argument(
        "--max-queue",
        type=int,
        default=None,
        help="requests waiting for a slot per model; more get 429 (default 32)",
    )
    p.add_argument(
        "--max-context",
        type=int,
        default=None,
        help="KV cache length per sequence, prompt + output (default 2048, capped by the model)",
    )
    p.add_argument(
        "--prefix-cache-mb",
        type=float,
        default=None,
        metavar="MB",
        help="keys and values of seen prompts and replies kept per model, so a shared system prompt "
        "or a chat's history is not computed again; least recently used go first (default 512; 0 = off)",
    )
    p.add_argument(
        "--prefill-chunk",
        type=int,
        default=None,
        metavar="N",
        help="most prompt tokens prefilled between two decode steps, so a long prompt does not "
        "stall the running requests (default 512; 0 = whole prompts at once)",
    )
    p.add_argument(
        "--max-prompt-tokens",
        type=int,
        default=None,
        help="longest prompt accepted (default: the context minus one)",
    )
    p.add_argument(
        "--max-output-tokens",
        type=int,
        default=None,
        help="max_tokens above this is clamped (default 1024)",
    )
    p.add_argument(
        "--max-body-bytes",
        type=int,
        default=None,
        help="larger request bodies get 413 (default 1 MiB)",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=None,
        help="seconds before a request is cancelled (default 300)",
    )
    p.add_argument(
        "--metrics",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="Prometheus metrics at GET /metrics, open like /health: counts and timings, never "
        "prompts or replies (default on; --no-metrics turns it off)",
    )
    p.add_argument(
        "--arena-db",
        default=None,
        metavar="PATH",
        help="where the web arena's votes go (default: $TWOFILES_ARENA_DB or "
        "~/.cache/twofiles/arena.sqlite, where `twofiles arena` looks without --db)",
    )
    p.add_argument(
        "--feedback-db",
        default=None,
        metavar="PATH",
        help="where the web UI's thumbs and corrections go (default: $TWOFILES_FEEDBACK_DB or "
        "~/.cache/twofiles/feedback.sqlite, where `twofiles feedback export` looks without --db)",
    )
    p.add_argument(
        "--rag",
        default=None,
        metavar="DB",
        help='a document index (twofiles rag index ... --db DB): requests with "rag": true (or '
        '{"k": 5}) get replies grounded in its passages, with `sources`; the web UI offers it, '
        "and a `retrieve` tool",
    )
    p.add_argument(
        "--rag-k",
        type=int,
        default=5,
        metavar="K",
        help="passages per grounded reply when a request gives no k, and the retrieve tool's "
        "default (default 5)",
    )
    p.add_argument(
        "--rag-cite",
        choices=("overlap", "constrained", "model"),  # grounding.CITE_METHODS (not imported:
        default="overlap",  # --help stays fast); the default is grounding.DEFAULT_CITE
        help='how a grounded reply is cited when a request gives no "rag": {"cite": ...} and the '
        "reply writes no [n] itself: overlap (each sentence to the passage holding its words, "
        "default), constrained (the model picks a number after the reply), model (only its own)",
    )
    p.add_argument(
        "--guard",
        default="none",
        metavar="SPEC",
        help="guards on every chat request: a comma list of input, classifier, spotlight, tools, "
        'output, or all / none (default none); a request\'s "guard" field can add guards, never '
        "remove these",
    )
    p.add_argument(
        "--secret",
        action="append",
        default=[],
        metavar="TEXT",
        help="a string no reply may contain: the output guard replaces it (repeatable; turns the "
        "output guard on)",
    )
    p.add_argument(
        "--allow-hosts",
        default="",
        metavar="HOSTS",
        help="comma list of hosts (and their subdomains) that links and images in replies may "
        "point to; the output guard removes any other (default: none)",
    )
    p.add_argument(
        "--cors-origin",
        action="append",
        default=[],
        metavar="URL",
        help="an origin (https://app.example) whose pages may call this server from a browser "
        "(repeatable; default none: CORS stays closed)",
    )
    p.add_argument(
        "--sae",
        action="append",
        default=[],
        metavar="[MODEL=]DIR",
        help="a sparse autoencoder (twofiles sae train ... --out DIR) whose features the web UI's "
        "Inside page shows at each token, linked to their dashboards once `twofiles sae features "
        "DIR` has written them; MODEL=DIR names the served model it reads when several are "
        "served (repeatable)",
    )
    p.add_argument(
        "--inside-max-tokens",
        type=int,
        default=None,
        metavar="N",
        help="longest prompt the Inside page reads, in tokens (default 256)",
    )
    p.add_argument(
        "--no-personas",
        action="store_true",
        help="serve only the models named, not the registered personas over them",
    )
    add_device_flag(p)
    add_inference_flags(p, layout=True)
    add_json_flag(p)


def _read_keys(path: str) -> list[str]:
    from twofiles.errors import BadInputError

    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise BadInputError(f"cannot read API keys: {e}", path=path) from None
    keys = []
    for n, line in enumerate(lines, 1):
        key = line.split("#", 1)[0].strip()
        if not key:
            continue
        if any(c.isspace() for c in key):
            raise BadInputError("an API key cannot contain spaces", path=path, line=n)
        keys.append(key)
    if not keys:
        raise BadInputError("no API keys in the file (one per line)", path=path)
    return keys


def _guard_config(args: argparse.Namespace):
    """--guard, --secret and --allow-hosts as the server's GuardConfig."""
    from twofiles.guard import GuardConfig, parse_guards

    guards = parse_guards(args.guard)
    secrets = tuple(s for s in args.secret if s)
    if secrets:
        guards |= {"output"}
    hosts = tuple(h.strip().lower() for h in args.allow_hosts.split(",") if h.strip())
    return GuardConfig(guards=guards, secrets=secrets, allowed_hosts=hosts)


def _open_rag(db: str, k: int, cite: str):
    """The index behind --rag, opened now so that a wrong path fails before the models load."""
    from twofiles.rag import open_index
    from twofiles.serve.core import RagService

    index = open_index(db)
    info = index.info
    print(
        f"documents: {db} ({info['files']} files, {info['chunks']} passages), "
        f"{k} per grounded reply",
        file=sys.stderr,
    )
    return RagService(index, k=k, cite=cite)


def _load_saes(
    values: list[str], specs: dict[str, str], models: dict, identities: dict[str, str]
) -> dict[str, list]:
    """--sae [MODEL=]DIR as served model -> its SAEs, each checked against that model (a clear
    error now rather than on the first prompt). A bare DIR belongs to the one model named."""
    from twofiles.errors import BadInputError
    from twofiles.serve.inside import load_served_sae

    saes: dict[str, list] = {}
    for i, value in enumerate(values):
        model, sep, path = value.partition("=")
        if not sep or model not in specs:  # a directory whose name holds '='
            if len(specs) != 1:
                raise BadInputError(
                    f"--sae {value}: several models are served ({', '.join(specs)}); "
                    "say which one it reads: --sae MODEL=DIR"
                )
            model, path = next(iter(specs)), value
        served = load_served_sae(path, models[model], model, str(i), identities.get(model, ""))
        saes.setdefault(model, []).append(served)
        print(
            f"sae {served.name} on {model}: {served.sae.cfg.d_sae} features at "
            f"{served.hook_name} (the Inside page)",
            file=sys.stderr,
        )
    return saes


def run(args: argparse.Namespace) -> int:
    import dataclasses
    import socket
    from pathlib import Path

    from twofiles.errors import TwofilesError
    from twofiles.serve.settings import ServeSettings

    try:
        import uvicorn

        from twofiles.serve.app import create_app, model_name
    except ModuleNotFoundError as e:
        raise TwofilesError(
            f"serving needs the 'serve' extra ({e.name} is missing): pip install 'twofiles[serve]'"
        ) from None
    from twofiles.runtime import pick_device

    keys = list(args.api_key) + (_read_keys(args.api_keys_file) if args.api_keys_file else [])
    overrides = {
        "max_seqs": args.max_seqs,
        "max_queue": args.max_queue,
        "max_context": args.max_context,
        "prefix_cache_mb": args.prefix_cache_mb,
        "prefill_chunk": args.prefill_chunk,
        "max_prompt_tokens": args.max_prompt_tokens,
        "max_output_tokens": args.max_output_tokens,
        "max_body_bytes": args.max_body_bytes,
        "request_timeout_s": args.timeout,
        "metrics": args.metrics,
        "cors_origins": tuple(args.cors_origin) or None,
        "inside_max_tokens": args.inside_max_tokens,
    }
    try:
        settings = dataclasses.replace(
            ServeSettings(),
            api_keys=frozenset(keys),
            **{k: v for k, v in overrides.items() if v is not None},
        )
    except ValueError as e:
        raise TwofilesError(str(e)) from None

    specs: dict[str, str] = {}
    for arg in args.models:
        name, sep, spec = arg.partition("=")
        if not sep:
            name, spec = model_name(arg), arg
        if not name or not spec:
            raise TwofilesError(f"{arg!r}: expected MODEL or NAME=MODEL")
        if name in specs:
            raise TwofilesError(f"two models are named {name!r}: give one a name with NAME=MODEL")
        specs[name] = spec

    guard = _guard_config(args)
    rag = None
    if args.rag is not None:
        from twofiles.serve.protocol import MAX_RAG_K

        if not 1 <= args.rag_k <= MAX_RAG_K:
            raise TwofilesError(f"--rag-k {args.rag_k}: must be from 1 to {MAX_RAG_K}")
        rag = _open_rag(args.rag, args.rag_k, args.rag_cite)

    from twofiles.serve.core import load_models

    device, why = pick_device(args.device)

    identities: dict[str, str] = {}  # the weights hash an SAE records, taken before preparation

    def loaded(name: str, spec: str, model, seconds: float) -> None:
        n_params = sum(p.numel() for p in model.model.parameters())
        if args.sae:
            from twofiles.sae.activations import model_id

            identities[name] = model_id(model)
        # the same preparation as `generate`: inference dtype (bf16 weights on CUDA), quantization, threads
        setup = prepare_model(model, args)
        print(
            f"model {name} ({spec}): {n_params / 1e6:.2f}M parameters, {device.type} ({why}), loaded in {seconds:.2f}s; {'; '.join(setup.reasons)}",
            file=sys.stderr,
        )

    models, shared = load_models(
        specs, device=device, personas=not args.no_personas, on_load=loaded
    )
    for name, base in shared.items():
        print(f"persona {name}: served on the engine of {base}", file=sys.stderr)
    saes = _load_saes(args.sae, specs, models, identities)
    app = create_app(models, settings, shared=shared, rag=rag, guard=guard, saes=saes)
    if guard.guards:
        print(
            f"guards: {', '.join(sorted(guard.guards))} on every chat request"
            + (f" ({len(guard.secrets)} secrets)" if guard.secrets else ""),
            file=sys.stderr,
        )
    web = app.state.web  # its databases open on first use: they may still be moved
    if args.arena_db:
        web.arena_db = Path(args.arena_db)
    if args.feedback_db:
        web.feedback_db = Path(args.feedback_db)

    try:
        sock = socket.create_server((args.host, args.port))
    except OSError as e:
        raise TwofilesError(
            f"cannot listen on {args.host}:{args.port}: {e.strerror or e} (choose another --port or --host)"
        ) from None
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{port}"
    if args.host not in ("127.0.0.1", "localhost", "::1") and not keys:
        print(
            f"warning: listening on {args.host} without --api-key: anyone who can reach this machine can use it",
            file=sys.stderr,
        )
    print(
        f"web UI at {url}/: arena votes -> {web.arena_db}, feedback -> {web.feedback_db}",
        file=sys.stderr,
    )
    print(f"serving {', '.join(models)} at {url}/v1 (OpenAI-compatible; Ctrl-C stops)", flush=True)
    if args.json:
        emit_json(
            {
                "url": url,
                "base_url": f"{url}/v1",
                "models": list(models),
                "max_seqs": settings.max_seqs,
                "prefix_cache_mb": settings.prefix_cache_mb,
                "auth": bool(keys),
                "metrics": f"{url}/metrics" if settings.metrics else None,
                "arena_db": str(web.arena_db),
                "feedback_db": str(web.feedback_db),
                "rag": args.rag,
                "guard": sorted(guard.guards),
                "cors_origins": list(settings.cors_origins),
                "inside": f"{url}/inside",
                "saes": [
                    {"model": m, "id": s.id, "path": str(s.path), "hook_name": s.hook_name}
                    for m, served in saes.items()
                    for s in served
                ],
            }
        )
    server = uvicorn.Server(
        uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=5)
    )
    try:
        server.run(sockets=[sock])
    except (
        KeyboardInterrupt
    ):  # uvicorn shuts down gracefully, then re-raises the signal: Ctrl-C is how a server ends
        pass
    print("stopped", file=sys.stderr)
    return 0
