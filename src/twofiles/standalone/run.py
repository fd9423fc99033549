#!/usr/bin/env python3
"""run.py: the second of the two files. It runs a language model with nothing but Python and numpy.

    python run.py model.safetensors --prompt "To be, or not" [--temperature 0.8 --top-p 0.95 --seed 1]

An LLM is two files. The first, model.safetensors, is a list of numbers (the parameters) plus,
in its header, the recipe to use them: the model's shape (`config`) and its tokenizer. This file
is the second: everything needed to turn those numbers into text, top to bottom.

1. Read the parameters (`read_safetensors`). A safetensors file is an 8-byte little-endian
   length, a JSON header naming each tensor's dtype, shape and byte range, then the raw bytes.
2. Turn the prompt into token ids (`Tokenizer`). Text is cut into pieces by a regular expression
   (words, numbers, punctuation runs, whitespace), each piece becomes UTF-8 bytes, and byte-pair
   encoding merges adjacent symbols in the order the merges were learned until none applies.
   (Imported Llama 2 / Mistral vocabularies are SentencePiece-style instead: "▁" marks a space
   and a character the vocabulary lacks becomes its UTF-8 bytes, <0xNN> tokens.) twofiles'
   own models saw documents that start with a bos token (<|bos|>), so the prompt starts with it
   too; an imported model does what its own tokenizer settings say (the file's `add_bos`:
   SmolLM2 adds nothing, Llama adds its <|begin_of_text|> or <s>).
3. Predict the next token (`Model`). Each id picks a row of the embedding table, a vector of
   `dim` numbers. Then `n_layers` blocks, each of which adds to that vector:
     - attention: every position makes a query, a key and a value; a position reads the values
       of earlier positions, weighted by how well its query matches their keys. Rotary
       embeddings (RoPE) rotate queries and keys by an angle proportional to their position, so
       the match depends on distance (Llama 3.1 slows the slowest rotations further, for long
       contexts). Grouped-query attention shares each key/value head among
       several query heads. Keys and values of past positions are kept (the KV cache), so each
       new token costs one position's work, not the whole sequence's.
     - an MLP (SwiGLU): widen to `hidden_dim`, gate with SiLU, narrow back.
   Both read a normalised copy of the vector (RMSNorm). Finally the vector is compared with
   every token's output embedding: one score (logit) per vocabulary entry.
4. Roll the die (`sample`). Softmax turns logits into probabilities; temperature sharpens or
   flattens them (0 = always the most likely), top-p keeps the smallest set of likely tokens
   covering probability p. The chosen token is appended and step 3 runs again, until
   --max-tokens, the end of the context, or an end token: bos (the model saying "this document
   is over") or one of an imported model's eos tokens (e.g. end of turn).

Everything is float32 numpy on the CPU: slow for big models, but every number is visible.
"""

from __future__ import annotations

import argparse
import codecs
import itertools
import json
import math
import os
import re
import sys
import time
import unicodedata

import numpy as np

# ---------------------------------------------------------------------------------------------
# 1. The parameters file


class RunError(Exception):
    """A problem with the input (bad file, bad option): printed as one line, exit status 2."""


# safetensors dtype -> (little-endian numpy dtype of the stored values, bytes per value)
DTYPES = {"F32": ("<f4", 4), "F16": ("<f2", 2), "BF16": ("<u2", 2), "F64": ("<f8", 8)}
MAX_HEADER = 100 * 2**20  # the safetensors library's own limit on the JSON header


