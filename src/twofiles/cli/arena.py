"""`twofiles arena`: models fight anonymously on prompts; votes go to SQLite; a leaderboard comes out.

    twofiles arena battle --models base=runs/base/model.safetensors smollm2 --prompts arithmetic --judge reference
    twofiles arena battle --models A B C --prompts prompts.jsonl --judge human --db arena.db
    twofiles arena battle --models A B --prompts prompts.txt --judge model:smollm2
    twofiles arena battle --models A B --prompts arithmetic --judge reward:runs/reward/reward.safetensors
    twofiles arena leaderboard --png leaderboard.png --json

Without --db both read and write the database the web UI's arena page writes
($TWOFILES_ARENA_DB, else ~/.cache/twofiles/arena.sqlite: twofiles.paths.default_db).

A model is NAME=SPEC or just SPEC (then named by SPEC): a model file, .gguf, Hugging Face directory,
alias, or an OpenAI-compatible endpoint as URL#MODEL_NAME. Prompts: JSONL ({"prompt", "reference"}),
a text file (one per line), or a built-in generative task (arithmetic, gsm8k, skills).
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
    sub = p.add_subparsers(dest="arena_cmd", metavar="CMD", required=True)
    b = sub.add_parser("battle", help="generate replies, judge pairs anonymously, store the votes")
    b.add_argument(
        "--models",
        nargs="+",
        required=True,
        metavar="[NAME=]MODEL",
        help="two or more models, comma-separated (space-separated also works)",
    )
    b.add_argument(
        "--prompts",
        required=True,
        help="JSONL / text file of prompts, or a built-in generative task",
    )
    b.add_argument(
        "--judge",
        default="human",
        help="human | reference | model:MODEL | reward:PATH (a reward model from twofiles reward; the higher-scored reply wins) (default human)",
    )
    b.add_argument(
        "--db",
        default=None,
        metavar="PATH",
        help="the arena database (SQLite; created if absent; default: the one the web UI writes, "
        "$TWOFILES_ARENA_DB or ~/.cache/twofiles/arena.sqlite)",
    )
    b.add_argument("--limit", type=int, default=None, help="use only the first N prompts")
    b.add_argument(
        "--pairs-per-prompt",
        type=int,
        default=None,
        help="random pairs per prompt (default: every pair)",
    )
    b.add_argument(
        "--max-tokens", type=int, default=256, help="longest reply in tokens (default 256)"
    )
    add_batch_size_flag(b, default=8, what="prompts")
    b.add_argument(
        "--seed", type=int, default=0, help="seed for pairings and side swaps (default 0)"
    )
    add_device_flag(b)
    add_inference_flags(b)
    b.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_json_flag(b)
    lb = sub.add_parser(
        "leaderboard", help="ratings with bootstrap intervals from the stored votes"
    )
    lb.add_argument(
        "--db",
        default=None,
        metavar="PATH",
        help="the arena database (default: the one the web UI writes, $TWOFILES_ARENA_DB or "
        "~/.cache/twofiles/arena.sqlite)",
    )
    lb.add_argument(
        "--judge", default=None, help="count only this judge's votes (e.g. human, reference)"
    )
    lb.add_argument(
        "--bootstrap",
        type=int,
        default=200,
        help="bootstrap rounds for the intervals (default 200)",
    )
    lb.add_argument(
        "--seed", type=int, default=0, help="seed for the bootstrap resamples (default 0)"
    )
    lb.add_argument(
        "--png", default=None, help="also draw the leaderboard with its intervals to this PNG"
    )
    add_json_flag(lb)


def _contestant(arg: str, device, loaded: dict, args: argparse.Namespace):
    from twofiles.arena.battle import Contestant
    from twofiles.eval.backends import EndpointBackend, LocalBackend
    from twofiles.formats.resolve import resolve_model

    name, spec = "", arg
    if "=" in arg and not arg.startswith(("http://", "https://")):
        name, spec = arg.split("=", 1)
    if spec.startswith(("http://", "https://")):
        url, _, model_name = spec.partition("#")
        if not model_name:
            from twofiles.errors import TwofilesError

            raise TwofilesError(f"{spec}: an endpoint model is URL#MODEL_NAME")
        return Contestant(name or model_name, EndpointBackend(url, model_name), spec)
    if spec not in loaded:  # a model that also judges is loaded once
        model = resolve_model(spec, device=device)
        prepare_model(model, args, layout=False)
        loaded[spec] = LocalBackend(model, name=spec)
    return Contestant(name or spec, loaded[spec], spec)


def _db(args: argparse.Namespace) -> str:
    from twofiles.paths import default_db

    return str(args.db) if args.db else str(default_db("arena"))


def _battle(args: argparse.Namespace) -> int:
    from collections import Counter
    from pathlib import Path

    from twofiles.arena import ArenaStore, leaderboard
    from twofiles.arena.battle import read_prompts, run_arena
    from twofiles.arena.judges import HumanJudge, Judge, ModelJudge, ReferenceJudge
    from twofiles.arena.ratings import format_table
    from twofiles.errors import TwofilesError
    from twofiles.runtime import pick_device

    args.models = comma_list(args.models)
    if len(args.models) < 2:
        raise TwofilesError("--models: give at least two")
    prompts = read_prompts(args.prompts)[: args.limit]
    if not prompts:
        raise TwofilesError(f"{args.prompts}: no prompts")
    args.db = _db(args)
    Path(args.db).parent.mkdir(parents=True, exist_ok=True)
    store = ArenaStore(args.db)
    device, _ = pick_device(args.device)
    loaded: dict = {}
    if args.judge == "human":
        judge: Judge = HumanJudge()
    elif args.judge == "reference":
        judge = ReferenceJudge()
        if any(p.reference is None for p in prompts):
            raise TwofilesError(
                f"--judge reference: every prompt in {args.prompts} needs a reference answer"
            )
    elif args.judge.startswith("model:"):
        judge_contestant = _contestant(args.judge[len("model:") :], device, loaded, args)
        judge = ModelJudge(judge_contestant.backend, name=f"model:{judge_contestant.name}")
    elif args.judge.startswith("reward:"):
        from twofiles.arena.judges import ScoreJudge
        from twofiles.scoring import load_reward_scorer, reward_path

        scorer = load_reward_scorer(reward_path(args.judge, "--judge"), device=device)
        judge = ScoreJudge(scorer.score, name=scorer.name)
    else:
        raise TwofilesError(
            f"--judge {args.judge}: expected human, reference, model:MODEL or reward:PATH"
        )
    contestants = [_contestant(m, device, loaded, args) for m in args.models]
    print(
        f"arena: {len(contestants)} models, {len(prompts)} prompts, judge {judge.name}, votes to {args.db}",
        file=sys.stderr,
    )
    ids = run_arena(
        contestants,
        prompts,
        judge,
        store,
        max_tokens=args.max_tokens,
        pairs_per_prompt=args.pairs_per_prompt,
        seed=args.seed,
        batch_size=args.batch_size,
        progress=not args.no_progress,
    )
    mine = [b for b in store.battles() if b.id in set(ids)]
    counts = Counter(b.winner for b in mine)
    print(
        f"{len(ids)} votes stored: "
        + ", ".join(f"{k} {counts.get(k, 0)}" for k in ("a", "b", "tie", "both_bad")),
        file=sys.stderr,
    )
    rows = leaderboard(store.battles(judge=judge.name), bootstrap=100, seed=args.seed)
    print(format_table(rows))
    if args.json:
        emit_json(
            {
                "db": args.db,
                "votes": len(ids),
                "judge": judge.name,
                "winners": dict(counts),
                "leaderboard": [r.to_dict() for r in rows],
            }
        )
    return 0


def _leaderboard(args: argparse.Namespace) -> int:
    from pathlib import Path

    from twofiles.arena import ArenaStore, leaderboard
    from twofiles.arena.ratings import format_table, plot_leaderboard
    from twofiles.errors import BadInputError

    args.db = _db(args)
    if not Path(args.db).is_file():
        raise BadInputError(
            "no such arena database (votes from the web UI or `twofiles arena battle` create it)",
            path=args.db,
        )
    battles = ArenaStore(args.db).battles(judge=args.judge)
    rows = leaderboard(battles, bootstrap=args.bootstrap, seed=args.seed)
    print(format_table(rows) if rows else "no votes yet")
    print(f"{len(battles)} votes" + (f" by {args.judge}" if args.judge else ""), file=sys.stderr)
    if args.png and rows:
        plot_leaderboard(
            rows,
            args.png,
            title=f"arena: {len(battles)} votes" + (f" ({args.judge})" if args.judge else ""),
        )
        print(f"plot: {args.png}", file=sys.stderr)
    if args.json:
        emit_json(
            {
                "db": args.db,
                "votes": len(battles),
                "leaderboard": [r.to_dict() for r in rows],
                "png": args.png,
            }
        )
    return 0


def run(args: argparse.Namespace) -> int:
    return _battle(args) if args.arena_cmd == "battle" else _leaderboard(args)
