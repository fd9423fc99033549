"""Pretraining is compression: a model's next-token probabilities drive the arithmetic coder.

What it owns: the text -> tokens -> bits pipeline and its exact inverse. The file's bytes are
decoded as UTF-8 and tokenized; the tokenizer must give the very text back (checked before any
coding, refused otherwise). The tokens are cut into blocks of `block_len - 1`, each coded after
a fresh <bos>, and the blocks go through the model in lockstep batches: one decode step (the KV
cache) for every block of a batch at once, position by position. At each step the logits become
integer cumulative frequencies (`cumulative_frequencies`, a pure function of the logits) and the
coder codes (or decodes) each block's token under them, block after block, in one bit stream.

Determinism is the whole difficulty: decompression must see exactly the logits compression saw,
to the last bit. So both directions run one function, `_lockstep`, with the same batches, the
same steps, the same thread count, dtype and device; compressing never takes the shortcut of one
parallel forward pass over the known text (its floats differ from step-by-step decoding in the
last bits, measured ~1e-5 on the speedrun model). What cannot be pinned (the torch build, the CPU's
kernels) is recorded and checked; the original's sha256 catches anything that still slips.

What it leaves to others: the coder (coder.py), the file's layout (container.py), loading the
model (formats), reading and writing files (the CLI).
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from twofiles.artifact import weights_sha256
from twofiles.compression import container
from twofiles.compression.coder import MAX_TOTAL, Decoder, Encoder
from twofiles.errors import BadInputError, TwofilesError
from twofiles.runtime import cpu_identity

if TYPE_CHECKING:
    from twofiles.artifact import LoadedModel
    from twofiles.model import Transformer
    from twofiles.tokenizer import Tokenizer

# Frequencies are 1 + floor(p * FREQ_SCALE): every token keeps a frequency >= 1 (so nothing is
# uncodable) and the floor costs at most vocab / FREQ_SCALE of the probability mass (a 49k
# vocabulary: 1e-4, i.e. ~1e-4 bits per token). The total stays <= vocab + FREQ_SCALE <= MAX_TOTAL.
FREQ_SCALE = 1 << 29
MAX_VOCAB = MAX_TOTAL - FREQ_SCALE - 1024  # leaves room for a softmax that sums to 1 + eps
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
DEFAULT_BLOCK_LEN = 512  # tokens per block (bos included), capped by the model's context
DEFAULT_BATCH_SIZE = 32  # blocks per lockstep batch: the speed lever, one weight read per step


@dataclass(frozen=True)
class Settings:
    """Everything that moves the logits' floating point, fixed by compression and recorded."""

    block_len: int  # tokens per block, its leading <bos> included (<= the model's context)
    batch_size: int  # blocks decoded together in lockstep (changes the matmul shapes)
    threads: int  # torch's CPU threads (changes how reductions are split)
    dtype: str  # "fp32" or "bf16": the weights and activations while coding
    device: str  # the device type that computed the logits ("cpu", "cuda", ...)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], path: str) -> Settings:
        names = {f.name: f.type for f in fields(cls)}
        if set(d) != set(names):
            raise BadInputError(f"damaged header: settings {sorted(d)}", path=path)
        for k in ("block_len", "batch_size", "threads"):
            if isinstance(d[k], bool) or not isinstance(d[k], int) or d[k] < 1:
                raise BadInputError(f"damaged header: settings.{k} = {d[k]!r}", path=path)
        if d["dtype"] not in DTYPES or not isinstance(d["device"], str):
            raise BadInputError(f"damaged header: settings {d}", path=path)
        if d["block_len"] < 2:
            raise BadInputError("damaged header: settings.block_len < 2", path=path)
        return cls(**d)


@dataclass
class Compressed:
    """The compressed file and what compressing it measured."""

    data: bytes  # the whole file (container.pack)
    header: dict[str, Any]
    tokens: int
    blocks: int
    ideal_bits: float  # sum of -log2(quantized probability) of the coded tokens
    seconds: float  # the coding itself (model steps + coder), not the model load


