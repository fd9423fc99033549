"""GGUF vocabularies <-> Hugging Face `tokenizers` JSON.

What it owns: turning the vocabulary a GGUF stores as metadata (tokens, token types, merges or
scores, a pre-tokenizer name) into a `tokenizer.json` that encodes and decodes as llama.cpp and
transformers do, and the reverse direction's pieces for export (the pre-tokenizer's GGUF name,
SentencePiece scores). Two kinds:

- byte-level BPE (`tokenizer.ggml.model == "gpt2"`: Llama 3, SmolLM, Qwen2, twofiles' own):
  every byte is a symbol, the merges are stored, `tokenizer.ggml.pre` names the split regex;
- SentencePiece BPE (`"llama"`: Llama 2, TinyLlama, Mistral): "▁" stands for a space, a piece
  of the text prefixed with one, unknown characters fall back to `<0xNN>` byte tokens, and no
  merges are stored: the merge order is rebuilt from the scores, as transformers' GGUF loader
  does (`generate_merges`), giving its LlamaTokenizerFast (Metaspace, prepend "first").

What it leaves to others: reading the GGUF container (gguf.py), writing one (gguf_export.py),
the Tokenizer class (tokenizer.py).
"""

from __future__ import annotations

import json
import math
from typing import Any

from twofiles.errors import BadInputError

# tokenizer.ggml.pre -> the HF pre-tokenizer that splits text the same way (llama.cpp's
# llama-vocab.cpp regexes). ByteLevel with use_regex=True is GPT-2's split.
_GPT2 = [{"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}]
_LLAMA3_RE = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
_QWEN2_RE = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"


def _split_then_bytes(regex: str) -> list[dict[str, Any]]:
    return [
        {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False},
    ]


PRE_TOKENIZERS: dict[str, list[dict[str, Any]]] = {
    "default": _GPT2,
    "gpt-2": _GPT2,
    "gpt2": _GPT2,
    "smollm": [{"type": "Digits", "individual_digits": True}, *_GPT2],
    "starcoder": [{"type": "Digits", "individual_digits": True}, *_GPT2],
    "llama-bpe": _split_then_bytes(_LLAMA3_RE),
    "llama3": _split_then_bytes(_LLAMA3_RE),
    "qwen2": _split_then_bytes(_QWEN2_RE),
}
# The name export writes for each distinct split (the first of its aliases above that llama.cpp knows).
_EXPORT_NAMES = ("gpt2", "smollm", "llama-bpe", "qwen2")
# Bound on the work of rebuilding SentencePiece merges (each token of length L tries L - 1 splits,
# each a copy of up to L characters): real vocabularies need ~1e6, a hostile one must not hang us.
MAX_MERGE_WORK = 10**8
BYTE_TOKEN_LEN = len("<0x0A>")


def _added(i: int, content: str, special: bool) -> dict[str, Any]:
    return {
        "id": i,
        "content": content,
        "single_word": False,
        "lstrip": False,
        "rstrip": False,
        "normalized": False,
        "special": special,
    }


def _vocab_and_added(
    tokens: list[str], types: list[int] | None, special_types: tuple[int, ...]
) -> tuple[dict[str, int], list[dict[str, Any]]]:
    vocab: dict[str, int] = {}
    added = []
    for i, tok in enumerate(tokens):
        vocab.setdefault(tok, i)  # a few vocabularies repeat unused entries: the first id wins
        t = types[i] if types is not None and i < len(types) else 1
        if (t in special_types or t == 4) and vocab[
            tok
        ] == i:  # 4 = USER_DEFINED: matched whole, not special
            added.append(_added(i, tok, t != 4))
    return vocab, added


def bpe_tokenizer_json(
    tokens: list[str], merges: list[str], types: list[int] | None, pre: str, path: str = ""
) -> str:
    """A `tokenizers` JSON for a GGUF byte-level BPE vocabulary. Control tokens (token type 3)
    become special added tokens, user-defined ones (4) plain added tokens."""
    if pre not in PRE_TOKENIZERS:
        raise BadInputError(
            f"pre-tokenizer '{pre}' is not supported yet (known: {', '.join(sorted(PRE_TOKENIZERS))})",
            path=path,
        )
    vocab, added = _vocab_and_added(tokens, types, (3,))
    pairs = []
    for m in merges:
        parts = m.split(" ")
        if len(parts) != 2:
            raise BadInputError(f"merge {m!r} is not two tokens separated by one space", path=path)
        pairs.append(parts)
    spec = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": PRE_TOKENIZERS[pre]},
        "post_processor": None,
        "decoder": {
            "type": "ByteLevel",
            "add_prefix_space": True,
            "trim_offsets": True,
            "use_regex": True,
        },
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": pre in ("llama-bpe", "llama3"),  # as Llama 3's own tokenizer.json
            "vocab": vocab,
            "merges": pairs,
        },
    }
    return json.dumps(spec, ensure_ascii=False)


