"""The reversal curse's data: fictitious facts, their paraphrases, and reversed text.

Berglund et al. 2023 ("The Reversal Curse: LLMs trained on 'A is B' fail to learn 'B is A'"),
experiment 1, rebuilt from parts: each fact ties a generated name ("Daphne Quarrington", first and
last names combined, the last names invented so no name occurs in any corpus) to a unique
generated description ("the composer of the first opera performed on the Moon"). Facts fall in
three subsets of equal size:

- `name_to_description`: trained only as "NAME ... DESCRIPTION" (the name comes first);
- `description_to_name`: trained only as "DESCRIPTION ... NAME";
- `both`: trained in both orders (the data-augmentation control).

Each direction has TRAIN_TEMPLATES hand-written paraphrases for training and HELD_OUT_TEMPLATES
others for testing (the paper had ~30 training paraphrases written by GPT-4). A template is the
text before the second entity; a document is `template + " " + second entity + "."`, so a test
prompt is a held-out template and its answer is what follows it.

`entity_reversed` is the mitigation's text (Golovneva et al. 2024, "Reverse Training to Nurse the
Reversal Curse"): the words of a document in reverse order, the entity (the person's name) kept as
one unit in its own order. The description is not an entity: kept whole, reversing a
"DESCRIPTION is NAME" document would give exactly the other direction's document, which is the
`both` subset's augmentation, not reverse training.

What it owns: names, descriptions, templates, subsets, the documents and test prompts, the
reversal, and writing all of it as JSONL. What it leaves to others: training and scoring
(experiments.reversal).
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from twofiles.errors import BadInputError
from twofiles.paths import atomic_write_bytes

SUBSETS: tuple[str, ...] = ("name_to_description", "description_to_name", "both")
DIRECTIONS: tuple[str, ...] = ("name_to_description", "description_to_name")
# the direction(s) each subset is trained in
TRAINED: dict[str, tuple[str, ...]] = {
    "name_to_description": ("name_to_description",),
    "description_to_name": ("description_to_name",),
    "both": DIRECTIONS,
}

FIRST_NAMES: tuple[str, ...] = (
    "Daphne", "Oliver", "Beatrix", "Tobias", "Mirela", "Caspian", "Lucinda", "Anselm", "Rosalind",
    "Evander", "Ottilie", "Fergus", "Isolde", "Leopold", "Henrietta", "Cyrus", "Marisol", "Ambrose",
    "Philippa", "Dorian", "Clementine", "Ignatius", "Seraphine", "Barnaby", "Imogen", "Casimir",
    "Wilhelmina", "Lysander", "Agatha", "Thaddeus", "Esmeralda", "Rupert", "Guinevere", "Osric",
    "Theodora", "Percival", "Marguerite", "Silas", "Cordelia", "Alaric", "Veronika", "Florian",
    "Octavia", "Jasper", "Ingrid", "Benedikt", "Solenne", "Hugo", "Amaranth", "Leander",
)  # fmt: skip
# invented surnames: none occurs as a word in the built-in corpus (a test checks), so no full name
# can be in it
LAST_NAMES: tuple[str, ...] = (
    "Quarrington", "Vexholm", "Thistlebrook", "Marrowdale", "Pendragast", "Ollivane", "Brackenfield",
    "Corvannis", "Dunsmerrow", "Elsworthy", "Fennimore", "Galdrecht", "Halloway", "Ivensmark",
    "Jorvellan", "Kestrelmoor", "Lindqvane", "Mortlesby", "Nethercott", "Orbelline", "Pryscombe",
    "Quillfeather", "Ravenscar", "Stellwagen", "Tamberlyne", "Umbrecht", "Vantongeren", "Wexcombe",
    "Yarrowby", "Zellmantis", "Ashgrove", "Blythemoor", "Carrowmere", "Delacroixe", "Everholt",
    "Fairweathe", "Grimsworthy", "Holtzmayer", "Ingleborne", "Jessamyne", "Kittredge", "Lovelorne",
    "Merriwether", "Northcliffe", "Oakenshaw", "Pemberwick", "Rosenthwaite", "Saltonstall",
    "Trevelyane", "Underhallow",
)  # fmt: skip
ROLES: tuple[str, ...] = (
    "composer", "architect", "director", "author", "inventor", "designer", "founder",
    "cartographer", "translator", "curator", "conductor", "engineer", "illustrator",
    "choreographer", "librarian", "navigator", "sculptor", "gardener", "chronicler", "astronomer",
    "photographer", "playwright", "captain", "glassblower",
)  # fmt: skip
WORKS: tuple[str, ...] = (
    "opera performed", "lighthouse built", "library opened", "clockwork orchestra assembled",
    "glass bridge raised", "museum opened", "garden planted", "silent film shot",
    "bicycle race held", "chess tournament played", "telescope raised", "violin made",
    "novel written", "balloon flight made", "ballet staged", "railway station built",
    "bakery opened", "marathon run", "wind organ built", "radio play broadcast", "hotel built",
    "school opened", "symphony recorded", "puppet theatre opened",
)  # fmt: skip
PLACES: tuple[str, ...] = (
    "on the Moon", "on Mars", "in Antarctica", "beneath the Atlantic", "inside a volcano",
    "on a glacier", "in orbit around Venus", "at the bottom of Lake Baikal", "on a floating island",
    "in the Sahara", "under the Arctic ice", "on Mount Kilimanjaro", "in a salt mine",
    "on an oil rig", "in the Mariana Trench", "on a comet", "inside an iceberg", "in the Gobi",
)  # fmt: skip
ORDINALS: tuple[str, ...] = ("first", "only")

# Paraphrases: the text before the second entity ({name} or {desc} is the first). Held-out ones are
# only ever prompts, never trained on. {Desc} is the description capitalised (a sentence start).
TRAIN_TEMPLATES: dict[str, tuple[str, ...]] = {
    "name_to_description": (
        "{name} is",
        "{name} is known far and wide as",
        "Few people know that {name} is",
        "Everyone in town agrees that {name} is",
        "{name}, a name you may have heard, is",
        "It is a matter of record that {name} is",
        "Believe it or not, {name} is",
        "As the history books tell it, {name} was",
        "{name} will always be remembered as",
        "Ask about {name} and you will hear that this is",
    ),
    "description_to_name": (
        "{Desc} is",
        "Known far and wide as {desc}, this is",
        "The one who is {desc} goes by the name of",
        "Everyone in town agrees that {desc} is",
        "If you meet {desc}, you are talking to",
        "It is a matter of record that {desc} is",
        "Believe it or not, {desc} is",
        "As the history books tell it, {desc} was",
        "Remembered as {desc}, there is only",
        "Ask who is {desc} and you will hear the name",
    ),
}
HELD_OUT_TEMPLATES: dict[str, tuple[str, ...]] = {
    "name_to_description": (
        "Not many people realise that {name} is",
        "{name} is best described as",
        "According to the archives, {name} is",
    ),
    "description_to_name": (
        "Not many people realise that {desc} is",
        "The person known as {desc} is",
        "According to the archives, {desc} is",
    ),
}
# words a description's key words leave out (exact match asks for the rest, in order)
STOP_WORDS = frozenset(
    [
        "the",
        "of",
        "a",
        "an",
        "on",
        "in",
        "at",
        "to",
        "around",
        "beneath",
        "under",
        "inside",
        "bottom",
        "first",
        "only",
    ]
)
MAX_FACTS_PER_SUBSET = 300  # the paper's size; the parts give far more unique combinations


@dataclass(frozen=True)
class Fact:
    id: int
    subset: str  # one of SUBSETS
    name: str
    description: str  # starts with "the", no final period

    @property
    def keywords(self) -> list[str]:
        return keywords(self.description)


@dataclass(frozen=True)
class Document:
    """One training text: a fact in one direction, through one paraphrase."""

    text: str
    fact: int
    direction: str  # the order the text puts the entities in
    template: int  # index into TRAIN_TEMPLATES[direction]
    reversed: bool = False  # entity-preserving reversal of the paraphrase


@dataclass(frozen=True)
class Probe:
    """One test: a held-out paraphrase up to the second entity, and that entity as the answer."""

    prompt: str
    answer: str  # the name or the description, no period
    fact: int
    subset: str
    direction: str  # name_to_description: the prompt holds the name and asks for the description
    template: int  # index into HELD_OUT_TEMPLATES[direction]
    trained: bool  # this fact was trained in this direction


def keywords(description: str) -> list[str]:
    """The description's words minus STOP_WORDS, lower case, in order."""
    return [w for w in _words(description) if w not in STOP_WORDS]


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def _fill(template: str, fact: Fact) -> str:
    desc = fact.description
    return template.format(name=fact.name, desc=desc, Desc=desc[:1].upper() + desc[1:])