def read_safetensors(path: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """All tensors of a safetensors file as float32 arrays, and the header's string metadata."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise RunError(f"{path}: file too short to be safetensors ({size} bytes)")
            n = int.from_bytes(head, "little")
            if n <= 1 or n > min(MAX_HEADER, size - 8):
                raise RunError(
                    f"{path}: bad safetensors header length {n} (file is {size} bytes; truncated or not safetensors?)"
                )
            header = json.loads(f.read(n).decode("utf-8"))
    except OSError as e:
        raise RunError(f"{path}: cannot read ({e.strerror or e})") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RunError(f"{path}: safetensors header is not valid JSON ({e})") from None
    if not isinstance(header, dict):
        raise RunError(f"{path}: safetensors header is not a JSON object")
    meta = header.pop("__metadata__", None) or {}
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise RunError(f"{path}: safetensors __metadata__ is not a string -> string object")
    data_len = size - 8 - n
    data = (
        np.memmap(path, dtype=np.uint8, mode="r", offset=8 + n)
        if data_len
        else np.zeros(0, np.uint8)
    )
    tensors = {}
    for name, info in header.items():
        try:
            dtype, shape, (begin, end) = info["dtype"], info["shape"], info["data_offsets"]
        except (TypeError, KeyError, ValueError):
            raise RunError(
                f"{path}: tensor {name!r}: header entry needs dtype, shape and data_offsets [begin, end]"
            ) from None
        if dtype not in DTYPES:
            raise RunError(
                f"{path}: tensor {name!r} has dtype {dtype}; this runner reads {', '.join(DTYPES)}"
            )
        if not (isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)):
            raise RunError(f"{path}: tensor {name!r} has a bad shape {shape!r}")
        if not (isinstance(begin, int) and isinstance(end, int) and 0 <= begin <= end <= data_len):
            raise RunError(
                f"{path}: tensor {name!r} has byte range [{begin}, {end}) outside the {data_len} data bytes (truncated file?)"
            )
        np_dtype, width = DTYPES[dtype]
        count = math.prod(shape)
        if end - begin != count * width:
            raise RunError(
                f"{path}: tensor {name!r}: shape {shape} x {dtype} needs {count * width} bytes, the header gives {end - begin}"
            )
        raw = np.frombuffer(data, dtype=np_dtype, count=count, offset=begin).reshape(shape)
        if dtype == "BF16":  # bfloat16 is the top half of a float32: shift it back into place
            tensors[name] = (raw.astype(np.uint32) << 16).view(np.float32)
        else:
            tensors[name] = raw.astype(np.float32)  # a copy in native order, off the file
    return tensors, meta


# ---------------------------------------------------------------------------------------------
# 2. The tokenizer: byte-level BPE, read from a Hugging Face tokenizer.json


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's table: each byte -> a printable character standing for it ('Ġ' for space), so a
    token's bytes can be stored as a JSON string."""
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:  # the 68 unprintable bytes get 256, 257, ...
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


# GPT-2's split pattern, used when the ByteLevel step splits by itself (use_regex = true).
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
# Unicode White_Space, which is what \s means to the Oniguruma regex engine behind tokenizers.
# (Python's \s also takes \x1c-\x1f, so it is spelled out.)
WHITESPACE = r"\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"


def python_regex(pattern: str, text: str) -> re.Pattern:
    """Compile a tokenizers (Oniguruma) split pattern with Python's `re`, for this text.

    `re` has no \\p{L} (letters) or \\p{N} (numbers). They are spelled out as explicit classes:
    ASCII ranges plus every non-ASCII character of `text` whose Unicode category is L* / N*,
    which is exact for this text and cheap. Possessive quantifiers (?+, ++) need Python 3.11; the
    split patterns use them only where greedy matching gives the same result, so older Pythons
    drop them."""
    chars = {c for c in text if ord(c) > 127}
    letters = "a-zA-Z" + "".join(
        re.escape(c) for c in sorted(chars) if unicodedata.category(c)[0] == "L"
    )
    numbers = "0-9" + "".join(
        re.escape(c) for c in sorted(chars) if unicodedata.category(c)[0] == "N"
    )
    out, i, in_class, after_quantifier = [], 0, False, False
    while i < len(pattern):
        c, quantifier = pattern[i], False
        if c == "\\":
            two = pattern[i : i + 2]
            if pattern.startswith(("\\p{L}", "\\p{N}"), i):
                body = letters if pattern[i + 3] == "L" else numbers
                out.append(body if in_class else f"[{body}]")
                i += 5
            elif two in ("\\s", "\\S") and not (in_class and two == "\\S"):
                negate = "^" if two == "\\S" else ""
                out.append(WHITESPACE if in_class else "[" + negate + WHITESPACE + "]")
                i += 2
            elif two in ("\\p", "\\P", "\\S"):
                raise RunError(
                    f"tokenizer split pattern uses {pattern[i : i + 6]!r}, which this runner does not translate"
                )
            else:
                out.append(two)
                i += 2
        else:
            if c == "[" and not in_class:
                in_class = True
            elif c == "]" and in_class:
                in_class = False
            elif not in_class and c in "?*+}" and not (c == "?" and pattern[i - 1 : i] == "("):
                if c == "+" and after_quantifier:  # possessive: '?+', '++', '*+'
                    c = "" if sys.version_info < (3, 11) else c
                else:
                    quantifier = True
            out.append(c)
            i += 1
        after_quantifier = quantifier
    return re.compile("".join(out))


# Tokens that start a document when the file does not say which one does: twofiles', Llama 3's,
# Llama 2's, GPT-2 / SmolLM's (the order twofiles' tokenizer.BOS_NAMES uses).
BOS_NAMES = ["<|bos|>", "<|begin_of_text|>", "<s>", "<|endoftext|>"]


class Tokenizer:
    """Encode text to ids and decode ids to bytes, from a tokenizer.json (a BPE model): either
    byte-level (twofiles' own, GPT-2 / Llama 3 / SmolLM / Qwen2 style: every byte is a symbol) or
    SentencePiece-style (Llama 2 / Mistral: "▁" stands for a space, a character missing from the
    vocabulary falls back to its <0xNN> byte tokens).

    Encoding treats all text as plain text: "<|bos|>" typed in a prompt is those 7 characters,
    never the special token (special ids are placed by code, as twofiles does)."""

    def __init__(self, spec: dict, special: dict | None = None) -> None:
        model = spec.get("model") or {}
        if model.get("type") != "BPE":
            raise RunError(f"tokenizer model is {model.get('type')!r}; this runner knows BPE")
        if spec.get("normalizer") is not None:
            raise RunError(
                f"tokenizer has a normalizer ({spec['normalizer'].get('type')}); this runner has none"
            )
        self.vocab: dict[str, int] = model["vocab"]
        merges = [
            tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m)
            for m in model.get("merges", [])
        ]
        self.ranks = {
            pair: rank for rank, pair in enumerate(merges)
        }  # lower rank = learned earlier
        self.ignore_merges = bool(model.get("ignore_merges"))
        self.byte_fallback = bool(model.get("byte_fallback"))
        self.unk = self.vocab.get(model.get("unk_token") or "")
        self.patterns, self.prepend = self._split_patterns(
            spec.get("pre_tokenizer"), self.byte_fallback
        )
        self.byte_char = bytes_to_unicode()
        added = {t["id"]: t["content"] for t in spec.get("added_tokens", [])}
        size = max(list(self.vocab.values()) + list(added) + [-1]) + 1
        self.token_bytes: list[bytes] = [b""] * size
        char_byte = {c: b for b, c in self.byte_char.items()}
        for tok, i in self.vocab.items():
            if not self.byte_fallback:
                self.token_bytes[i] = bytes(char_byte[c] for c in tok if c in char_byte)
            elif len(tok) == 6 and tok.startswith("<0x") and tok.endswith(">"):
                self.token_bytes[i] = bytes([int(tok[3:5], 16)])
            else:
                self.token_bytes[i] = tok.replace("\u2581", " ").encode("utf-8")
        for i, content in added.items():
            self.token_bytes[i] = content.encode("utf-8")
        # bos/eos: the ids the file's `special` metadata names (imported models), else by name
        special = special or {}
        if special.get("bos_id") is not None:
            self.bos_id = int(special["bos_id"])
        else:
            names = {c: i for i, c in added.items()}
            found = [names[n] for n in BOS_NAMES if n in names]
            if not found:
                raise RunError("tokenizer has no <|bos|> token and the file names no bos_id")
            self.bos_id = found[0]
        self.eos_ids = [int(i) for i in special.get("eos_ids") or [self.bos_id]]
        # Whether a prompt starts with the bos; files older than the flag always added it.
        self.add_bos = special.get("add_bos", True)
        if not isinstance(self.add_bos, bool):
            raise RunError(f"metadata 'special': add_bos = {self.add_bos!r} is not true or false")
        if not all(0 <= i < size for i in [self.bos_id, *self.eos_ids]):
            raise RunError(
                f"bos/eos ids {[self.bos_id, *self.eos_ids]} are outside the vocabulary ({size})"
            )
        self._cache: dict[str, list[int]] = {}

    @staticmethod
    def _split_patterns(pre: dict | None, byte_fallback: bool) -> tuple[list[str], bool]:
        """The regexes that cut text into pieces before BPE (applied in order, each match and each
        gap kept), and whether a "▁" is prepended (SentencePiece's dummy prefix)."""
        spec: dict = pre or {}
        if byte_fallback:  # SentencePiece-style: one Metaspace step, the text is one piece
            if (
                spec.get("type") != "Metaspace"
                or spec.get("split", True)
                or spec.get("replacement") != "\u2581"
            ):
                raise RunError(
                    f"byte-fallback tokenizer with pre-tokenizer {json.dumps(pre)[:120]} is not supported by this runner"
                )
            return [], spec.get("prepend_scheme", "always") != "never"
        steps = spec.get("pretokenizers") if spec.get("type") == "Sequence" else [pre]
        patterns, byte_level = [], False
        for raw_step in steps or []:
            step: dict = raw_step or {}
            kind = step.get("type")
            if kind == "Split" and step.get("behavior") == "Isolated" and not step.get("invert"):
                p = step["pattern"]
                patterns.append(p["Regex"] if "Regex" in p else re.escape(p["String"]))
            elif kind == "Digits":  # numbers (Unicode N*) one by one, or in runs
                patterns.append(r"\p{N}" if step.get("individual_digits") else r"\p{N}+")
            elif kind == "ByteLevel" and not step.get("add_prefix_space"):
                byte_level = True
                if step.get("use_regex", True):
                    patterns.append(GPT2_PATTERN)
            else:
                raise RunError(
                    f"tokenizer pre-tokenizer step {json.dumps(raw_step)[:120]} is not supported by this runner"
                )
        if not byte_level:
            raise RunError(
                "tokenizer is neither byte-level (a ByteLevel step) nor SentencePiece-style (byte fallback)"
            )
        return patterns, False

    def encode(self, text: str) -> list[int]:
        if self.byte_fallback:
            text = text.replace(" ", "\u2581")
            if self.prepend and text and not text.startswith("\u2581"):
                text = "\u2581" + text
            return self._bpe(text) if text else []
        pieces = [text] if text else []
        for (
            pattern
        ) in self.patterns:  # each Split cuts every piece further; matches and gaps both stay
            regex, cut = python_regex(pattern, text), []
            for piece in pieces:
                last = 0
                for m in regex.finditer(piece):
                    cut += [piece[last : m.start()]] if m.start() > last else []
                    cut += [m.group()] if m.end() > m.start() else []
                    last = m.end()
                cut += [piece[last:]] if last < len(piece) else []
            pieces = cut
        ids = []
        for piece in pieces:
            ids += self._bpe("".join(self.byte_char[b] for b in piece.encode("utf-8")))
        return ids

    def _fallback(self, word: str) -> list:
        """SentencePiece-style start symbols: each character, or its <0xNN> byte tokens when the
        vocabulary lacks it (None: unknown, when even those are missing; runs of them fuse)."""
        symbols: list = []
        for c in word:
            pieces = [c] if c in self.vocab else [f"<0x{b:02X}>" for b in c.encode("utf-8")]
            if all(p in self.vocab for p in pieces):
                symbols += pieces
            elif self.unk is not None and (not symbols or symbols[-1] is not None):
                symbols.append(None)
        return symbols

    def _bpe(self, word: str) -> list[int]:
        """Merge adjacent symbols, always the pair that was learned first, until none applies."""
        if word in self._cache:
            return self._cache[word]
        if self.ignore_merges and word in self.vocab:
            return [self.vocab[word]]
        symbols = list(word) if not self.byte_fallback else self._fallback(word)
        while len(symbols) > 1:
            pairs = [(self.ranks.get(pair, math.inf), pair) for pair in itertools.pairwise(symbols)]
            rank, (a, b) = min(pairs, key=lambda rp: rp[0])
            if rank == math.inf:
                break
            merged, i = [], 0
            while i < len(symbols):  # merge every occurrence, left to right
                if i + 1 < len(symbols) and symbols[i] == a and symbols[i + 1] == b:
                    merged.append(a + b)
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            symbols = merged
        try:
            ids = [self.vocab[s] if s is not None else self.unk for s in symbols]
        except KeyError as e:
            raise RunError(f"tokenizer vocabulary lacks the symbol {e.args[0]!r}") from None
        self._cache[word] = ids
        return ids


