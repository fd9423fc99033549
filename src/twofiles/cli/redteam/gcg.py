"""`twofiles redteam gcg MODEL --out DIR`: search a universal adversarial suffix (GCG).

    twofiles redteam gcg smollm2 --out runs/gcg --steps 200 --time-budget 1800
    twofiles redteam gcg smollm2 --out runs/gcg --evaluate 40      # held-out leak rate
    twofiles redteam gcg speedrun/rl/model.safetensors --out runs/gcg --evaluate 40  # transfer

The search writes DIR/state.json after every step (run the same command again to continue),
then DIR/suffix.json and DIR/loss.png. `--evaluate N` searches nothing: it plays N held-out
(request, secret) conversations through the chat loop with and without DIR/suffix.json's suffix
on MODEL and reports how often the secret leaks. --json: one summary line.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from twofiles.cli.common import add_batch_size_flag, add_device_flag, add_json_flag, emit_json

if TYPE_CHECKING:
    from twofiles.artifact import LoadedModel
    from twofiles.chat.templates import ChatFormat
    from twofiles.redteam.gcg import SearchState


def add_arguments(p: argparse.ArgumentParser) -> None:
    from twofiles.redteam.gcg import GCGSettings

    d = GCGSettings()
    p.add_argument(
        "model", metavar="MODEL", help="model.safetensors, .gguf, Hugging Face directory or alias"
    )
    p.add_argument("--out", required=True, help="run directory (state.json, suffix.json, loss.png)")
    p.add_argument("--steps", type=int, default=100, help="GCG steps in all (default 100)")
    p.add_argument(
        "--time-budget",
        type=float,
        default=None,
        metavar="SECONDS",
        help="stop before a step that would end past this many seconds (this call)",
    )
    p.add_argument("--suffix-len", type=int, default=d.suffix_len, help="suffix tokens")
    p.add_argument("--topk", type=int, default=d.topk, help="candidate tokens per position")
    add_batch_size_flag(p, default=d.batch, what="candidate swaps per step, scored together")
    p.add_argument(
        "--prompts", type=int, default=d.prompts, help="training (request, secret) pairs"
    )
    p.add_argument("--seed", type=int, default=d.seed, help="seed (training secrets, draws)")
    p.add_argument(
        "--evaluate",
        type=int,
        default=0,
        metavar="N",
        help="search nothing: held-out leak rate of DIR/suffix.json on MODEL, N conversations",
    )
    p.add_argument("--max-tokens", type=int, default=48, help="reply length for --evaluate")
    p.add_argument(
        "--with-tools",
        action="store_true",
        help="--evaluate with the scene's mock tools given to the model (as the attack runner)",
    )
    add_device_flag(p)
    add_json_flag(p)


def _evaluate(args: argparse.Namespace, loaded: LoadedModel, fmt: ChatFormat) -> int:
    from pathlib import Path

    from twofiles.redteam.gcg import heldout_pairs, leak_rate, load_suffix

    record = load_suffix(Path(args.out) / "suffix.json")
    pairs = heldout_pairs(args.evaluate)
    kw = {"max_tokens": args.max_tokens, "tools": args.with_tools}
    base, n = leak_rate(loaded, fmt, pairs, "", **kw)
    hit, _ = leak_rate(loaded, fmt, pairs, record["suffix"], **kw)
    print(f"suffix {record['suffix']!r} (searched on {record.get('model', '?')})")
    print(f"{args.model}: secret leaked without suffix {base}/{n}, with suffix {hit}/{n}")
    if args.json:
        emit_json(
            {
                "model": args.model,
                "suffix": record["suffix"],
                "n": n,
                "leaks_without": base,
                "leaks_with": hit,
                "with_tools": args.with_tools,
            }
        )
    return 0


def run(args: argparse.Namespace) -> int:
    import os
    from pathlib import Path

    from twofiles.chat.templates import ChatFormat
    from twofiles.errors import TwofilesError
    from twofiles.formats.resolve import resolve_model
    from twofiles.paths import sha256_file
    from twofiles.redteam.gcg import GCGSettings, load_state, search, write_outputs
    from twofiles.runtime import pick_device

    if args.steps < 0 or args.evaluate < 0:
        raise TwofilesError("--steps and --evaluate must be >= 0")
    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise TwofilesError(f"--out {args.out}: not a directory")
    if args.time_budget is not None and args.time_budget <= 0:
        raise TwofilesError(f"--time-budget {args.time_budget}: must be > 0")
    settings = GCGSettings(
        suffix_len=args.suffix_len,
        topk=args.topk,
        batch=args.batch_size,
        prompts=args.prompts,
        seed=args.seed,
    ).validate()
    device, _ = pick_device(args.device)
    loaded = resolve_model(args.model, device=device)
    loaded.model.eval()
    fmt = ChatFormat.for_model(loaded)
    if args.evaluate:
        return _evaluate(args, loaded, fmt)
    sha = sha256_file(loaded.path) if loaded.path and os.path.isfile(loaded.path) else ""
    from tqdm.auto import tqdm

    saved = load_state(Path(args.out) / "state.json")  # a resumed run's bar starts where it was
    bar = tqdm(
        total=args.steps,
        initial=saved.step if saved else 0,
        desc="gcg",
        unit="step",
        file=sys.stderr,
    )

    def progress(state: SearchState) -> None:
        bar.n = state.step
        bar.set_postfix(loss=f"{state.history[-1]['loss']:.3f}", best=f"{state.best_loss:.3f}")

    state = search(
        loaded,
        fmt,
        settings,
        args.out,
        steps=args.steps,
        time_budget=args.time_budget,
        model_sha256=sha,
        progress=progress,
    )
    bar.close()
    record = write_outputs(state, fmt, settings, args.out, args.model)
    print(
        f"{state.step} steps, {state.seconds:.0f}s: best loss {state.best_loss:.3f}, "
        f"suffix {record['suffix']!r} -> {args.out}/suffix.json"
    )
    if args.json:
        emit_json(
            {
                "suffix": record["suffix"],
                "ids": record["ids"],
                "loss": state.best_loss,
                "steps": state.step,
                "seconds": round(state.seconds, 1),
                "retokenizes": record["retokenizes"],
                "out": str(args.out),
            }
        )
    return 0