def default_settings(
    model: Transformer,
    *,
    block_len: int | None = None,
    batch_size: int | None = None,
    threads: int | None = None,
    dtype: str = "fp32",
) -> Settings:
    """The settings a compression uses: the flags given, else the defaults (block_len: the
    model's context, at most DEFAULT_BLOCK_LEN)."""
    ctx = model.config.max_seq_len
    if block_len is None:
        block_len = min(ctx, DEFAULT_BLOCK_LEN)
    if not 2 <= block_len <= ctx:
        raise TwofilesError(f"--block-len {block_len}: must be 2..{ctx} (the model's context)")
    batch_size = DEFAULT_BATCH_SIZE if batch_size is None else batch_size
    if batch_size < 1:
        raise TwofilesError(f"--batch-size {batch_size}: must be >= 1")
    threads = torch.get_num_threads() if threads is None else threads
    if threads < 1:
        raise TwofilesError(f"--threads {threads}: must be >= 1")
    if dtype not in DTYPES:
        raise TwofilesError(f"--dtype {dtype}: expected one of {', '.join(DTYPES)}")
    device = model.rope_cos.device.type
    return Settings(block_len, batch_size, threads, dtype, device)


def model_identity(loaded: LoadedModel, name: str = "") -> dict[str, Any]:
    """The model by content: sha256 of its weights (artifact.weights_sha256) and of its tokenizer (its JSON and bos). Taken before coding casts anything."""
    tok = loaded.tokenizer
    th = hashlib.sha256(f"{tok.to_json()}\n{tok.bos_id}".encode())
    return {
        "weights_sha256": weights_sha256(loaded.model),
        "tokenizer_sha256": th.hexdigest(),
        "vocab_size": loaded.model.config.vocab_size,
        "params": sum(p.numel() for p in loaded.model.parameters()),
        "name": name,
    }


def environment(device: str) -> dict[str, str]:
    """What else changes the floats: the torch build and the kernels the processor gets."""
    if device.startswith("cuda"):
        kind = torch.cuda.get_device_name()
    else:
        kind = cpu_identity()[0]
    capability = torch.backends.cpu.get_cpu_capability() if device == "cpu" else device
    return {"torch": torch.__version__, "cpu_capability": capability, "cpu": kind}


def cumulative_frequencies(logits: torch.Tensor) -> torch.Tensor:
    """Integer cumulative frequencies [B, V + 1] (int64; cum[:, 0] = 0, cum[:, -1] = the row's
    total) from logits [B, V]: 1 + floor(softmax * FREQ_SCALE) per token, in float64. A pure
    function of the logits: equal logits give equal tables."""
    if logits.shape[-1] > MAX_VOCAB:
        raise TwofilesError(f"vocabulary of {logits.shape[-1]} tokens is too large to code")
    p = torch.softmax(logits.double(), dim=-1)
    if torch.isnan(p).any():
        raise TwofilesError("the model produced NaN logits: nothing can be coded with them")
    freqs = torch.floor(p * FREQ_SCALE).long() + 1
    cum = torch.zeros(logits.shape[0], logits.shape[-1] + 1, dtype=torch.long, device=p.device)
    torch.cumsum(freqs, dim=-1, out=cum[:, 1:])
    return cum


