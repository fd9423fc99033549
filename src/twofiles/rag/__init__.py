"""Retrieval over a user's documents (RAG's "R"): index files, embed chunks, search them.

extract.py (text of files: text, Markdown, HTML, PDF, JSONL; folder walks), chunk.py (token-aware
chunks with overlap), embed.py (all-MiniLM-L6-v2 in plain torch, or a twofiles model's pooled
states), bm25.py (Okapi BM25), index.py (the SQLite + matrix store, incremental atomic builds,
BM25 / dense / hybrid search), collection.py (the built-in collection and its questions).
grounding.py builds answers with citations on top of this interface.

The names below load on first use: `import twofiles.rag` imports nothing heavy.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from twofiles.rag.collection import builtin_collection_dir, builtin_questions
    from twofiles.rag.index import Passage, RagIndex, build_index, open_index

_WHERE = {
    "Passage": "twofiles.rag.index",
    "RagIndex": "twofiles.rag.index",
    "build_index": "twofiles.rag.index",
    "open_index": "twofiles.rag.index",
    "builtin_collection_dir": "twofiles.rag.collection",
    "builtin_questions": "twofiles.rag.collection",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'twofiles.rag' has no attribute {name!r}")


__all__ = [
    "Passage",
    "RagIndex",
    "build_index",
    "builtin_collection_dir",
    "builtin_questions",
    "open_index",
]
