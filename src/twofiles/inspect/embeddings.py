"""Embeddings: the input embedding table as a space of words, and one word's vector in context.

What it owns: turning a word into a vector of the input embedding (`word_vector`), cosine
nearest neighbours (`neighbours`), vector arithmetic such as "king - man + woman" (`parse_expression`,
`analogy`: the input words are excluded from the answers, as word2vec's evaluation does, and the
rank of an expected answer is reported, which says more than the top few on a small model), a
2-D PCA projection (`project_2d`), and how a word's hidden state moves with its context layer by
layer (`context_trajectory`). What it leaves to others: the pictures and tables (the CLI) and the
activations (hooks.run_with_cache).

A word that is several tokens is the mean of its tokens' embeddings (said in `WordVector.how`).
A word typed without a leading space is looked up as " word" first (byte-level BPE stores words
inside text with their leading space), then as typed.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from twofiles.inspect.hooks import as_transformer, run_with_cache


def embedding_table(model: Any) -> torch.Tensor:
    """The input embedding [vocab, dim] as fp32 on the CPU."""
    return as_transformer(model).model.embed_tokens.weight.detach().float().cpu()


@dataclass
class WordVector:
    word: str  # as the user typed it
    ids: list[int]  # the tokens it became
    vector: torch.Tensor  # [dim]
    how: str  # "1 token" or "mean of N tokens"


def word_tokens(tokenizer: Any, word: str) -> list[int]:
    """The tokens of `word`: " word" if that is one token, else `word` if that is, else the
    tokens of " word" (or of `word` when it already starts with a space)."""
    if not word.strip():
        raise ValueError(f"{word!r}: an empty word has no tokens")
    forms = [word] if word[0].isspace() else [" " + word, word]
    encoded = [tokenizer.encode(f) for f in forms]
    for ids in encoded:
        if len(ids) == 1:
            return ids
    if not encoded[0]:
        raise ValueError(f"{word!r}: the tokenizer gives no tokens for it")
    return encoded[0]


def word_vector(model: Any, word: str, table: torch.Tensor | None = None) -> WordVector:
    """`word`'s input embedding (`model` a LoadedModel: its tokenizer splits the word)."""
    E = embedding_table(model) if table is None else table
    ids = word_tokens(model.tokenizer, word)
    vec = E[ids].mean(0)
    return WordVector(word, ids, vec, "1 token" if len(ids) == 1 else f"mean of {len(ids)} tokens")


def neighbours(
    table: torch.Tensor, vector: torch.Tensor, k: int = 10, exclude: Sequence[int] = ()
) -> list[tuple[int, float]]:
    """The `k` rows of `table` [V, dim] with the highest cosine similarity to `vector`, best
    first, as (token id, cosine), leaving out the ids in `exclude`."""
    sims = cosine_all(table, vector)
    if exclude:
        sims[list(exclude)] = float("-inf")
    top = sims.topk(min(k, sims.numel() - len(set(exclude))))
    return [(int(i), float(s)) for s, i in zip(top.values, top.indices, strict=True)]