# ---------------------------------------------------------------------------------------------
# 3. The model: a Llama-style transformer in float32 numpy


CONFIG_DEFAULTS = {
    "n_kv_heads": None,
    "hidden_dim": None,
    "max_seq_len": 2048,
    "rope_theta": 10000.0,
    "norm_eps": 1e-5,
    "tie_embeddings": False,
    "qkv_bias": False,
    "rope_scaling": None,
}


def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    """Scale each vector to root-mean-square 1, then by a learned per-channel weight."""
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * weight


def silu(x: np.ndarray) -> np.ndarray:
    return x * (0.5 * (1.0 + np.tanh(0.5 * x)))  # x * sigmoid(x), without overflow for large |x|


def llama3_scaled(inv_freq: np.ndarray, scaling: dict) -> np.ndarray:
    """Llama 3.1's long-context RoPE: slow frequencies (wavelength above original context /
    low_freq_factor) are divided by `factor`, fast ones (below original / high_freq_factor) kept,
    and the band between blended smoothly."""
    if scaling.get("rope_type") != "llama3":
        raise RunError(f"RoPE scaling {scaling!r} is not supported by this runner (llama3 is)")
    factor, low, high, old_len = (
        float(scaling[k])
        for k in (
            "factor",
            "low_freq_factor",
            "high_freq_factor",
            "original_max_position_embeddings",
        )
    )
    wavelen = np.float32(2 * math.pi) / inv_freq
    scaled = np.where(wavelen > old_len / low, inv_freq / np.float32(factor), inv_freq).astype(
        np.float32
    )
    smooth = ((old_len / wavelen - low) / (high - low)).astype(np.float32)
    smoothed = (1 - smooth) * scaled / np.float32(factor) + smooth * scaled
    medium = (wavelen >= old_len / high) & (wavelen <= old_len / low)
    return np.where(medium, smoothed, scaled).astype(np.float32)


def rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """Rotate pairs (i, i + half) of each head by a position-dependent angle (HF "rotate half")."""
    half = x.shape[-1] // 2
    rotated = np.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos + rotated * sin


class Model:
    def __init__(self, cfg: dict, w: dict[str, np.ndarray]) -> None:
        unknown = [
            k
            for k, v in cfg.items()
            if k not in CONFIG_DEFAULTS
            and k not in ("vocab_size", "dim", "n_layers", "n_heads")
            and v
        ]
        if unknown:
            raise RunError(f"model config uses {unknown}, which this runner does not implement")
        cfg = {**CONFIG_DEFAULTS, **cfg}
        try:
            self.dim, self.n_layers, self.n_heads = (
                int(cfg["dim"]),
                int(cfg["n_layers"]),
                int(cfg["n_heads"]),
            )
        except KeyError as e:
            raise RunError(f"model config lacks {e.args[0]!r}") from None
        self.n_kv_heads = int(cfg["n_kv_heads"] or self.n_heads)
        self.head_dim = self.dim // self.n_heads
        self.max_seq_len, self.eps = int(cfg["max_seq_len"]), float(cfg["norm_eps"])
        self.embed = self._get(w, "model.embed_tokens.weight", (int(cfg["vocab_size"]), self.dim))
        head = (
            self.embed
            if cfg["tie_embeddings"]
            else self._get(w, "lm_head.weight", self.embed.shape)
        )
        self.lm_head = np.ascontiguousarray(head.T)  # [dim, vocab]: weights are stored [out, in]
        kv = self.n_kv_heads * self.head_dim
        hidden = int(
            cfg["hidden_dim"]
            or w.get("model.layers.0.mlp.up_proj.weight", np.zeros((0, 0))).shape[0]
        )
        self.layers = []
        for i in range(self.n_layers):
            p = f"model.layers.{i}."
            L = {
                name: self._get(w, p + name, shape).T.copy()
                for name, shape in [
                    ("self_attn.q_proj.weight", (self.dim, self.dim)),
                    ("self_attn.k_proj.weight", (kv, self.dim)),
                    ("self_attn.v_proj.weight", (kv, self.dim)),
                    ("self_attn.o_proj.weight", (self.dim, self.dim)),
                    ("mlp.gate_proj.weight", (hidden, self.dim)),
                    ("mlp.up_proj.weight", (hidden, self.dim)),
                    ("mlp.down_proj.weight", (self.dim, hidden)),
                ]
            }
            for name in ("input_layernorm.weight", "post_attention_layernorm.weight"):
                L[name] = self._get(w, p + name, (self.dim,))
            for name, n in (("q", self.dim), ("k", kv), ("v", kv)):  # Qwen2-style bias, else zero
                bias = f"self_attn.{name}_proj.bias"
                L[bias] = (
                    self._get(w, p + bias, (n,)) if cfg["qkv_bias"] else np.zeros(n, np.float32)
                )
            self.layers.append(L)
        self.norm = self._get(w, "model.norm.weight", (self.dim,))
        # RoPE tables [max_seq_len, head_dim], computed in float32 the way the trainer does.
        inv_freq = 1.0 / (
            np.float32(cfg["rope_theta"])
            ** (np.arange(0, self.head_dim, 2, dtype=np.float32) / self.head_dim)
        )
        if cfg["rope_scaling"]:
            inv_freq = llama3_scaled(inv_freq, cfg["rope_scaling"])
        angles = np.outer(
            np.arange(self.max_seq_len, dtype=np.float32), inv_freq.astype(np.float32)
        )
        angles = np.concatenate([angles, angles], axis=-1)
        self.cos, self.sin = np.cos(angles), np.sin(angles)
        self.cache_k: list[np.ndarray] = []
        self.cache_v: list[np.ndarray] = []

    @staticmethod
    def _get(w: dict[str, np.ndarray], name: str, shape: tuple) -> np.ndarray:
        if name not in w:
            raise RunError(f"model file lacks tensor {name!r}")
        if tuple(w[name].shape) != tuple(shape):
            raise RunError(
                f"tensor {name!r} has shape {tuple(w[name].shape)}, the config implies {tuple(shape)}"
            )
        return w[name]

    def reset(self, length: int) -> None:
        """Fresh KV cache for `length` positions: [n_kv_heads, length, head_dim] per layer."""
        shape = (self.n_kv_heads, length, self.head_dim)
        self.cache_k = [np.zeros(shape, np.float32) for _ in range(self.n_layers)]
        self.cache_v = [np.zeros(shape, np.float32) for _ in range(self.n_layers)]

    def forward(self, ids: list[int], pos: int, all_logits: bool = False) -> np.ndarray:
        """Logits [vocab] for the token after `ids` (placed at positions pos, pos+1, ...), using and
        filling the KV cache; with all_logits, logits [T, vocab] for every position."""
        T, H, G, hd = len(ids), self.n_heads, self.n_heads // self.n_kv_heads, self.head_dim
        S = pos + T  # keys visible to the last query
        cos, sin = self.cos[pos:S], self.sin[pos:S]
        mask = np.triu(np.ones((T, S), dtype=bool), k=pos + 1)  # query i sees keys j <= pos + i
        x = self.embed[np.asarray(ids)]  # [T, dim]
        for L, K, V in zip(self.layers, self.cache_k, self.cache_v):
            h = rms_norm(x, L["input_layernorm.weight"], self.eps)
            q = (
                (h @ L["self_attn.q_proj.weight"] + L["self_attn.q_proj.bias"])
                .reshape(T, H, hd)
                .transpose(1, 0, 2)
            )  # [H, T, hd]
            k = (
                (h @ L["self_attn.k_proj.weight"] + L["self_attn.k_proj.bias"])
                .reshape(T, -1, hd)
                .transpose(1, 0, 2)
            )  # [Hkv, T, hd]
            v = (
                (h @ L["self_attn.v_proj.weight"] + L["self_attn.v_proj.bias"])
                .reshape(T, -1, hd)
                .transpose(1, 0, 2)
            )
            K[:, pos:S], V[:, pos:S] = rope(k, cos, sin), v
            q = rope(q, cos, sin).reshape(
                -1, G, T, hd
            )  # [Hkv, G, T, hd]: G query heads share a kv head
            scores = (
                q @ K[:, None, :S].transpose(0, 1, 3, 2) / np.float32(math.sqrt(hd))
            )  # [Hkv, G, T, S]
            scores[..., mask] = -np.inf
            scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
            y = (scores / scores.sum(axis=-1, keepdims=True)) @ V[:, None, :S]  # [Hkv, G, T, hd]
            x = (
                x
                + y.reshape(H, T, hd).transpose(1, 0, 2).reshape(T, H * hd)
                @ L["self_attn.o_proj.weight"]
            )
            h = rms_norm(x, L["post_attention_layernorm.weight"], self.eps)
            x = (
                x
                + (silu(h @ L["mlp.gate_proj.weight"]) * (h @ L["mlp.up_proj.weight"]))
                @ L["mlp.down_proj.weight"]
            )
        x = rms_norm(x if all_logits else x[-1], self.norm, self.eps)
        return x @ self.lm_head


