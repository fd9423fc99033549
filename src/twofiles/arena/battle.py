"""Running an arena: models answer prompts, pairs of answers are judged anonymously, votes stored.

What it owns: reading arena prompts, choosing who fights whom on which prompt, the random side
swap, and recording each vote with both conversations. What it leaves to others: generating
replies (eval backends), judging (arena/judges.py), storage (arena/store.py), ratings.

Replies are greedy by default, so each model answers each prompt once and that answer serves in
every battle on the prompt (pass `temperature` to sample a fresh reply per battle instead).
Which model is shown as A is a seeded coin flip per battle: a judge that favours the first
position cannot favour a model.
"""

from __future__ import annotations

import itertools
import random
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twofiles.arena.judges import Judge, QuitVoting
from twofiles.arena.store import ArenaStore
from twofiles.errors import BadInputError, TwofilesError


@dataclass
class ArenaPrompt:
    prompt: str
    reference: str | None = None  # the right answer, for the reference judge
    where: str = ""  # file:line


def read_prompts(source: str) -> list[ArenaPrompt]:
    """Arena prompts from a JSONL file ({"prompt": ..., "reference": ...}), a text file (one
    prompt per line), or a built-in generative eval task by name (its prompts and references)."""
    from twofiles.eval.extract import reference_answer
    from twofiles.eval.tasks import builtin_tasks, fill, load_examples, load_spec, read_jsonl

    path = Path(source)
    if source.endswith(".toml") or (not path.exists() and source in builtin_tasks()):
        spec = load_spec(source)
        if spec.type != "generate":
            raise TwofilesError(
                f"task {spec.name!r} is {spec.type}: arena prompts come from generative tasks"
            )
        return [
            ArenaPrompt(
                fill(spec.prompt, e.fields, e.where),
                reference_answer(spec.reference, e.fields[spec.target])
                if spec.target in e.fields
                else None,
                e.where,
            )
            for e in load_examples(spec)
        ]
    if not path.is_file():
        raise BadInputError("prompts file not found", path=source)
    if path.suffix == ".jsonl":
        out = []
        for e in read_jsonl(path):
            p = e.fields.get("prompt")
            if not isinstance(p, str) or not p.strip():
                raise BadInputError("field 'prompt' must be a non-empty string", path=e.where)
            ref = e.fields.get("reference")
            out.append(ArenaPrompt(p, None if ref is None else str(ref), e.where))
        return out
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise BadInputError(f"not UTF-8 ({e.reason})", path=source) from None
    return [
        ArenaPrompt(line, None, f"{source}:{n}") for n, line in enumerate(lines, 1) if line.strip()
    ]


@dataclass
class Contestant:
    """A named model: `backend` is an eval backend (LocalBackend or EndpointBackend)."""

    name: str
    backend: Any
    spec: str = ""


def pairings(
    models: Sequence[str], n_prompts: int, *, pairs_per_prompt: int | None, seed: int
) -> list[tuple[int, str, str]]:
    """(prompt index, side A, side B) for every battle. Every pair of models meets on every prompt,
    or `pairs_per_prompt` random pairs; sides by a seeded coin flip."""
    rng = random.Random(seed)
    all_pairs = list(itertools.combinations(models, 2))
    if not all_pairs:
        raise TwofilesError("an arena needs at least two models")
    out = []
    for i in range(n_prompts):
        chosen = (
            all_pairs
            if pairs_per_prompt is None
            else rng.sample(all_pairs, min(pairs_per_prompt, len(all_pairs)))
        )
        for x, y in chosen:
            out.append((i, x, y) if rng.random() < 0.5 else (i, y, x))
    return out


def run_arena(
    contestants: Sequence[Contestant],
    prompts: Sequence[ArenaPrompt],
    judge: Judge,
    store: ArenaStore,
    *,
    max_tokens: int = 256,
    pairs_per_prompt: int | None = None,
    seed: int = 0,
    batch_size: int = 8,
    progress: bool = True,
    on_vote: Callable[[int, str, str, str], None] | None = None,
) -> list[int]:
    """Every battle judged and stored (one transaction each); returns the new battle ids. A
    person quitting stops the arena; the votes cast so far are kept."""
    from tqdm.auto import tqdm

    from twofiles.eval.backends import GenRequest

    by_name = {c.name: c for c in contestants}
    if len(by_name) != len(contestants):
        raise TwofilesError("two contestants share a name: give them distinct names (NAME=MODEL)")
    battles = pairings(
        [c.name for c in contestants], len(prompts), pairs_per_prompt=pairs_per_prompt, seed=seed
    )
    needed = sorted({(name, i) for i, a, b in battles for name, _ in ((a, 0), (b, 0))})
    replies: dict[tuple[str, int], str] = {}
    for c in contestants:
        mine = sorted(i for name, i in needed if name == c.name)
        requests = [
            GenRequest([{"role": "user", "content": prompts[i].prompt}], prompts[i].prompt)
            for i in mine
        ]
        with tqdm(
            total=len(requests),
            desc=f"replies: {c.name}",
            disable=not progress,
            file=sys.stderr,
            leave=False,
        ) as bar:
            texts = c.backend.generate(
                requests, max_tokens=max_tokens, batch_size=batch_size, progress=bar.update
            )
        replies.update({(c.name, i): t.strip() for i, t in zip(mine, texts)})
    ids = []
    for i, a, b in tqdm(
        battles,
        desc="battles",
        disable=not progress or getattr(judge, "name", "") == "human",
        file=sys.stderr,
        leave=False,
    ):
        p = prompts[i]
        reply_a, reply_b = replies[(a, i)], replies[(b, i)]
        try:
            verdict = judge.judge(p.prompt, reply_a, reply_b, p.reference)
        except QuitVoting:
            break
        meta = {
            "conversation_a": [
                {"role": "user", "content": p.prompt},
                {"role": "assistant", "content": reply_a},
            ],
            "conversation_b": [
                {"role": "user", "content": p.prompt},
                {"role": "assistant", "content": reply_b},
            ],
            "source": p.where,
            "reference": p.reference,
            "judge_detail": verdict.detail,
            "max_tokens": max_tokens,
            "seed": seed,
            "spec_a": by_name[a].spec,
            "spec_b": by_name[b].spec,
        }
        bid = store.record_battle(
            prompt=p.prompt,
            model_a=a,
            model_b=b,
            reply_a=reply_a,
            reply_b=reply_b,
            winner=verdict.winner,
            judge=judge.name,
            meta=meta,
        )
        ids.append(bid)
        if on_vote is not None:
            on_vote(bid, a, b, verdict.winner)
    return ids
