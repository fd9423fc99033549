"""The built-in document collection and its questions, shipped in the package.

collection/articles/ holds short encyclopedia articles about invented towns, inventions, people
and species (made-up names, dates and numbers), so no model can answer from memory what only
retrieval can find; collection/questions.jsonl holds questions about them whose short answers
appear verbatim (case-insensitively) in exactly one article. scripts/build_rag_collection.py
generated both, deterministically from a seed; the files are what ships, the script is how to
make them again.

Dev and test. Every question carries a split, computed here at load time from its article rather
than stored: an article whose id ("builtin/<file>") has a sha256 divisible by 3 is "dev" (44 of
the 120 articles, 175 of the 476 questions), the rest "test". All questions about one article
land in the same split, so a setting tuned on dev (the hybrid fusion) has never seen the test
articles; the split depends on nothing but the article's name, so regenerating the questions
keeps it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from twofiles.errors import BadInputError

_HERE = Path(__file__).resolve().parent / "collection"
SPLITS = ("dev", "test")
DEV_EVERY = 3  # one article in DEV_EVERY (by its hash) is dev: ~1/3 of the questions to tune on


def builtin_collection_dir() -> Path:
    """The folder of articles to index (`twofiles rag index builtin` indexes it)."""
    return _HERE / "articles"


def article_split(source: str) -> str:
    """ "dev" or "test" for the article `source` ("builtin/<file>"), the same on every machine."""
    h = int.from_bytes(hashlib.sha256(source.encode("utf-8")).digest(), "big")
    return "dev" if h % DEV_EVERY == 0 else "test"


def builtin_questions(split: str | None = None) -> list[dict[str, Any]]:
    """[{"question", "answer", "source", "kind", "topic", "split"}]: `source` is the article as
    an index of "builtin" cites it ("builtin/<file>"); `kind` is "named" (the question names the
    article's subject and asks a fact in other words), "described" (it describes the subject in
    other words, naming nothing) or "keyed" (it gives an exact number, title or scientific name
    from the article and asks whose it is); `split` is "dev" or "test" (article_split). `split`
    given: only that split's questions."""
    if split is not None and split not in SPLITS:
        raise BadInputError(f"unknown split {split!r}: one of {', '.join(SPLITS)}")
    with open(_HERE / "questions.jsonl", encoding="utf-8") as f:
        qs = [json.loads(line) for line in f if line.strip()]
    for q in qs:
        q["split"] = article_split(q["source"])
    return [q for q in qs if split is None or q["split"] == split]


__all__ = ["SPLITS", "article_split", "builtin_collection_dir", "builtin_questions"]
