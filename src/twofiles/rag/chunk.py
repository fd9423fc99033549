"""Token-aware chunks: a document's text cut at sentence and line ends into spans of at most
`chunk_tokens` tokens (counted with the embedder's own tokenizer), each sharing up to `overlap`
tokens of whole sentences with the one before, so a fact that straddles a cut is whole in one of
them. A sentence longer than a chunk is cut between words, and a word longer than a chunk (a
minified JSON or CSV line, a run of digits) between characters, preferring a punctuation mark.

Spans are character offsets into the text: a chunk's text is text[start:end]. A chunk's count is
the sum of its pieces' counts, which is what the model sees up to a token at each joint.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

# a sentence ends at . ! or ? (with any closing quote or bracket) before whitespace; a line ends too
_END = re.compile(r"[.!?][\"'”’)\]]*(?=\s)|\n")


def _pieces(text: str) -> list[tuple[int, int]]:
    spans, pos = [], 0
    for m in _END.finditer(text):
        spans.append((pos, m.end()))
        pos = m.end()
    spans.append((pos, len(text)))
    out = []
    for s, e in spans:
        while s < e and text[s].isspace():
            s += 1
        while e > s and text[e - 1].isspace():
            e -= 1
        if s < e:
            out.append((s, e))
    return out


def _words(text: str, start: int, end: int) -> list[tuple[int, int]]:
    return [(start + m.start(), start + m.end()) for m in re.finditer(r"\S+", text[start:end])]


def _cut(text: str, s: int, e: int) -> int:
    """Where to halve text[s:e] (s < cut < e): after the punctuation mark nearest the middle,
    else at the middle, so numbers and names stay whole where they can."""
    mid = (s + e) // 2
    for off in range(mid - s):
        for i in (mid - off, mid + off):
            if s < i < e and not text[i - 1].isalnum():
                return i
    return max(mid, s + 1)


def _fit(
    text: str,
    spans: list[tuple[int, int]],
    count_tokens: Callable[[Sequence[str]], list[int]],
    budget: int,
) -> list[tuple[int, int, int]]:
    """(start, end, tokens) units covering `spans`, each of at most `budget` tokens: a span over
    it is halved (between characters) until its parts fit. A single character always fits."""
    out: list[tuple[int, int, int]] = []
    todo = spans
    while todo:
        over = []
        for (s, e), n in zip(todo, count_tokens([text[a:b] for a, b in todo])):
            if n <= budget or e - s <= 1:
                out.append((s, e, n))
            else:
                c = _cut(text, s, e)
                over += [(s, c), (c, e)]
        todo = over
    return sorted(out)


def chunk_spans(
    text: str,
    count_tokens: Callable[[Sequence[str]], list[int]],
    *,
    chunk_tokens: int = 256,
    overlap: int = 32,
) -> list[tuple[int, int]]:
    """(start, end) character spans covering every non-blank part of `text`, in order."""
    if chunk_tokens < 1 or overlap < 0 or overlap >= chunk_tokens:
        raise ValueError(
            f"need chunk_tokens >= 1 and 0 <= overlap < chunk_tokens, not {chunk_tokens}/{overlap}"
        )
    pieces = _pieces(text)
    counts = count_tokens([text[s:e] for s, e in pieces]) if pieces else []
    units: list[tuple[int, int, int]] = []
    for (s, e), n in zip(pieces, counts):
        if n <= chunk_tokens:
            units.append((s, e, n))
            continue
        units.extend(_fit(text, _words(text, s, e), count_tokens, chunk_tokens))
    out: list[tuple[int, int]] = []
    i = 0
    while i < len(units):
        j, total = i, 0
        while j < len(units) and (j == i or total + units[j][2] <= chunk_tokens):
            total += units[j][2]
            j += 1
        out.append((units[i][0], units[j - 1][1]))
        if j >= len(units):
            break
        # the next chunk starts with the last whole units worth at most `overlap` tokens
        k, back = j, 0
        while k - 1 > i and back + units[k - 1][2] <= overlap:
            back += units[k - 1][2]
            k -= 1
        i = k
    return out


__all__ = ["chunk_spans"]