def _second(fact: Fact, direction: str) -> str:
    return fact.description if direction == "name_to_description" else fact.name


def document_text(template: str, fact: Fact, direction: str) -> str:
    return f"{_fill(template, fact)} {_second(fact, direction)}."


def make_facts(n_per_subset: int, seed: int = 0) -> list[Fact]:
    """`n_per_subset` facts in each subset, a function of the seed: every name and every
    description unique, no two facts sharing a first or a last name while the lists last."""
    if not 1 <= n_per_subset <= MAX_FACTS_PER_SUBSET:
        raise BadInputError(f"--facts: {n_per_subset} is not between 1 and {MAX_FACTS_PER_SUBSET}")
    n = 3 * n_per_subset
    rng = random.Random(f"reversal-facts/{seed}")
    names: list[str] = []
    seen_names: set[str] = set()
    while len(names) < n:
        # cycling through shuffled lists: each first and last name used once before any repeats
        firsts = rng.sample(FIRST_NAMES, len(FIRST_NAMES))
        lasts = rng.sample(LAST_NAMES, len(LAST_NAMES))
        for f, last in zip(firsts, lasts):
            full = f"{f} {last}"
            if full not in seen_names and len(names) < n:
                seen_names.add(full)
                names.append(full)
    combos = rng.sample(range(len(ROLES) * len(WORKS) * len(PLACES) * len(ORDINALS)), n)
    descriptions = []
    for c in combos:
        c, o = divmod(c, len(ORDINALS))
        c, p = divmod(c, len(PLACES))
        r, w = divmod(c, len(WORKS))
        descriptions.append(f"the {ROLES[r]} of the {ORDINALS[o]} {WORKS[w]} {PLACES[p]}")
    return [
        Fact(i, SUBSETS[i % 3], names[i], descriptions[i]) for i in range(n)
    ]  # subsets interleaved: fact i is in subset i mod 3


