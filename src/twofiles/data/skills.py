"""The built-in finetuning mix: conversations that turn a base model into an assistant.

What it owns: generating, deterministically from a seed, the conversations of the built-in SFT mix
and the exact checkers of its skill tasks:

- `chat`: dialogues from the `chatterbot-corpus` PyPI package (BSD-3-Clause, YAML files read
  with PyYAML; see `CHATTERBOT_*` below for the version and the files left out);
- `arithmetic`: integer arithmetic solved through the calculator tool (the assistant emits a tool
  call, a tool message returns the result, the assistant states the answer);
- `spelling` (a word letter by letter) and `count_letters` (how many times a letter occurs);
- simple instructions: `repeat`, `reverse` (a word's letters), `uppercase`;
- `identity`: who the assistant is (its name, what it was trained on, what it can do).

Every kind has a train and a held-out ("val") split that never share a task: a task's split is
decided by a stable hash of what makes it unique (the expression, the word, the question), not by
the order it was drawn in, so no seed can move a held-out task into training. The chat dialogues
are split the same way, by their first line.

What it leaves to others: the message types and rendering (twofiles.chat), running the
calculator (twofiles.tools), training (twofiles.train.sft). Users bring their own conversations as
JSONL (`twofiles.chat.read_conversations`).
"""

from __future__ import annotations

import functools
import hashlib
import random
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from twofiles.errors import TwofilesError

if TYPE_CHECKING:
    from twofiles.chat import Message

Split = Literal["train", "val"]

SKILL_KINDS: tuple[str, ...] = (
    "arithmetic",
    "spelling",
    "count_letters",
    "repeat",
    "reverse",
    "uppercase",
    "identity",
)

# One task in ten is held out. The split is a property of the task itself (see _split_of).
HELD_OUT_PERCENT = 10

# The dialog corpus: read from the installed package (a core dependency, pure data, no code run).
CHATTERBOT_PACKAGE = "chatterbot_corpus"
CHATTERBOT_VERSION = "1.3.3"  # the version the mix was sized and measured with
CHATTERBOT_LICENSE = "BSD-3-Clause (Gunther Cox, https://github.com/gunthercox/chatterbot-corpus)"
# Left out: the bot's persona ("I am the original chat bot", "my robot body") contradicts the
# identity set, which is what the assistant should say about itself.
CHATTERBOT_EXCLUDED: tuple[str, ...] = ("ai.yml", "botprofile.yml")

# Conversations per kind in each split of `builtin_mix` (chat: at most this many dialogues).
MIX_SIZES: dict[str, dict[str, int]] = {
    "train": {
        "chat": 700,
        "arithmetic": 600,
        "spelling": 200,
        "count_letters": 200,
        "repeat": 150,
        "reverse": 150,
        "uppercase": 150,
        "identity": 120,
    },
    # val: about what each kind's held-out split holds (~25 words, 8 identity questions)
    "val": {
        "chat": 60,
        "arithmetic": 50,
        "spelling": 25,
        "count_letters": 30,
        "repeat": 30,
        "reverse": 25,
        "uppercase": 30,
        "identity": 8,
    },
}