def exact_tokens(tok: Tokenizer, data: bytes, path: str) -> list[int]:
    """The file's tokens, or a BadInputError: bytes that are not UTF-8, or text the tokenizer
    does not give back exactly (decode(encode(text)) != text)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BadInputError(
            f"byte {e.start} is not UTF-8: the model's tokenizer reads text, so only UTF-8 "
            "files can be compressed",
            path=path,
        ) from None
    ids = tok.encode(text)
    back = tok.decode(ids)
    if back != text:
        at = next(
            (i for i, (a, b) in enumerate(zip(text, back)) if a != b), min(len(text), len(back))
        )
        raise BadInputError(
            f"the tokenizer does not give this text back exactly (first difference at "
            f"character {at}: {text[at : at + 10]!r} became {back[at : at + 10]!r}), so it "
            "cannot be compressed losslessly with this model",
            path=path,
        )
    return ids


def prepare(loaded: LoadedModel, settings: Settings) -> Transformer:
    """The model set up as `settings` say (threads, dtype), for inference, in place."""
    torch.set_num_threads(settings.threads)
    model = loaded.model.eval()
    dtype = DTYPES[settings.dtype]
    if model.model.norm.weight.dtype != dtype:
        cos, sin = model.rope_cos, model.rope_sin  # RoPE tables stay fp32 (each step casts rows)
        model.to(dtype)
        model.rope_cos, model.rope_sin = cos, sin
    return model


@torch.no_grad()
def _lockstep(
    model: Transformer,
    n_tokens: int,
    settings: Settings,
    bos_id: int,
    code: Callable[[np.ndarray, int], int],
    progress: bool,
) -> list[int]:
    """Run the model over `n_tokens` tokens in blocks and lockstep batches, calling `code(cum,
    i)` for token i with its cumulative frequencies [V + 1]; `code` returns the token (the known
    one when compressing, the decoded one when decompressing), which is fed back. The one
    computation both directions share: nothing here may depend on which direction runs."""
    from tqdm.auto import tqdm

    per_block = settings.block_len - 1
    n_blocks = -(-n_tokens // per_block)
    device = model.rope_cos.device
    out = [0] * n_tokens
    bar = tqdm(total=n_tokens, unit="tok", desc="coding", disable=not progress, leave=False)
    for first in range(0, n_blocks, settings.batch_size):
        starts = [b * per_block for b in range(first, min(first + settings.batch_size, n_blocks))]
        lens = [min(per_block, n_tokens - s) for s in starts]
        rows, steps = len(starts), max(lens)
        caches = model.new_caches(rows, steps)
        fed = np.full((rows, 1), bos_id, dtype=np.int64)
        for t in range(steps):
            x = torch.from_numpy(fed).to(device)
            logits = model(x, caches=caches, pos=t)[:, -1]  # [rows, V]
            cum = cumulative_frequencies(logits).cpu().numpy()
            live = 0
            for r in range(rows):
                if t < lens[r]:  # a finished (shorter) block is fed <bos> and not coded
                    tok = code(cum[r], starts[r] + t)
                    out[starts[r] + t] = tok
                    fed[r, 0] = tok
                    live += 1
                else:
                    fed[r, 0] = bos_id
            bar.update(live)
    bar.close()
    return out


def compress(
    loaded: LoadedModel,
    data: bytes,
    settings: Settings,
    *,
    path: str = "FILE",
    name: str = "",
    progress: bool = False,
) -> Compressed:
    """Compress `data` (the bytes of the file at `path`, named in errors) with `loaded`'s model.
    The model is identified, then set up as `settings` say (in place)."""
    ids = exact_tokens(loaded.tokenizer, data, path)
    identity = model_identity(loaded, name)
    model = prepare(loaded, settings)
    enc = Encoder()
    ideal = 0.0

    def code(cum: np.ndarray, i: int) -> int:
        nonlocal ideal
        s = ids[i]
        lo, hi, total = int(cum[s]), int(cum[s + 1]), int(cum[-1])
        enc.encode(lo, hi, total)
        ideal += math.log2(total / (hi - lo))
        return s

    t0 = time.perf_counter()
    _lockstep(model, len(ids), settings, loaded.tokenizer.bos_id, code, progress)
    payload = enc.finish()
    seconds = time.perf_counter() - t0
    header = {
        "model": identity,
        "settings": settings.to_dict(),
        "environment": environment(settings.device),
        "original": {
            "bytes": len(data),
            "tokens": len(ids),
            "sha256": hashlib.sha256(data).hexdigest(),
        },
        "payload": {"bytes": len(payload), "sha256": hashlib.sha256(payload).hexdigest()},
    }
    blob = container.pack(header, payload)
    n_blocks = -(-len(ids) // (settings.block_len - 1))
    return Compressed(blob, header, len(ids), n_blocks, ideal, seconds)


def read_header(blob: bytes, path: str) -> tuple[dict[str, Any], Settings, bytes]:
    """(header, settings, payload) of a compressed file, validated (container.unpack)."""
    header, payload = container.unpack(blob, path)
    settings = Settings.from_dict(header["settings"], path)
    orig = header["original"]
    for k in ("bytes", "tokens"):
        if isinstance(orig.get(k), bool) or not isinstance(orig.get(k), int) or orig[k] < 0:
            raise BadInputError(f"damaged header: original.{k} = {orig.get(k)!r}", path=path)
    if orig["tokens"] > orig["bytes"]:  # every token of text stands for at least one byte
        raise BadInputError("damaged header: more tokens than bytes", path=path)
    return header, settings, payload


def check_settings(settings: Settings, given: dict[str, Any], path: str) -> None:
    """Refuse a setting given for decompression that differs from the recorded one: the logits
    would differ, and so would every token after the first difference."""
    for key, value in given.items():
        if value is not None and value != getattr(settings, key):
            raise BadInputError(
                f"the file was compressed with {key} = {getattr(settings, key)!r}, not {value!r}: "
                "decompression must repeat the same computation (leave the flag out to use the "
                "recorded value)",
                path=path,
            )


def check_environment(header: dict[str, Any], settings: Settings, path: str) -> list[str]:
    """The differences between the recorded environment and this one (empty: the same)."""
    here = environment(settings.device)
    then = header["environment"]
    return [f"{k} {then.get(k)!r} there, {here[k]!r} here" for k in here if then.get(k) != here[k]]


def check_model(header: dict[str, Any], identity: dict[str, Any], path: str) -> None:
    """Refuse another model than the one the file was compressed with (by content)."""
    then = header["model"]
    for key, what in (("weights_sha256", "weights"), ("tokenizer_sha256", "tokenizer")):
        if then.get(key) != identity[key]:
            raise BadInputError(
                f"compressed with another model: its {what} sha256 is "
                f"{str(then.get(key))[:12]}... ({then.get('name') or 'unnamed'}, "
                f"{then.get('params', '?')} parameters), this model's is {identity[key][:12]}...",
                path=path,
            )


def decompress(
    loaded: LoadedModel,
    header: dict[str, Any],
    settings: Settings,
    payload: bytes,
    *,
    path: str = "FILE",
    progress: bool = False,
) -> tuple[bytes, float]:
    """(the original bytes, seconds of decoding) from a read_header'ed file, with the model it
    was compressed with (checked). A result that does not match the recorded sha256 is refused."""
    check_model(header, model_identity(loaded), path)
    model = prepare(loaded, settings)
    dec = Decoder(payload)

    def code(cum: np.ndarray, i: int) -> int:
        t = dec.target(int(cum[-1]))
        s = int(np.searchsorted(cum, t, side="right")) - 1
        dec.consume(int(cum[s]), int(cum[s + 1]), int(cum[-1]))
        return s

    t0 = time.perf_counter()
    ids = _lockstep(
        model, header["original"]["tokens"], settings, loaded.tokenizer.bos_id, code, progress
    )
    seconds = time.perf_counter() - t0
    data = loaded.tokenizer.decode(ids).encode("utf-8")
    orig = header["original"]
    if len(data) != orig["bytes"] or hashlib.sha256(data).hexdigest() != orig["sha256"]:
        raise BadInputError(
            "the decompressed bytes do not match the original's sha256: the logits differed from "
            "compression's (another torch build, CPU kind or thread count) or the file was altered",
            path=path,
        )
    return data, seconds


__all__ = [
    "FREQ_SCALE",
    "Compressed",
    "Settings",
    "check_environment",
    "check_model",
    "check_settings",
    "compress",
    "cumulative_frequencies",
    "decompress",
    "default_settings",
    "environment",
    "exact_tokens",
    "model_identity",
    "read_header",
]
