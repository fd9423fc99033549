"""Built-in preference pairs: a right reply against a plausibly wrong one, for the reward model.

What it owns: deterministic synthetic pairs in TRL's conversational form, made from the built-in
skill tasks (data/skills.py) and their exact checkers. The chosen reply states the task's answer;
the rejected one is the same reply with the kind of mistake a small model makes:

    arithmetic     the number off by one, two or ten, or another operation's result
                   (a + b for a * b), in the same wording as the chosen reply
    spelling       a letter dropped, doubled, or two neighbours swapped
    count_letters  the count off by one
    repeat         a word dropped or replaced, or two words swapped
    reverse        two letters swapped, or the word not reversed
    uppercase      one word left in lower case, or Title Case

So the two sides differ only in being right, and a reward model learns to check, not to prefer a
style. Arithmetic replies are direct (no calculator call): the pairs teach a reward model to judge
replies sampled without tools, as best-of-N sees them. Identity questions are left out (their
answer depends on the model's name).

Training pairs come from the skills' train split and held-out pairs from their val split, which
never share a task (the split is a hash of the task itself). Every rejected reply fails the
task's checker and every chosen one passes it (tests/test_reward.py).

What it leaves to others: the tasks and checkers (data/skills.py), the pair type and rendering
(data/preferences.py), training (train/reward.py).
"""

from __future__ import annotations

import random
from typing import Any

from twofiles.chat import Message
from twofiles.data.preferences import PreferencePair
from twofiles.data.skills import SkillTask, Split, check, skill_tasks

# pairs per kind and split (val: about what each kind's held-out split holds)
SIZES: dict[str, dict[str, int]] = {
    "train": {
        "arithmetic": 600,
        "spelling": 150,
        "count_letters": 150,
        "repeat": 100,
        "reverse": 100,
        "uppercase": 100,
    },
    "val": {
        "arithmetic": 60,
        "spelling": 20,
        "count_letters": 25,
        "repeat": 20,
        "reverse": 20,
        "uppercase": 20,
    },
}
KINDS: tuple[str, ...] = tuple(SIZES["train"])

# How an arithmetic reply is worded (the same wording on both sides of a pair).
ARITHMETIC_REPLIES: tuple[str, ...] = (
    "{e} = {v}.",
    "The answer is {v}.",
    "{e} equals {v}.",
    "Let's compute: {e} = {v}. The answer is {v}.",
    "{v}",
)


def _wrong_number(task: SkillTask, rng: random.Random) -> int:
    v = int(task.answer)
    options = [v + d for d in (1, -1, 2, -2, 10, -10)]
    if " * " in task.expression and "(" not in task.expression:
        a, b = (int(x) for x in task.expression.split(" * "))
        options.append(a + b)  # the operation mixed up
    return rng.choice([o for o in options if o != v])


def _misspell(word: str, rng: random.Random) -> str:
    i = rng.randrange(len(word))
    how = rng.choice(("drop", "double", "swap"))
    if how == "drop":
        out = word[:i] + word[i + 1 :]
    elif how == "double":
        out = word[:i] + word[i] + word[i:]
    else:
        j = min(i, len(word) - 2)
        out = word[:j] + word[j + 1] + word[j] + word[j + 2 :]
    return out if out != word else word[:-1]  # a swap of equal letters changes nothing


def _wrong_phrase(phrase: str, rng: random.Random) -> str:
    from twofiles.data.skills import WORDS

    words = phrase.split()
    i = rng.randrange(len(words))
    how = rng.choice(("drop", "replace", "swap"))
    if how == "drop" and len(words) > 1:
        out = words[:i] + words[i + 1 :]
    elif how == "swap" and len(words) > 1 and words[0] != words[-1]:
        out = [*words]
        out[0], out[-1] = out[-1], out[0]
    else:
        out = [*words]
        out[i] = rng.choice([w for w in WORDS if w != words[i]])
    return " ".join(out)


def _replies(task: SkillTask, rng: random.Random) -> tuple[str, str]:
    """(chosen, rejected) replies to one task."""
    k = task.kind
    if k == "arithmetic":
        wording = rng.choice(ARITHMETIC_REPLIES)
        number = _wrong_number(task, rng)
        return (
            wording.format(e=task.expression, v=task.answer),
            wording.format(e=task.expression, v=number),
        )
    if k == "spelling":
        word = task.answer.replace("-", "")
        return task.reply, "-".join(_misspell(word, rng))
    if k == "count_letters":
        n = int(task.answer)
        m = n + 1 if n == 0 or rng.random() < 0.5 else n - 1
        spelled, _, _ = task.reply.partition(":")
        letter = task.reply.split("the letter ")[1][0]
        times = f"{m} time{'s' if m != 1 else ''}"
        return task.reply, f"{spelled}: the letter {letter} appears {times}. The answer is {m}."
    if k == "repeat":
        return task.reply, _wrong_phrase(task.answer, rng)
    if k == "reverse":
        word = task.answer[::-1]
        return task.reply, word if rng.random() < 0.3 else _misspell(task.answer, rng)
    if k == "uppercase":
        words = task.answer.split()
        if rng.random() < 0.5 or len(words) == 1:
            wrong = task.answer.title()
        else:
            i = rng.randrange(len(words))
            wrong = " ".join(w.lower() if j == i else w for j, w in enumerate(words))
        return task.reply, wrong
    raise ValueError(f"no built-in pairs for {k!r} tasks")


def builtin_pairs(
    split: Split, seed: int = 0, *, sizes: dict[str, int] | None = None
) -> list[PreferencePair]:
    """The built-in pairs of one split, kind by kind, deterministic in `seed`. A rejected reply
    that the checker would still accept (a wrong count that happens to be right elsewhere in the
    wording, say) is dropped rather than kept as a lie."""
    sizes = SIZES[split] if sizes is None else sizes
    out: list[PreferencePair] = []
    for kind in KINDS:
        n = sizes.get(kind, 0)
        if not n:
            continue
        rng = random.Random(f"pairs/{kind}/{split}/{seed}")
        for i, task in enumerate(skill_tasks(kind, split, n, seed)):
            chosen, rejected = _replies(task, rng)
            if not check(task, chosen) or check(task, rejected):
                continue
            out.append(
                PreferencePair(
                    [Message(role="user", content=task.prompt)],
                    [Message(role="assistant", content=chosen)],
                    [Message(role="assistant", content=rejected)],
                    where=f"builtin/{split}/{kind}/{i}",
                )
            )
    return out


def to_dict(pair: PreferencePair) -> dict[str, Any]:
    """A pair as one line of TRL's conversational JSONL."""
    from twofiles.chat import messages_to_dicts

    assert isinstance(pair.prompt, list)
    assert isinstance(pair.chosen, list) and isinstance(pair.rejected, list)
    return {
        "prompt": messages_to_dicts(pair.prompt),
        "chosen": messages_to_dicts(pair.chosen),
        "rejected": messages_to_dicts(pair.rejected),
    }


def provenance(seed: int) -> dict[str, Any]:
    return {
        "data": "builtin",
        "pairs": "synthetic: right vs plausibly wrong replies to the built-in skill tasks",
        "kinds": list(KINDS),
        "seed": seed,
    }


__all__ = ["KINDS", "SIZES", "builtin_pairs", "provenance", "to_dict"]