# Common English words (3-9 letters): the material of the spelling and instruction tasks.
WORDS: tuple[str, ...] = tuple(
    [
        "able",
        "about",
        "above",
        "after",
        "again",
        "apple",
        "april",
        "area",
        "army",
        "art",
        "baby",
        "back",
        "bad",
        "bag",
        "ball",
        "band",
        "bank",
        "base",
        "basket",
        "bath",
        "bear",
        "beauty",
        "bed",
        "bell",
        "belt",
        "best",
        "bird",
        "black",
        "blood",
        "blue",
        "board",
        "boat",
        "body",
        "bone",
        "book",
        "border",
        "bottle",
        "bottom",
        "box",
        "boy",
        "brain",
        "bread",
        "bridge",
        "bright",
        "brother",
        "brown",
        "build",
        "butter",
        "cake",
        "call",
        "camera",
        "candle",
        "car",
        "card",
        "care",
        "carpet",
        "castle",
        "cat",
        "chair",
        "chance",
        "change",
        "cheese",
        "chicken",
        "child",
        "church",
        "circle",
        "city",
        "clean",
        "clock",
        "cloud",
        "coast",
        "coffee",
        "cold",
        "color",
        "corner",
        "cotton",
        "country",
        "cow",
        "cream",
        "crown",
        "cup",
        "dance",
        "dark",
        "daughter",
        "day",
        "desert",
        "dinner",
        "doctor",
        "dog",
        "door",
        "dream",
        "dress",
        "drink",
        "driver",
        "duck",
        "during",
        "early",
        "earth",
        "east",
        "easy",
        "egg",
        "empty",
        "engine",
        "evening",
        "event",
        "face",
        "family",
        "farm",
        "father",
        "feather",
        "field",
        "finger",
        "fire",
        "fish",
        "flag",
        "floor",
        "flower",
        "forest",
        "fork",
        "friend",
        "garden",
        "gate",
        "ghost",
        "girl",
        "glass",
        "gold",
        "grass",
        "green",
        "ground",
        "guitar",
        "hair",
        "hammer",
        "hand",
        "happy",
        "harbor",
        "heart",
        "heavy",
        "horse",
        "hotel",
        "house",
        "island",
        "jacket",
        "jelly",
        "journey",
        "juice",
        "key",
        "king",
        "kitchen",
        "knife",
        "ladder",
        "lake",
        "lamp",
        "language",
        "laugh",
        "leaf",
        "lemon",
        "letter",
        "light",
        "lion",
        "little",
        "long",
        "machine",
        "market",
        "metal",
        "milk",
        "minute",
        "mirror",
        "money",
        "monkey",
        "month",
        "moon",
        "morning",
        "mother",
        "mountain",
        "music",
        "nature",
        "night",
        "noise",
        "north",
        "number",
        "ocean",
        "office",
        "orange",
        "paper",
        "parent",
        "party",
        "pencil",
        "people",
        "pepper",
        "picture",
        "piece",
        "pillow",
        "planet",
        "plant",
        "pocket",
        "poem",
        "potato",
        "queen",
        "question",
        "rabbit",
        "rain",
        "record",
        "river",
        "road",
        "rocket",
        "roof",
        "room",
        "rose",
        "salt",
        "sand",
        "school",
        "science",
        "sea",
        "season",
        "second",
        "shadow",
        "ship",
        "shirt",
        "shoe",
        "silver",
        "sister",
        "sky",
        "sleep",
        "small",
        "smile",
        "snake",
        "snow",
        "song",
        "sound",
        "soup",
        "south",
        "spring",
        "square",
        "star",
        "stone",
        "storm",
        "story",
        "street",
        "sugar",
        "summer",
        "sun",
        "table",
        "teacher",
        "thunder",
        "ticket",
        "tiger",
        "time",
        "tomato",
        "tooth",
        "tower",
        "town",
        "train",
        "tree",
        "truck",
        "umbrella",
        "uncle",
        "valley",
        "village",
        "violin",
        "voice",
        "wall",
        "water",
        "weather",
        "window",
        "winter",
        "wolf",
        "wood",
        "word",
        "world",
        "yellow",
        "young",
        "zebra",
    ]
)

ARITHMETIC_TEMPLATES: tuple[str, ...] = (
    "What is {e}?",
    "Compute {e}.",
    "Calculate {e}.",
    "How much is {e}?",
    "What does {e} equal?",
    "Please work out {e}.",
)
SPELLING_TEMPLATES: tuple[str, ...] = (
    "Spell the word '{w}'.",
    "How do you spell {w}?",
    "Spell {w} letter by letter.",
)
COUNT_TEMPLATES: tuple[str, ...] = (
    "How many times does the letter '{c}' appear in '{w}'?",
    "Count the letter {c} in the word {w}.",
    "How many {c}'s are in '{w}'?",
)
REPEAT_TEMPLATES: tuple[str, ...] = (
    "Repeat exactly: {p}",
    "Say this back to me: {p}",
    "Repeat after me: {p}",
)
REVERSE_TEMPLATES: tuple[str, ...] = (
    "Reverse the letters of '{w}'.",
    "Write {w} backwards.",
    "Spell '{w}' in reverse order.",
)
UPPERCASE_TEMPLATES: tuple[str, ...] = (
    "Write in capital letters: {p}",
    "Uppercase this: {p}",
    "Convert to upper case: {p}",
)


