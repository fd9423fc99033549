"""The built-in document collection and its questions, shipped in the package.

collection/articles/ holds short encyclopedia articles about invented towns, inventions, people
and species (made-up names, dates and numbers), so no model can answer from memory what only
retrieval can find; collection/questions.jsonl holds questions about them whose short answers
appear verbatim (case-insensitively) in exactly one article. scripts/build_rag_collection.py
generated both, deterministically from a seed; the files are what ships, the script is how to
make them again.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

_HERE = Path(__file__).resolve().parent / "collection"


def builtin_collection_dir() -> Path:
    """The folder of articles to index (`twofiles rag index builtin` indexes it)."""
    return _HERE / "articles"


def builtin_questions() -> list[dict[str, Any]]:
    """[{"question", "answer", "source", "kind"}]: `source` is the article as an index of
    "builtin" cites it ("builtin/<file>"); `kind` is "named" (the question names the article's
    subject and asks a fact in other words), "described" (it describes the subject in other words,
    naming nothing) or "keyed" (it gives an exact number, title or scientific name from the
    article and asks whose it is)."""
    with open(_HERE / "questions.jsonl", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


__all__ = ["builtin_collection_dir", "builtin_questions"]
