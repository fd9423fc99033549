"""Byte-level BPE tokenizer: train, encode, decode, save, load.

What it owns: a thin, typed wrapper over Hugging Face `tokenizers` (Rust, fast, and its
`tokenizer.json` is the format the rest of the ecosystem reads). The recipe is GPT-4's:

- pre-tokenization: the cl100k split regex (letters, 1-3 digit groups, punctuation runs,
  whitespace), then byte-level mapping (every byte is one symbol, so any text round-trips and
  there is never an unknown token);
- BPE merges learned on the training text, on top of the 256 byte symbols;
- the special tokens in `SPECIAL_TOKENS` take the lowest ids, reserved from the start so that a
  base model's vocabulary already has room for chat and tool use.

Plain text never turns into a special token: `encode("<|bos|>")` gives the bytes of that string.
Special ids are inserted by code (data preparation, chat rendering), never by user text, which is
what stops a prompt from forging a turn boundary. `encode(text, allow_special=True)` opts in.

Imported tokenizers (GGUF files, Hugging Face directories; see formats/) use the same class: they
keep their own pre-tokenizer, model and decoder from their JSON, and the importer passes `bos_id`,
`eos_ids` and `add_bos` from the model's metadata. A tokenizer JSON read without that metadata
(e.g. back from a model.safetensors) finds its bos by name, in `BOS_NAMES` order.

`add_bos` says whether a prompt starts with the bos, as the model's own tokenizer settings say:
twofiles' models were trained on documents that start with <|bos|> (yes); an imported model follows
its file (GGUF `tokenizer.ggml.add_bos_token`, a Hugging Face tokenizer.json's post-processor
template), as transformers and llama.cpp do. `encode` never adds it; `engine.encode_prompt` does.

What it leaves to others: normalisation of text (data/corpus.py), chat rendering (chat.py).
"""

from __future__ import annotations

import json
import numbers
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from twofiles.errors import BadInputError, TwofilesError

if TYPE_CHECKING:
    import numpy as np
    from tokenizers import Tokenizer as HFTokenizer

SPECIAL_TOKENS: list[str] = [
    "<|bos|>",  # document start; also the separator between documents in token shards
    "<|pad|>",  # padding for batched inference and ragged batches (never trained on)
    "<|system_start|>",  # opens a system message in a chat
    "<|system_end|>",  # closes a system message
    "<|user_start|>",  # opens a user turn
    "<|user_end|>",  # closes a user turn
    "<|assistant_start|>",  # opens an assistant turn (generation starts after it)
    "<|assistant_end|>",  # closes an assistant turn (generation stops on it)
    "<|tool_call_start|>",  # the assistant starts a tool call (JSON follows)
    "<|tool_call_end|>",  # the tool call is complete: the engine runs it
    "<|tool_result_start|>",  # the tool's output, inserted by the engine
    "<|tool_result_end|>",  # end of the tool's output; the assistant continues
    "<|think_start|>",  # opens "System 2" reasoning the user does not need to see
    "<|think_end|>",  # closes the reasoning
]

# Where no metadata says which token starts a document, the first of these special tokens present
# is the bos: ours, then Llama 3's, Llama 2 / Mistral / TinyLlama's, GPT-2 / SmolLM / Qwen2's.
BOS_NAMES: list[str] = ["<|bos|>", "<|begin_of_text|>", "<s>", "<|endoftext|>"]