@dataclass(frozen=True)
class ModelIdentity:
    """What the identity set teaches the assistant to say about itself."""

    name: str = "twofiles"  # the name it answers to
    trained_on: str = "Shakespeare's complete works"  # what its pretraining read
    trained_on_keyword: str = "Shakespeare"  # the word an answer about its training must contain
    origin: str = "a small language model trained from scratch with twofiles"  # what it is


# The last IDENTITY_HELD_OUT paraphrases of each fact are the held-out questions (a hash could
# leave a fact with none).
IDENTITY_HELD_OUT = 2

# (fact, question paraphrases); _identity_answer gives each fact's reply and the keyword check() wants.
IDENTITY_FACTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "name",
        (
            "What is your name?",
            "What's your name?",
            "What are you called?",
            "Do you have a name?",
            "Tell me your name.",
            "What should I call you?",
            "May I ask your name?",
            "Say your name.",
            "How do people call you?",
            "Your name, please?",
        ),
    ),
    (
        "who",
        (
            "Who are you?",
            "What are you?",
            "Introduce yourself.",
            "Tell me about yourself.",
            "Who am I talking to?",
            "Are you a person?",
            "Are you human?",
            "Are you a robot?",
            "Describe yourself.",
            "Who is this?",
        ),
    ),
    (
        "data",
        (
            "What were you trained on?",
            "What did you learn from?",
            "What data were you trained on?",
            "Where does your knowledge come from?",
            "What text did you read?",
            "What is your training data?",
            "Which books did you learn from?",
            "How did you learn to write?",
            "What did you read in training?",
            "Where did you learn English?",
        ),
    ),
    (
        "tools",
        (
            "Can you use tools?",
            "Can you do arithmetic?",
            "How do you do maths?",
            "Do you have a calculator?",
            "Can you calculate?",
            "How do you add numbers?",
            "Are you good at arithmetic?",
            "What tools do you have?",
            "Can you multiply numbers?",
            "How do you solve sums?",
        ),
    ),
)


def _identity_answer(fact: str, who: ModelIdentity) -> tuple[str, str]:
    """(keyword, reply) of one identity fact."""
    return {
        "name": (who.name, f"My name is {who.name}."),
        "who": (who.name, f"I am {who.name}, {who.origin}. I am not a person."),
        "data": (
            who.trained_on_keyword,
            f"I was trained on {who.trained_on}, then finetuned on conversations.",
        ),
        "tools": (
            "calculator",
            "I can use a calculator: I call it for arithmetic and read its result.",
        ),
    }[fact]


@dataclass(frozen=True)
class SkillTask:
    """One task with a known answer: a user message and what a correct reply must state."""

    kind: str  # one of SKILL_KINDS
    prompt: str  # the user's message
    answer: str  # what check() looks for in the reply
    expression: str = ""  # arithmetic: the calculator expression
    reply: str = ""  # the demonstrated final assistant reply (training target)

    def conversation(self) -> list[Message]:
        """The demonstration: user, (assistant tool call, tool result,) assistant."""
        from twofiles.chat import Message, ToolCall

        if self.kind != "arithmetic":
            return [
                Message(role="user", content=self.prompt),
                Message(role="assistant", content=self.reply),
            ]
        call = ToolCall(name="calculator", arguments={"expression": self.expression}, id="call_0")
        return [
            Message(role="user", content=self.prompt),
            Message(role="assistant", content="", tool_calls=[call]),
            Message(role="tool", content=self.answer, tool_call_id="call_0", name="calculator"),
            Message(role="assistant", content=self.reply),
        ]