def cosine_all(table: torch.Tensor, vector: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of `vector` with every row of `table`: [V]."""
    return F.normalize(table.detach().float(), dim=-1) @ F.normalize(
        vector.detach().float(), dim=-1
    )


_TERM = re.compile(r'\s*(?:"([^"]+)"|([^\s+\-"]+))\s*')


def parse_expression(expr: str) -> list[tuple[int, str]]:
    """'king - man + woman' as [(+1, 'king'), (-1, 'man'), (+1, 'woman')]. A word is a run of
    characters other than space, '+', '-' and '"'; a quoted "word" may hold those. A leading
    sign is allowed."""
    terms: list[tuple[int, str]] = []
    pos, sign = 0, 1
    s = expr.strip()
    if s[:1] in "+-" and s:
        sign, pos = (1 if s[0] == "+" else -1), 1
    while True:
        m = _TERM.match(s, pos)
        if m is None or m.end() == pos:
            what = repr(s[pos:]) if pos < len(s) else "the end"
            raise ValueError(f"{expr!r}: expected a word at {what} (column {pos + 1})")
        terms.append((sign, m.group(1) or m.group(2)))
        pos = m.end()
        if pos == len(s):
            return terms
        if s[pos] not in "+-":
            raise ValueError(f"{expr!r}: expected '+' or '-' at {s[pos:]!r} (column {pos + 1})")
        sign = 1 if s[pos] == "+" else -1
        pos += 1


@dataclass
class Analogy:
    expression: str
    terms: list[tuple[int, WordVector]]
    answers: list[tuple[int, float]]  # (token id, cosine), best first, input tokens excluded
    expected: WordVector | None = None
    expected_rank: int | None = None  # 1 = the top answer; None when no answer was expected
    expected_cosine: float | None = None


def analogy(model: Any, expression: str, k: int = 10, expect: str | None = None) -> Analogy:
    """Vector arithmetic on the input embedding: the sum of the signed word vectors of
    `expression`, its `k` nearest tokens by cosine with every input token left out, and, given
    `expect`, the rank of that word's (first) token among all the others."""
    E = embedding_table(model)
    terms = [(sign, word_vector(model, w, E)) for sign, w in parse_expression(expression)]
    target = sum((sign * wv.vector for sign, wv in terms), torch.zeros(E.shape[1]))
    used = sorted({i for _, wv in terms for i in wv.ids})
    result = Analogy(expression, terms, neighbours(E, target, k, exclude=used))
    if expect is not None:
        want = word_vector(model, expect, E)
        sims = cosine_all(E, target)
        sims[used] = float("-inf")
        first = want.ids[0]
        result.expected = want
        result.expected_cosine = float(sims[first])
        result.expected_rank = int((sims > sims[first]).sum()) + 1
    return result


def project_2d(vectors: torch.Tensor) -> torch.Tensor:
    """PCA of `vectors` [N, dim] to [N, 2] (the two directions of largest variance)."""
    x = vectors.float() - vectors.float().mean(0, keepdim=True)
    _, _, v = torch.linalg.svd(x, full_matrices=False)
    return x @ v[:2].T


def map_top_tokens(tokenizer: Any, n: int) -> list[int]:
    """The first `n` whole-word tokens in vocabulary order (a space, then 3+ letters): in a
    BPE vocabulary the earliest merges are the most frequent words."""
    out = []
    for i in range(tokenizer.vocab_size):
        try:
            text = tokenizer.decode([i])
        except Exception:  # special or unused ids some vocabularies carry
            continue
        if text.startswith(" ") and len(text) >= 4 and text[1:].isalpha():
            out.append(i)
            if len(out) == n:
                break
    return out


@dataclass
class Trajectory:
    """One word's hidden state in several contexts, at the embedding and after every block."""

    word: str  # the word, or the words one per context joined by " / "
    contexts: list[str]
    tokens: list[list[int]]  # each context's tokens up to and including the word
    layers: list[str]  # "embed", "block 0", ...
    states: torch.Tensor  # [contexts, layers + 1, dim] the word's last token's residual stream
    cosine: dict[tuple[int, int], list[float]]  # (a, b) -> per layer cos(context a, context b)
    xy: torch.Tensor  # [contexts, layers + 1, 2] PCA of the unit-normalised states


def context_trajectory(
    model: Any, contexts: Sequence[str], word: str | Sequence[str]
) -> Trajectory:
    """`word`'s residual stream (hook_embed, then every block's resid_post) at its last token in
    each of `contexts`. The model is causal, so only the context up to the word's last
    occurrence is run: what follows it cannot change its vector. `word` may be one word per
    context: "a large tower" against "a large house" is the baseline that says how much of a
    cosine every token in that slot shares (in deep layers, a lot: a few large dimensions
    dominate the residual stream)."""
    if len(contexts) < 2:
        raise ValueError("give at least two contexts to compare")
    words = [word] * len(contexts) if isinstance(word, str) else list(word)
    if len(words) != len(contexts):
        raise ValueError(f"{len(words)} words for {len(contexts)} contexts: give one, or one each")
    m = as_transformer(model)
    tok = model.tokenizer
    n = m.config.n_layers
    names = ["hook_embed", *(f"blocks.{i}.hook_resid_post" for i in range(n))]
    states, all_ids = [], []
    for text, word in zip(contexts, words, strict=True):
        at = text.rfind(word)
        if at < 0:
            raise ValueError(f"{word!r} does not occur in the context {text!r}")
        ids = tok.encode(text[: at + len(word)])
        if tok.add_bos:
            ids = [tok.bos_id, *ids]
        _, cache = run_with_cache(m, ids, names=names)
        states.append(torch.stack([cache[name][0, -1].float().cpu() for name in names]))
        all_ids.append(ids)
    S = torch.stack(states)  # [C, L + 1, dim]
    cos = {
        (a, b): F.cosine_similarity(S[a], S[b], dim=-1).tolist()
        for a in range(len(contexts))
        for b in range(a + 1, len(contexts))
    }
    # unit vectors: the residual stream's norm grows with depth and would be all PCA sees
    flat = F.normalize(S.reshape(-1, S.shape[-1]), dim=-1)
    xy = project_2d(flat).reshape(S.shape[0], S.shape[1], 2)
    return Trajectory(
        word=" / ".join(dict.fromkeys(words)),
        contexts=list(contexts),
        tokens=all_ids,
        layers=["embed", *(f"block {i}" for i in range(n))],
        states=S,
        cosine=cos,
        xy=xy,
    )