# GPT-4 (cl100k_base) pre-tokenizer pattern, as in tiktoken. Possessive quantifiers (?+, ++) are
# supported by Oniguruma, which HF `tokenizers` uses. Digits are split in groups of 1-3 so numbers
# get a regular, learnable segmentation.
SPLIT_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*"""
    r"""|\s*[\r\n]|\s+(?!\S)|\s+"""
)

# Every id below this is either a special token or one of the 256 byte symbols.
MIN_VOCAB_SIZE = len(SPECIAL_TOKENS) + 256


def _byte_decoder() -> dict[str, int]:
    """ByteLevel's printable stand-in character -> the byte it stands for (GPT-2's table)."""
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


def _new_hf(model) -> HFTokenizer:
    from tokenizers import Regex, decoders, pre_tokenizers
    from tokenizers import Tokenizer as HFTokenizer

    tk = HFTokenizer(model)
    tk.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tk.decoder = decoders.ByteLevel()
    return tk


_PROBE = "to be or not to be, 1234: ünïcødé\n\t x"  # letters, digits, spaces, non-ASCII


class Tokenizer:
    """A trained byte-level BPE tokenizer. Build with `train`, `from_json` or `load`."""

    def __init__(
        self,
        hf: HFTokenizer,
        *,
        bos_id: int | None = None,
        eos_ids: Sequence[int] | None = None,
        add_bos: bool = True,
    ) -> None:
        # Two views of the same tokenizer: the default one treats "<|bos|>" in text as plain bytes.
        self._hf_plain = hf
        self._hf_plain.encode_special_tokens = True
        self._hf_special: HFTokenizer | None = None
        added = hf.get_added_tokens_decoder()
        self.special_ids: dict[str, int] = {
            t.content: i for i, t in sorted(added.items()) if t.special
        }
        # Added tokens that are not special (user-defined pieces) are stored as plain text, not in
        # the model's byte-level form: token_bytes must not read them through the byte table.
        self._added_plain: dict[int, str] = {
            i: t.content for i, t in added.items() if not t.special
        }
        if bos_id is None:
            name = next((n for n in BOS_NAMES if n in self.special_ids), None)
            if name is None:
                raise BadInputError(
                    "tokenizer has no <|bos|> special token (not a twofiles tokenizer?)"
                )
            bos_id = self.special_ids[name]
        n = hf.get_vocab_size(with_added_tokens=True)
        if eos_ids is not None and not isinstance(eos_ids, (list, tuple)):
            raise BadInputError(f"eos token ids must be a list of integers, not {eos_ids!r:.40}")
        for i in [bos_id, *(eos_ids or ())]:
            if isinstance(i, bool) or not isinstance(i, numbers.Integral):
                raise BadInputError(f"bos/eos token id {i!r:.40} is not an integer")
        eos_ids = [bos_id] if not eos_ids else [int(i) for i in eos_ids]
        for i in [bos_id, *eos_ids]:
            if not 0 <= int(i) < n:
                raise BadInputError(f"bos/eos token id {i} is outside the vocabulary (size {n})")
        self.bos_id: int = int(bos_id)
        # Tokens that end a generation ("end of turn" / "end of text"); ours: the bos, which is
        # also what separates documents.
        self.eos_ids: list[int] = eos_ids
        # Whether a prompt starts with bos_id (see the module docstring).
        self.add_bos: bool = bool(add_bos)
        self._byte_level: bool | None = None
        self._token_bytes: np.ndarray | None = None

    # ------------------------------------------------------------------ building

    @classmethod
    def train(
        cls,
        texts: Iterable[str],
        vocab_size: int,
        *,
        min_frequency: int = 2,
        show_progress: bool = False,
    ) -> Tokenizer:
        """Learn BPE merges from `texts` (streamed). The result may be smaller than `vocab_size`
        when the text has fewer than that many mergeable pairs of frequency >= `min_frequency`."""
        from tokenizers import models, pre_tokenizers, trainers

        if vocab_size < MIN_VOCAB_SIZE:
            raise TwofilesError(
                f"vocab size {vocab_size} is too small: at least {MIN_VOCAB_SIZE} (256 bytes + {len(SPECIAL_TOKENS)} special tokens)"
            )
        hf = _new_hf(models.BPE())
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=list(SPECIAL_TOKENS),  # the trainer gives these ids 0..13, in order
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes, even unseen ones
            show_progress=show_progress,
        )
        hf.train_from_iterator(iter(texts), trainer=trainer)
        return cls(hf)

    @classmethod
    def from_json(
        cls,
        s: str,
        *,
        bos_id: int | None = None,
        eos_ids: Sequence[int] | None = None,
        add_bos: bool = True,
    ) -> Tokenizer:
        from tokenizers import Tokenizer as HFTokenizer

        try:
            hf = HFTokenizer.from_str(s)
            # A file that parses can still make the Rust side panic on its first text (an index
            # out of range in a hand-edited model): find out here, not mid-generation.
            hf.decode(hf.encode(_PROBE, add_special_tokens=False).ids)
        except BaseException as e:
            # a plain Exception from the Rust side, or pyo3's PanicException (a BaseException)
            if not isinstance(e, Exception) and type(e).__name__ != "PanicException":
                raise
            raise BadInputError(f"not a valid tokenizer.json: {str(e)[:200]}") from None
        return cls(hf, bos_id=bos_id, eos_ids=eos_ids, add_bos=add_bos)

    def to_json(self) -> str:
        return self._hf_plain.to_str()

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write `tokenizer.json` atomically (temp file + rename)."""
        path = Path(path)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(self.to_json())
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Tokenizer:
        """Load a `tokenizer.json`, or the tokenizer stored inside a twofiles `model.safetensors`."""
        path = str(path)
        if not os.path.exists(path):
            raise BadInputError("no such tokenizer file", path=path)
        if os.path.isdir(path):
            for name in ("tokenizer.json", "model.safetensors"):
                if os.path.isfile(os.path.join(path, name)):
                    return cls.load(os.path.join(path, name))
            raise BadInputError(
                "directory holds neither tokenizer.json nor model.safetensors", path=path
            )
        if path.endswith(".safetensors"):
            from twofiles.paths import read_metadata

            meta = read_metadata(path)
            if "tokenizer" not in meta:
                raise BadInputError("model file has no 'tokenizer' metadata field", path=path)
            text = meta["tokenizer"]
        else:
            try:
                with open(path, encoding="utf-8") as f:
                    text = f.read()
            except UnicodeDecodeError:
                raise BadInputError("not a tokenizer.json (not UTF-8 text)", path=path) from None
        try:
            json.loads(text)
        except json.JSONDecodeError as e:
            raise BadInputError(
                f"not a tokenizer.json (invalid JSON: {e})", path=path, line=e.lineno
            ) from None
        try:
            return cls.from_json(text)
        except BadInputError as e:
            raise BadInputError(str(e), path=path) from None

    # ------------------------------------------------------------------ using

    @property
    def vocab_size(self) -> int:
        return self._hf_plain.get_vocab_size(with_added_tokens=True)

    def _hf(self, allow_special: bool) -> HFTokenizer:
        if not allow_special:
            return self._hf_plain
        if self._hf_special is None:
            from tokenizers import Tokenizer as HFTokenizer

            self._hf_special = HFTokenizer.from_str(self._hf_plain.to_str())
            self._hf_special.encode_special_tokens = False
        return self._hf_special

    def encode(self, text: str, *, allow_special: bool = False) -> list[int]:
        """Token ids of `text`; no special tokens are added (a prompt: `engine.encode_prompt`)."""
        return self._hf(allow_special).encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str], *, allow_special: bool = False) -> list[list[int]]:
        """Encode many texts in parallel (Rust threads): use this for corpora."""
        hf = self._hf(allow_special)
        enc = getattr(
            hf, "encode_batch_fast", hf.encode_batch
        )  # _fast skips offsets (tokenizers>=0.20)
        return [e.ids for e in enc(list(texts), add_special_tokens=False)]

    def decode(self, ids: Iterable[int], *, skip_special: bool = False) -> str:
        """Text of `ids`. Special tokens appear as their names unless `skip_special`. A sequence
        cut inside a multi-byte character decodes to U+FFFD for the partial bytes."""
        return self._hf_plain.decode([int(i) for i in ids], skip_special_tokens=skip_special)

    def id_to_token(self, id: int) -> str:
        """The raw vocabulary string of `id` (ByteLevel form: 'Ġ' stands for a space byte)."""
        tok = self._hf_plain.id_to_token(int(id))
        if tok is None:
            raise IndexError(f"token id {id} is outside the vocabulary (size {self.vocab_size})")
        return tok

    def token_to_bytes(self, id: int) -> bytes:
        """The bytes token `id` stands for (b'' for special tokens)."""
        id = int(id)
        if id in self._special_id_set:
            return b""
        if id in self._added_plain:
            return self._added_plain[id].encode("utf-8")
        return self._piece_bytes(self.id_to_token(id))

    def _piece_bytes(self, tok: str) -> bytes:
        if self._is_byte_level():
            table = _BYTE_DECODER
            return bytes(table[c] for c in tok)
        # SentencePiece-style vocabulary (imported): "▁" is a space, "<0x0A>" a byte-fallback byte.
        if len(tok) == 6 and tok.startswith("<0x") and tok.endswith(">"):
            try:
                return bytes([int(tok[3:5], 16)])
            except ValueError:
                pass
        return tok.replace("\u2581", " ").encode("utf-8")

    def _is_byte_level(self) -> bool:
        """True when the vocabulary is in ByteLevel form (ours, GPT-2 / Llama 3 style imports)."""
        if self._byte_level is None:
            decoder = json.loads(self._hf_plain.to_str()).get("decoder") or {}
            self._byte_level = "ByteLevel" in json.dumps(decoder)
        return self._byte_level

    @property
    def _special_id_set(self) -> set[int]:
        return set(self.special_ids.values())

    def token_bytes(self) -> np.ndarray:
        """int32 array [vocab_size]: the UTF-8 byte length of each token, 0 for special tokens.
        With ByteLevel each character of a token string stands for exactly one byte."""
        if self._token_bytes is None:
            import numpy as np

            out = np.zeros(self.vocab_size, dtype=np.int32)
            specials = self._special_id_set
            byte_level = self._is_byte_level()
            for tok, i in self._hf_plain.get_vocab(with_added_tokens=True).items():
                if i in specials:
                    continue
                if i in self._added_plain:
                    out[i] = len(self._added_plain[i].encode("utf-8"))
                else:
                    out[i] = len(tok) if byte_level else len(self._piece_bytes(tok))
            self._token_bytes = out
        return self._token_bytes.copy()

    def pieces(self, text: str) -> list[tuple[int, str]]:
        """(id, readable piece) for each token of `text`. A piece that is not whole UTF-8 (part of
        an emoji, say) is shown with backslash escapes, e.g. '\\xf0\\x9f'."""
        out = []
        specials = {v: k for k, v in self.special_ids.items()}
        for i in self.encode(text):
            if i in specials:
                out.append((i, specials[i]))
            else:
                out.append((i, self.token_to_bytes(i).decode("utf-8", errors="backslashreplace")))
        return out

    def __repr__(self) -> str:
        return f"Tokenizer(vocab_size={self.vocab_size}, specials={len(self.special_ids)})"


_BYTE_DECODER = _byte_decoder()