def _split_of(key: str) -> Split:
    """A task's split from a stable hash of its identity (the same in every process and seed);
    identity questions by their place in IDENTITY_FACTS."""
    if key.startswith("identity:"):
        q = key[len("identity:") :]
        return next(
            ("val" if qs.index(q) >= len(qs) - IDENTITY_HELD_OUT else "train")
            for _, qs in IDENTITY_FACTS
            if q in qs
        )
    h = int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "little")
    return "val" if h % 100 < HELD_OUT_PERCENT else "train"


def _rng(kind: str, split: str, seed: int) -> random.Random:
    # one stream per (kind, split, seed): asking for more of one kind never changes another
    return random.Random(f"{kind}/{split}/{seed}")


def _arithmetic(rng: random.Random) -> tuple[str, str]:
    """An expression and its exact integer value. Small operands: the model copies them into the
    tool call; the calculator does the work."""
    shape = rng.random()
    a, b, c = rng.randint(2, 99), rng.randint(2, 99), rng.randint(2, 20)
    if shape < 0.3:
        e, v = f"{a} + {b}", a + b
    elif shape < 0.5:
        e, v = f"{a} - {b}", a - b
    elif shape < 0.8:
        a, b = rng.randint(2, 30), rng.randint(2, 30)
        e, v = f"{a} * {b}", a * b
    else:
        e, v = f"({a} + {b}) * {c}", (a + b) * c
    return e, str(v)


def _phrase(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 4)))


def _draw(kind: str, rng: random.Random, who: ModelIdentity) -> tuple[str, SkillTask]:
    """(the task's identity key, the task)."""
    if kind == "arithmetic":
        e, v = _arithmetic(rng)
        prompt = rng.choice(ARITHMETIC_TEMPLATES).format(e=e)
        return f"arithmetic:{e}", SkillTask(kind, prompt, v, expression=e, reply=f"{e} = {v}.")
    if kind == "spelling":
        w = rng.choice(WORDS)
        spelled = "-".join(w)
        return f"spelling:{w}", SkillTask(
            kind, rng.choice(SPELLING_TEMPLATES).format(w=w), spelled, reply=spelled
        )
    if kind == "count_letters":
        w = rng.choice(WORDS)
        # mostly letters of the word (1-3 occurrences), sometimes one it lacks (0)
        c = (
            rng.choice(w)
            if rng.random() < 0.85
            else rng.choice([x for x in "abcdefghijklmnopqrstuvwxyz" if x not in w])
        )
        n = w.count(c)
        reply = f"{'-'.join(w)}: the letter {c} appears {n} time{'s' if n != 1 else ''}. The answer is {n}."
        return f"count:{w}:{c}", SkillTask(
            kind, rng.choice(COUNT_TEMPLATES).format(c=c, w=w), str(n), reply=reply
        )
    if kind == "repeat":
        p = _phrase(rng)
        return f"repeat:{p}", SkillTask(kind, rng.choice(REPEAT_TEMPLATES).format(p=p), p, reply=p)
    if kind == "reverse":
        w = rng.choice(WORDS)
        return f"reverse:{w}", SkillTask(
            kind, rng.choice(REVERSE_TEMPLATES).format(w=w), w[::-1], reply=w[::-1]
        )
    if kind == "uppercase":
        p = _phrase(rng)
        return f"uppercase:{p}", SkillTask(
            kind, rng.choice(UPPERCASE_TEMPLATES).format(p=p), p.upper(), reply=p.upper()
        )
    if kind == "identity":
        fact, questions = rng.choice(IDENTITY_FACTS)
        q = rng.choice(questions)
        keyword, reply = _identity_answer(fact, who)
        return f"identity:{q}", SkillTask(kind, q, keyword, reply=reply)
    raise TwofilesError(f"unknown skill kind {kind!r}; choose from {', '.join(SKILL_KINDS)}")


