"""Okapi BM25 over the chunks' words, as postings in numpy arrays (a sparse term x chunk matrix
in CSR form); built in memory when an index is opened (tens of milliseconds for thousands of
chunks), so the store holds only the text.

score(q, d) = sum over query terms t of idf(t) * tf(t,d) * (k1 + 1) / (tf(t,d) + k1 * (1 - b + b * |d| / avgdl))
with Lucene's idf(t) = ln(1 + (N - df + 0.5) / (df + 0.5)), which never goes negative.
k1 = 1.2 and b = 0.75 are the usual defaults (Robertson & Zaragoza 2009, "The Probabilistic
Relevance Framework: BM25 and Beyond"). Words are lower-cased runs of letters and digits after
NFKC normalisation (so an "é" typed as "e" + accent, full-width letters and ligatures match their
plain forms); common English function words are left out of queries and documents.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Sequence

import numpy as np

K1, B = 1.2, 0.75
_WORD = re.compile(r"\w+")
STOPWORDS = frozenset(
    [
        "a",
        "an",
        "and",
        "are",
        "as",
        "at",
        "be",
        "been",
        "but",
        "by",
        "did",
        "do",
        "does",
        "for",
        "from",
        "had",
        "has",
        "have",
        "he",
        "her",
        "his",
        "how",
        "i",
        "if",
        "in",
        "into",
        "is",
        "it",
        "its",
        "of",
        "on",
        "or",
        "she",
        "so",
        "than",
        "that",
        "the",
        "their",
        "them",
        "then",
        "there",
        "these",
        "they",
        "this",
        "to",
        "was",
        "were",
        "what",
        "when",
        "where",
        "which",
        "who",
        "whom",
        "whose",
        "why",
        "will",
        "with",
        "you",
        "your",
    ]
)


def words(text: str) -> list[str]:
    norm = unicodedata.normalize("NFKC", text).lower()
    return [w for w in _WORD.findall(norm) if w not in STOPWORDS]


class BM25:
    def __init__(self, texts: Sequence[str]) -> None:
        vocab: dict[str, int] = {}
        rows: list[int] = []  # term id per posting
        cols: list[int] = []  # chunk (position in texts) per posting
        tfs: list[int] = []
        lengths = np.zeros(len(texts), dtype=np.float32)
        for d, text in enumerate(texts):
            ws = words(text)
            lengths[d] = len(ws)
            for w, n in Counter(ws).items():
                rows.append(vocab.setdefault(w, len(vocab)))
                cols.append(d)
                tfs.append(n)
        self.vocab = vocab
        self.n = len(texts)
        order = np.argsort(np.asarray(rows, dtype=np.int64), kind="stable")
        self.docs = np.asarray(cols, dtype=np.int64)[order]
        tf = np.asarray(tfs, dtype=np.float32)[order]
        self.indptr = np.zeros(len(vocab) + 1, dtype=np.int64)
        np.cumsum(
            np.bincount(np.asarray(rows, dtype=np.int64), minlength=len(vocab)), out=self.indptr[1:]
        )
        df = np.diff(self.indptr).astype(np.float32)
        self.idf = np.log1p((self.n - df + 0.5) / (df + 0.5))
        avgdl = float(lengths.mean()) if self.n and lengths.mean() > 0 else 1.0
        norm = K1 * (1 - B + B * lengths / avgdl)
        # the per-posting term weight without idf, precomputed once
        self.weight = tf * (K1 + 1) / (tf + norm[self.docs])

    def scores(self, query: str) -> np.ndarray:
        """[N] float32: each chunk's BM25 score for the query (0 where no term matches)."""
        out = np.zeros(self.n, dtype=np.float32)
        for w in set(words(query)):
            t = self.vocab.get(w)
            if t is None:
                continue
            a, b = self.indptr[t], self.indptr[t + 1]
            out[self.docs[a:b]] += self.idf[t] * self.weight[a:b]  # a term's chunks are distinct
        return out


__all__ = ["BM25", "words"]