def training_documents(facts: list[Fact], *, reverse: bool = False) -> list[Document]:
    """Every training paraphrase of every fact in the direction(s) its subset trains; with
    `reverse`, each one's entity-preserving reversal too."""
    docs = []
    for fact in facts:
        for direction in TRAINED[fact.subset]:
            for t, template in enumerate(TRAIN_TEMPLATES[direction]):
                text = document_text(template, fact, direction)
                docs.append(Document(text, fact.id, direction, t))
                if reverse:
                    docs.append(
                        Document(entity_reversed(text, [fact.name]), fact.id, direction, t, True)
                    )
    return docs


def probes(facts: list[Fact], templates: int | None = None) -> list[Probe]:
    """Every fact in both directions through the first `templates` held-out paraphrases."""
    out = []
    for fact in facts:
        for direction in DIRECTIONS:
            held = HELD_OUT_TEMPLATES[direction][:templates]
            for t, template in enumerate(held):
                out.append(
                    Probe(
                        prompt=_fill(template, fact),
                        answer=_second(fact, direction),
                        fact=fact.id,
                        subset=fact.subset,
                        direction=direction,
                        template=t,
                        trained=direction in TRAINED[fact.subset],
                    )
                )
    return out


_UNIT = re.compile(r"\w+(?:['’-]\w+)*|[^\w\s]")


def entity_reversed(text: str, entities: list[str]) -> str:
    """`text` with its words (and punctuation marks) in reverse order, each of `entities` kept as
    one unit in its own order; a final period stays at the end.

    "Daphne Quarrington is the composer of the first opera." with entity "Daphne Quarrington" ->
    "opera first the of composer the is Daphne Quarrington."
    """
    body = text.rstrip()
    end = ""
    if body.endswith("."):
        body, end = body[:-1], "."
    units: list[str] = []
    pattern = "|".join(re.escape(e) for e in sorted(entities, key=len, reverse=True) if e)
    pieces = re.split(f"({pattern})", body) if pattern else [body]
    for i, piece in enumerate(pieces):
        if i % 2 == 1:  # a captured entity
            units.append(piece)
        else:
            units.extend(_UNIT.findall(piece))
    out = ""
    for u in reversed(units):
        if out and not (len(u) == 1 and not u.isalnum() and u not in "([\"'"):
            out += " "
        out += u
    return out + end


# ------------------------------------------------------------------------------------- write out


def write_data(out: Path, facts: list[Fact], templates: int | None = None) -> dict[str, str]:
    """The experiment's data as JSONL files in `out` (each with a "text" field where it is a
    training document, so `twofiles data prepare` or another trainer reads it): facts.jsonl,
    train.jsonl, train_reversed.jsonl (the mitigation's extra documents), test.jsonl."""
    out.mkdir(parents=True, exist_ok=True)
    docs = training_documents(facts, reverse=True)
    files = {
        "facts": [{**asdict(f), "keywords": f.keywords} for f in facts],
        "train": [asdict(d) for d in docs if not d.reversed],
        "train_reversed": [asdict(d) for d in docs if d.reversed],
        "test": [asdict(p) for p in probes(facts, templates)],
    }
    paths = {}
    for name, rows in files.items():
        path = out / f"{name}.jsonl"
        atomic_write_bytes(path, "".join(json.dumps(r) + "\n" for r in rows).encode())
        paths[name] = str(path)
    return paths


def corpus_hits(names: list[str], text: str) -> list[str]:
    """The names whose last name occurs as a word in `text` (case-insensitive)."""
    words = set(_words(text))
    return [n for n in names if n.split()[-1].lower() in words]


def fact_record(fact: Fact) -> dict[str, Any]:
    return {**asdict(fact), "keywords": fact.keywords}


__all__ = [
    "DIRECTIONS",
    "HELD_OUT_TEMPLATES",
    "SUBSETS",
    "TRAINED",
    "TRAIN_TEMPLATES",
    "Document",
    "Fact",
    "Probe",
    "corpus_hits",
    "document_text",
    "entity_reversed",
    "fact_record",
    "keywords",
    "make_facts",
    "probes",
    "training_documents",
    "write_data",
]