def skill_tasks(
    kind: str, split: Split, n: int, seed: int = 0, *, who: ModelIdentity | None = None
) -> list[SkillTask]:
    """`n` tasks of one kind from one split, deterministic in `seed`. Distinct tasks are preferred;
    when a split has fewer than `n` (identity questions, say), tasks repeat with fresh wording
    where the kind has templates."""
    if split not in ("train", "val"):
        raise TwofilesError(f"split must be 'train' or 'val', not {split!r}")
    if kind not in SKILL_KINDS:
        raise TwofilesError(f"unknown skill kind {kind!r}; choose from {', '.join(SKILL_KINDS)}")
    who = who or ModelIdentity()
    rng = _rng(kind, split, seed)
    out: list[SkillTask] = []
    seen: set[str] = set()
    tries = 0
    while len(out) < n:
        tries += 1
        if tries > 1000 * max(n, 1) and not out:
            raise TwofilesError(f"no {kind} task falls in the {split} split")
        key, task = _draw(kind, rng, who)
        if _split_of(key) != split:
            continue
        if (
            key in seen and tries < 50 * n
        ):  # give up on distinctness only when the split is exhausted
            continue
        seen.add(key)
        out.append(task)
    return out


# --------------------------------------------------------------------------------------- checking

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def last_number(text: str) -> str | None:
    """The last number in `text`, normalised (no thousands commas, no trailing ".0")."""
    found = _NUMBER.findall(text)
    if not found:
        return None
    s = found[-1].replace(",", "")
    if "." in s:
        s = s.rstrip("0").rstrip(".")
    return s


def _contains(text: str, needle: str, *, ignore_case: bool = False) -> bool:
    """`needle` occurs in `text` not glued to other letters or digits."""
    flags = re.IGNORECASE if ignore_case else 0
    return (
        re.search(r"(?<![A-Za-z0-9])" + re.escape(needle) + r"(?![A-Za-z0-9])", text, flags)
        is not None
    )


def check(task: SkillTask, reply: str) -> bool:
    """Whether a reply (the assistant's final text) states the task's exact answer.

    arithmetic and count_letters: the reply's last number is the answer. spelling: the word's
    letters in order, each separated by '-', ',' or spaces. repeat, reverse, uppercase: the exact
    answer (case-sensitive) as a whole. identity: the keyword, any case."""
    if task.kind in ("arithmetic", "count_letters"):
        return last_number(reply) == task.answer
    if task.kind == "spelling":
        letters = task.answer.split("-")
        # not glued to a letter, and not followed by one more spelled-out letter ("c-a-t-s")
        pattern = (
            r"(?<![A-Za-z])"
            + r"[\s,\-]+".join(map(re.escape, letters))
            + r"(?![A-Za-z])(?![\s,\-]+[A-Za-z](?![A-Za-z]))"
        )
        return re.search(pattern, reply, re.IGNORECASE) is not None
    if task.kind in ("repeat", "reverse", "uppercase"):
        return _contains(reply, task.answer)
    if task.kind == "identity":
        return _contains(reply, task.answer, ignore_case=True)
    raise TwofilesError(f"unknown skill kind {task.kind!r}")


# ------------------------------------------------------------------------------------- the dialogs


@dataclass(frozen=True)
class Dialog:
    """One chatterbot-corpus conversation: alternating user / assistant lines."""

    source: str  # e.g. "chatterbot-corpus/english/greetings.yml#3"
    lines: tuple[str, ...]

    def conversation(self) -> list[Message]:
        from twofiles.chat import Message

        n = len(self.lines) - len(self.lines) % 2  # end on an assistant line
        return [
            Message(role="user" if i % 2 == 0 else "assistant", content=self.lines[i])
            for i in range(n)
        ]


