"""The learned input classifier: logistic regression on all-MiniLM-L6-v2 sentence embeddings.

What it owns: the shipped weights (data/classifier.safetensors: `coef` [384], `intercept` [1];
metadata: the embedder's name and sha256, the threshold chosen on validation, the held-out
metrics, the sha256 of the labelled set it was fitted on), `Classifier.score` (embedding, a dot
product and a sigmoid: no scikit-learn at run time), `load_classifier` (once per process) and
`save_classifier`. What it leaves to others: the labelled set and the fit
(scripts/build_guard_data.py, scripts/build_guard_classifier.py, which use scikit-learn), the
embedder (twofiles.rag.embed).
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from twofiles.errors import TwofilesError

DATA_DIR = Path(__file__).parent / "data"
CLASSIFIER_FILE = DATA_DIR / "classifier.safetensors"
LABELLED_FILE = DATA_DIR / "labelled.jsonl"
FORMAT = "twofiles-guard-classifier"


class Classifier:
    """p(attack | text) = sigmoid(coef . embed(text) + intercept)."""

    def __init__(
        self, coef: np.ndarray, intercept: float, metadata: dict[str, Any], embedder: Any = None
    ) -> None:
        self.coef = np.asarray(coef, dtype=np.float32).reshape(-1)
        self.intercept = float(intercept)
        self.metadata = metadata
        self.threshold = float(metadata.get("threshold", 0.5))
        self._embedder = embedder

    @property
    def embedder(self) -> Any:
        if self._embedder is None:
            from twofiles.rag.embed import MINILM, MINILM_SHA256, MiniLM

            name, sha = self.metadata.get("embedder"), self.metadata.get("embedder_sha256")
            if name != MINILM or sha != MINILM_SHA256:
                raise TwofilesError(
                    f"guard classifier: fitted on embedder {name} ({sha}), but this twofiles "
                    f"embeds with {MINILM} ({MINILM_SHA256}): rebuild it with "
                    "scripts/build_guard_classifier.py"
                )
            self._embedder = MiniLM(device="cpu")  # ~20 short texts/s per core: no GPU needed
        return self._embedder

    def logits(self, embeddings: np.ndarray) -> np.ndarray:
        return embeddings.astype(np.float32) @ self.coef + self.intercept

    def score(self, texts: Sequence[str]) -> list[float]:
        """p(attack) for each text."""
        if not texts:
            return []
        z = self.logits(self.embedder.embed(list(texts)))
        return (1.0 / (1.0 + np.exp(-z))).astype(float).tolist()


def save_classifier(
    path: str | os.PathLike[str], coef: np.ndarray, intercept: float, metadata: dict[str, Any]
) -> None:
    """Weights as safetensors, metadata as JSON strings beside them; written atomically."""
    from safetensors.numpy import save

    from twofiles.paths import atomic_write_bytes

    tensors = {
        "coef": np.asarray(coef, dtype=np.float32).reshape(-1),
        "intercept": np.asarray([intercept], dtype=np.float32),
    }
    meta = {"format": FORMAT, **{k: json.dumps(v) for k, v in metadata.items()}}
    atomic_write_bytes(path, save(tensors, metadata=meta))


@functools.lru_cache(maxsize=4)
def load_classifier(path: str | None = None) -> Classifier:
    """The classifier at `path` (default: the shipped one); loaded once per process and path,
    the embedder on first use."""
    from safetensors import safe_open

    p = Path(path) if path is not None else CLASSIFIER_FILE
    if not p.is_file():
        raise TwofilesError(
            f"{p}: no guard classifier (build it: scripts/build_guard_classifier.py)"
        )
    with safe_open(str(p), framework="numpy") as f:
        raw = f.metadata() or {}
        if raw.get("format") != FORMAT:
            raise TwofilesError(f"{p}: not a guard classifier (format {raw.get('format')!r})")
        coef, intercept = f.get_tensor("coef"), float(f.get_tensor("intercept")[0])
    meta = {k: json.loads(v) for k, v in raw.items() if k != "format"}
    return Classifier(coef, intercept, meta)


__all__ = ["CLASSIFIER_FILE", "LABELLED_FILE", "Classifier", "load_classifier", "save_classifier"]