def spm_merges(tokens: list[str], scores: list[float], path: str = "") -> list[list[str]]:
    """SentencePiece BPE merges from token scores: every split of a token into two vocabulary
    pieces is a merge, the merge making the higher-scoring token first (SentencePiece merges the
    pair whose result scores best). transformers' `generate_merges`, ties included."""
    if sum(len(t) ** 2 for t in tokens) > MAX_MERGE_WORK:
        raise BadInputError("SentencePiece vocabulary with absurdly long tokens", path=path)
    vocab: dict[str, int] = {}
    for i, t in enumerate(tokens):
        vocab[t] = i  # as transformers: a repeated token keeps its last id
    score = dict(zip(tokens, scores))
    merges = []
    for merged, s in score.items():
        local = [
            (merged[:k], merged[k:], s)
            for k in range(1, len(merged))
            if merged[:k] in vocab and merged[k:] in vocab
        ]
        local.sort(key=lambda m: (vocab[m[0]], vocab[m[1]]))
        merges.extend(local)
    merges.sort(key=lambda m: (m[2], len(m[0]), len(m[1])), reverse=True)
    return [[a, b] for a, b, _ in merges]


def spm_tokenizer_json(
    tokens: list[str],
    scores: list[float],
    types: list[int] | None,
    unk_id: int | None,
    path: str = "",
    *,
    add_space_prefix: bool = True,
) -> str:
    """A `tokenizers` JSON for a GGUF SentencePiece vocabulary: what transformers' GGUF loader
    builds (LlamaTokenizerFast: BPE with byte fallback, Metaspace "▁" prepended to the first piece,
    decoding strips that one leading space). Control (3) and unknown (2) tokens are special.
    `add_space_prefix=False` (tokenizer.ggml.add_space_prefix, which llama.cpp honours and
    transformers ignores) prepends nothing and strips nothing."""
    if len(scores) != len(tokens):
        raise BadInputError(
            f"tokenizer.ggml.scores has {len(scores)} entries for {len(tokens)} tokens", path=path
        )
    if not all(math.isfinite(s) for s in scores):
        raise BadInputError("tokenizer.ggml.scores holds a non-finite score", path=path)
    vocab, added = _vocab_and_added(tokens, types, (2, 3))
    spec = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": {
            "type": "Metaspace",
            "replacement": "\u2581",
            "prepend_scheme": "first" if add_space_prefix else "never",
            "split": False,
        },
        "post_processor": None,
        "decoder": {
            "type": "Sequence",
            "decoders": [
                {"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "},
                {"type": "ByteFallback"},
                {"type": "Fuse"},
                *(
                    [{"type": "Strip", "content": " ", "start": 1, "stop": 0}]
                    if add_space_prefix
                    else []
                ),
            ],
        },
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": tokens[unk_id] if unk_id is not None else None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": True,
            "byte_fallback": True,
            "ignore_merges": False,
            "vocab": vocab,
            "merges": spm_merges(tokens, scores, path),
        },
    }
    return json.dumps(spec, ensure_ascii=False)


def spm_scores(tokens: list[str], merges: list[str]) -> list[float]:
    """Scores that rebuild `merges`' order through `spm_merges` (export of a SentencePiece-style
    vocabulary): the token a merge makes scores minus that merge's rank; tokens no merge makes
    (single characters, bytes, specials) score below every merge."""
    rank: dict[str, int] = {}
    for r, m in enumerate(merges):
        a, _, b = m.partition(" ")
        rank.setdefault(a + b, r)
    floor = -float(len(merges) + 1)
    return [-float(rank[t]) if t in rank else floor for t in tokens]


def _signature(steps: Any) -> list[tuple]:
    """What decides how a pre-tokenizer splits text, ignoring fields that do not."""
    if isinstance(steps, dict):
        steps = steps.get("pretokenizers") if steps.get("type") == "Sequence" else [steps]
    out: list[tuple[Any, ...]] = []
    for s in steps or []:
        kind = s.get("type")
        if kind == "ByteLevel":
            out.append((kind, bool(s.get("use_regex", True)), bool(s.get("add_prefix_space"))))
        elif kind == "Split":
            p = s.get("pattern") or {}
            out.append(
                (kind, p.get("Regex", p.get("String")), s.get("behavior"), bool(s.get("invert")))
            )
        elif kind == "Digits":
            out.append((kind, bool(s.get("individual_digits"))))
        else:
            out.append((kind, json.dumps(s, sort_keys=True)))
    return out


def pre_name(pre_tokenizer: Any) -> str:
    """The `tokenizer.ggml.pre` name for a byte-level tokenizer's pre-tokenizer JSON. twofiles'
    own split (tokenizer.SPLIT_PATTERN, GPT-4's) is written as Llama 3's `llama-bpe`: the two
    regexes differ only in possessive quantifiers and `[\\r\\n]` vs `[\\r\\n]+` after `\\s*`, neither
    of which changes a split (the tests check it on a broad sample)."""
    from twofiles.tokenizer import SPLIT_PATTERN

    sig = _signature(pre_tokenizer)
    if sig == _signature(_split_then_bytes(SPLIT_PATTERN)):
        return "llama-bpe"
    for name in _EXPORT_NAMES:
        if sig == _signature(PRE_TOKENIZERS[name]):
            return name
    raise BadInputError(
        f"the tokenizer's pre-tokenizer has no GGUF name (known: {', '.join(_EXPORT_NAMES)}): {json.dumps(pre_tokenizer)[:200]}"
    )


__all__ = [
    "PRE_TOKENIZERS",
    "bpe_tokenizer_json",
    "pre_name",
    "spm_merges",
    "spm_scores",
    "spm_tokenizer_json",
]