@functools.lru_cache(maxsize=1)
def chatterbot_dialogs() -> tuple[Dialog, ...]:
    """Every English dialog of the installed chatterbot-corpus (excluded files left out), exact
    duplicates dropped, in file order."""
    from importlib import metadata, resources

    import yaml

    try:
        root = resources.files(CHATTERBOT_PACKAGE).joinpath("data", "english")
        version = metadata.version("chatterbot-corpus")
    except (ModuleNotFoundError, metadata.PackageNotFoundError):
        raise TwofilesError("the dialog corpus is missing: pip install chatterbot-corpus") from None
    out: list[Dialog] = []
    seen: set[tuple[str, ...]] = set()
    for f in sorted(root.iterdir(), key=lambda p: p.name):
        if not f.name.endswith(".yml") or f.name in CHATTERBOT_EXCLUDED:
            continue
        data = yaml.safe_load(f.read_text(encoding="utf-8"))
        for i, conv in enumerate(data.get("conversations") or []):
            lines = tuple(" ".join(str(x).split()) for x in conv if str(x).strip())
            if len(lines) < 2 or lines in seen:
                continue
            seen.add(lines)
            out.append(Dialog(f"chatterbot-corpus=={version}/english/{f.name}#{i}", lines))
    return tuple(out)


def chat_dialogs(split: Split, n: int | None = None, seed: int = 0) -> list[Dialog]:
    """The dialogs of one split (by the hash of their first line, so a question never sits in
    both), shuffled by `seed`, at most `n`."""
    pool = [d for d in chatterbot_dialogs() if _split_of("chat:" + d.lines[0].lower()) == split]
    random.Random(f"chat/{split}/{seed}").shuffle(pool)
    return pool if n is None else pool[:n]


# ---------------------------------------------------------------------------------------- the mix


def builtin_tasks(
    split: Split,
    seed: int = 0,
    *,
    sizes: dict[str, int] | None = None,
    who: ModelIdentity | None = None,
) -> list[SkillTask]:
    """The skill tasks of the built-in mix for one split, kind by kind."""
    sizes = MIX_SIZES[split] if sizes is None else sizes
    return [
        t
        for kind in SKILL_KINDS
        if sizes.get(kind, 0)
        for t in skill_tasks(kind, split, sizes[kind], seed, who=who)
    ]


def builtin_mix(
    split: Split,
    seed: int = 0,
    *,
    sizes: dict[str, int] | None = None,
    who: ModelIdentity | None = None,
) -> list[list[Message]]:
    """The built-in finetuning mix for one split: chat dialogs and skill demonstrations, shuffled
    together by `seed`. `sizes` overrides MIX_SIZES[split] (kind -> count; "chat" included)."""
    sizes = MIX_SIZES[split] if sizes is None else sizes
    convs = (
        [d.conversation() for d in chat_dialogs(split, sizes.get("chat", 0), seed)]
        if sizes.get("chat", 0)
        else []
    )
    convs += [t.conversation() for t in builtin_tasks(split, seed, sizes=sizes, who=who)]
    random.Random(f"mix/{split}/{seed}").shuffle(convs)
    return convs


def provenance() -> dict[str, Any]:
    """What the built-in mix is made of, for a finetuned model's provenance."""
    from importlib import metadata

    try:
        version = metadata.version("chatterbot-corpus")
    except metadata.PackageNotFoundError:
        version = None
    return {
        "chat": {
            "package": "chatterbot-corpus",
            "version": version,
            "license": CHATTERBOT_LICENSE,
            "language": "english",
            "excluded": list(CHATTERBOT_EXCLUDED),
        },
        "skills": list(SKILL_KINDS),
        "held_out_percent": HELD_OUT_PERCENT,
        "sizes": MIX_SIZES,
    }


__all__ = [
    "MIX_SIZES",
    "SKILL_KINDS",
    "WORDS",
    "Dialog",
    "ModelIdentity",
    "SkillTask",
    "builtin_mix",
    "builtin_tasks",
    "chat_dialogs",
    "chatterbot_dialogs",
    "check",
    "last_number",
    "provenance",
    "skill_tasks",
]
