"""Sample a continuation of a prompt from a model, streamed as it is generated.

The continuation goes to stdout (flushed per piece of text), everything else (model, seed,
speed) to stderr, so `twofiles generate m.safetensors --prompt hi > out.txt` keeps only the text.
--show-probs K prints, for every step, the token chosen and the K most likely candidates: the
model rolls a weighted die once per token. --json adds one JSON summary as the last stdout line.
"""

from __future__ import annotations

import argparse
import sys

from twofiles.cli.common import (
    add_device_flag,
    add_inference_flags,
    add_json_flag,
    add_sampling_flags,
    add_steer_flags,
    emit_json,
    no_compile_when_steering,
    persona_sampling,
    persona_summary,
    prepare_model,
    sampling_params,
    seeded,
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "model",
        metavar="MODEL",
        help="a twofiles model.safetensors, a .gguf file, a Hugging Face model directory, an alias (smollm2), or a registered persona (its PARAMETERs are the defaults here)",
    )
    p.add_argument("--prompt", required=True, help="text to continue; '-' reads it from stdin")
    add_sampling_flags(p, temperature=1.0, top_p=1.0, max_tokens=200, what="sample")
    p.add_argument(
        "--stop",
        action="append",
        default=[],
        metavar="STR",
        help="stop before this text (repeatable)",
    )
    p.add_argument(
        "--show-probs",
        type=int,
        nargs="?",
        const=5,
        default=0,
        metavar="K",
        help="print each step's choice and top K candidates (default K 5)",
    )
    add_steer_flags(p)
    add_device_flag(p)
    add_inference_flags(p, compile=True, layout=True)
    add_json_flag(p)


def _read_prompt(arg: str) -> str:
    return sys.stdin.read() if arg == "-" else arg


def _piece(tokenizer, token: int) -> str:
    """A token's text for display: quoted so spaces and newlines show; a token that is only part
    of a UTF-8 character shows its bytes, llama.cpp style (<0xE2><0x82>)."""
    to_bytes = getattr(tokenizer, "token_to_bytes", None)
    raw = to_bytes(token) if to_bytes is not None else b""
    if not raw:  # special token (shown by name) or a tokenizer without byte access
        return repr(tokenizer.decode([token]))
    try:
        return repr(raw.decode("utf-8"))
    except UnicodeDecodeError:
        return "".join(f"<0x{b:02X}>" for b in raw)


def run(args: argparse.Namespace) -> int:
    import time

    from twofiles.engine import encode_prompt, generate_steps
    from twofiles.errors import TwofilesError
    from twofiles.formats.resolve import resolve_model
    from twofiles.runtime import pick_device
    from twofiles.sae.steering import (
        parse_steer,
        prepare_steering,
        steer_paths_exist,
        steering,
    )

    prompt = _read_prompt(args.prompt)
    if not prompt:
        raise TwofilesError(
            "empty prompt: give some text to continue with --prompt (or '-' to read stdin)"
        )
    if args.show_probs < 0:
        raise TwofilesError(f"--show-probs {args.show_probs}: must be >= 0")
    params = sampling_params(args, stop=list(args.stop))
    seed = params.seed
    specs = [parse_steer(s) for s in args.steer]
    no_compile_when_steering(args, bool(specs))
    steer_paths_exist(specs)

    device, why = pick_device(args.device)
    t0 = time.perf_counter()
    loaded = resolve_model(args.model, device=device)
    model, tok = loaded.model, loaded.tokenizer
    # a persona's PARAMETERs are defaults (the flags given win); its SYSTEM and MESSAGEs belong
    # to chats, and this is a plain continuation
    params = persona_sampling(params, args, loaded)
    seed = params.seed
    n_params = sum(p.numel() for p in model.parameters())
    print(
        f"model {args.model}: {n_params / 1e6:.2f}M parameters, {device.type} ({why}), loaded in {time.perf_counter() - t0:.2f}s",
        file=sys.stderr,
    )
    setup = prepare_model(loaded, args)
    print(f"inference: {'; '.join(setup.reasons)}; {setup.threads} threads", file=sys.stderr)
    persona = loaded.persona
    if persona is not None:
        print(persona_summary(persona), file=sys.stderr)
    print(
        f"seed {seed}" + ("" if seeded(args, loaded) else " (pass --seed to repeat this sample)"),
        file=sys.stderr,
    )

    ids = encode_prompt(tok, prompt)
    steers = prepare_steering(model, specs, ids, units=args.steer_units)
    for s in steers:
        print(s.describe(), file=sys.stderr)
    compile_s = 0.0
    if setup.compiled:  # compile on a throwaway start of the same request, so that the timings
        # below are the compiled model's
        t0 = time.perf_counter()
        for i, _ in enumerate(generate_steps(model, ids, params, tokenizer=tok)):
            if i == 2:  # the prompt and two decode steps: both graphs are built and run
                break
        compile_s = time.perf_counter() - t0
        print(
            f"compiled in {compile_s:.1f}s (inductor keeps the code on disk: a later start with "
            "the same shapes takes a few seconds)",
            file=sys.stderr,
        )
    show = args.show_probs
    out = sys.stdout
    if show:
        print(f"{'step':>4}  {'token':<16} {'prob':>6}   top {show} candidates", file=out)
    pieces: list[str] = []
    n_tokens, finish, t_first = 0, None, None
    t0 = time.perf_counter()
    with steering(model, steers):  # no steers: nothing attached
        for step in generate_steps(model, ids, params, tokenizer=tok, top=show):
            if t_first is None:
                t_first = time.perf_counter()
            n_tokens += 1
            finish = step.finish
            pieces.append(step.text)
            if show:
                cands = "  ".join(f"{_piece(tok, i)} {p:.1%}" for i, p in step.top)
                print(
                    f"{n_tokens:>4}  {_piece(tok, step.token):<16} {step.prob:>6.1%}   {cands}",
                    file=out,
                    flush=True,
                )
            elif step.text:
                out.write(step.text)
                out.flush()
    seconds = time.perf_counter() - t0
    text = "".join(pieces)
    if show:
        print(f"\n{prompt}{text}", file=out)
    else:
        out.write("\n")
    out.flush()

    prefill_s = (t_first or t0) - t0  # the prompt's forward pass and the first roll of the die
    decode_s = seconds - prefill_s
    tps = n_tokens / seconds if seconds > 0 else 0.0
    prompt_tps = len(ids) / prefill_s if prefill_s > 0 else 0.0
    decode_tps = (n_tokens - 1) / decode_s if n_tokens > 1 and decode_s > 0 else 0.0
    print(
        f"{n_tokens} tokens in {seconds:.2f}s ({tps:.1f} tok/s); prompt {len(ids)} tokens in {prefill_s * 1000:.0f} ms "
        f"({prompt_tps:.0f} tok/s), then {decode_tps:.1f} tok/s; finished: {finish}",
        file=sys.stderr,
    )
    if args.json:
        emit_json(
            {
                "text": text,
                "tokens": n_tokens,
                "prompt_tokens": len(ids),
                "seconds": round(seconds, 4),
                "tokens_per_second": round(tps, 2),
                "prompt_tokens_per_second": round(prompt_tps, 2),
                "decode_tokens_per_second": round(decode_tps, 2),
                "quantize": args.quantize,
                "compiled": setup.compiled,
                "compile_seconds": round(compile_s, 2),
                "threads": setup.threads,
                "model": args.model,
                "finish_reason": finish,
                "seed": seed,
                "steer": [s.to_dict() for s in steers],
                "inference": setup.to_dict(),
            }
        )
    return 0
