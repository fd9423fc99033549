"""Shared fixtures: a tiny prepared corpus (real tokenizer, real shards) built once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Tests run on 2 shared cores: one thread per process avoids oversubscription and keeps
# CPU results bit-for-bit reproducible.
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A prepared data dir from the first ~200 KB of the built-in corpus, vocab 512."""
    from twofiles.data.builtin import shakespeare_documents
    from twofiles.data.prepare import prepare
    from twofiles.tokenizer import Tokenizer

    root = tmp_path_factory.mktemp("tiny_data")
    works = shakespeare_documents()
    src = root / "src"
    src.mkdir()
    for w in works[:4]:
        (src / f"{w.id}.txt").write_text(w.text[:50_000], encoding="utf-8")
    texts = [w.text[:50_000] for w in works[:3]]
    tok = Tokenizer.train(texts, 512)
    prepare(
        [str(src)], root / "data", tok, split="documents", val_fraction=0.25, seed=1, progress=False
    )
    return root / "data"