# ---------------------------------------------------------------------------------------------
# 4. Sampling and the command line


def sample(logits: np.ndarray, temperature: float, top_p: float, rng: np.random.Generator) -> int:
    """Next token id: the most likely one at temperature 0, else a draw from the filtered die."""
    if temperature == 0:
        return int(np.argmax(logits))
    z = logits.astype(np.float64) / temperature
    p = np.exp(z - z.max())
    p /= p.sum()
    if (
        top_p < 1.0
    ):  # nucleus (Holtzman et al. 2019): drop tokens once the likelier ones reach top_p
        order = np.argsort(-p, kind="stable")
        before = np.cumsum(p[order]) - p[order]
        drop = before >= top_p
        drop[0] = False
        p[order[drop]] = 0.0
        p /= p.sum()
    return int(rng.choice(len(p), p=p))


def load(path: str) -> tuple[Model, Tokenizer]:
    tensors, meta = read_safetensors(path)
    for key in ("config", "tokenizer"):
        if key not in meta:
            raise RunError(
                f"{path}: metadata has no {key!r} field (not a twofiles model.safetensors?)"
            )
    try:
        cfg, spec = json.loads(meta["config"]), json.loads(meta["tokenizer"])
    except json.JSONDecodeError as e:
        raise RunError(f"{path}: metadata is not valid JSON ({e})") from None
    try:
        special = json.loads(meta.get("special") or "{}")  # bos/eos ids of imported models
    except json.JSONDecodeError as e:
        raise RunError(f"{path}: metadata 'special' is not valid JSON ({e})") from None
    if not isinstance(cfg, dict) or not isinstance(spec, dict) or not isinstance(special, dict):
        raise RunError(f"{path}: metadata 'config', 'tokenizer' and 'special' must be JSON objects")
    return Model(cfg, tensors), Tokenizer(spec, special)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description="Generate text from a model.safetensors with numpy alone."
    )
    ap.add_argument("model", help="path to model.safetensors")
    ap.add_argument("--prompt", required=True, help="text to continue ('-' reads stdin)")
    ap.add_argument("--temperature", type=float, default=1.0, help="0 = greedy (default 1)")
    ap.add_argument(
        "--top-p", type=float, default=1.0, help="nucleus sampling threshold (default 1 = off)"
    )
    ap.add_argument("--seed", type=int, default=None, help="sampling seed (default: random)")
    ap.add_argument("--max-tokens", type=int, default=200, help="most new tokens (default 200)")
    ap.add_argument(
        "--json",
        action="store_true",
        help="end with one JSON line: text, tokens, ids, tokens_per_second",
    )
    args = ap.parse_args(argv)
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(errors="replace")  # a console that cannot show a character gets '?'
    try:
        return generate(args)
    except RunError as e:
        print(f"run.py: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("run.py: interrupted", file=sys.stderr)
        return 130


def generate(args: argparse.Namespace) -> int:
    if args.temperature < 0 or not 0 < args.top_p <= 1 or args.max_tokens < 1:
        raise RunError("need --temperature >= 0, 0 < --top-p <= 1 and --max-tokens >= 1")
    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    t0 = time.perf_counter()
    model, tok = load(args.model)
    prompt_ids = tok.encode(prompt)
    if tok.add_bos or not prompt_ids:  # an empty prompt still needs a token to follow
        prompt_ids = [tok.bos_id, *prompt_ids]
    if len(prompt_ids) >= model.max_seq_len:
        raise RunError(
            f"prompt is {len(prompt_ids)} tokens; the model's context is {model.max_seq_len}, which leaves no room to generate"
        )
    steps = min(args.max_tokens, model.max_seq_len - len(prompt_ids))
    seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(4), "little") >> 1
    rng = np.random.default_rng(seed)
    print(
        f"loaded {args.model} in {time.perf_counter() - t0:.2f}s: {model.n_layers} layers, dim {model.dim}, "
        f"context {model.max_seq_len}; prompt {len(prompt_ids)} tokens, seed {seed}",
        file=sys.stderr,
    )

    utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")  # holds back half a character
    text, ids, finish = [], [], "length"
    t1 = time.perf_counter()
    model.reset(len(prompt_ids) + steps - 1)  # the last token drawn is never fed back
    logits = model.forward(prompt_ids, 0)  # prefill: the whole prompt in one pass
    for i in range(steps):
        token = sample(logits, args.temperature, args.top_p, rng)
        ids.append(token)
        if (
            token == tok.bos_id or token in tok.eos_ids
        ):  # a new document would start, or the model says it is done
            finish = "stop"
            break
        piece = utf8.decode(tok.token_bytes[token] if token < len(tok.token_bytes) else b"")
        text.append(piece)
        sys.stdout.write(piece)
        sys.stdout.flush()
        if i + 1 < steps:
            logits = model.forward([token], len(prompt_ids) + i)
    seconds = time.perf_counter() - t1
    text.append(utf8.decode(b"", final=True))
    sys.stdout.write(text[-1] + "\n")
    rate = len(ids) / seconds if seconds > 0 else 0.0
    print(
        f"{len(ids)} tokens in {seconds:.2f}s ({rate:.1f} tok/s), finish: {finish}", file=sys.stderr
    )
    if args.json:
        summary = {
            "text": "".join(text),
            "tokens": len(ids),
            "ids": ids,
            "prompt_tokens": len(prompt_ids),
            "finish": finish,
            "seconds": round(seconds, 4),
            "tokens_per_second": round(rate, 2),
            "seed": seed,
        }
        print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
