"""GGUF import: a llama.cpp model file becomes a twofiles LoadedModel.

What it owns: reading GGUF metadata and tensors (our own bounds-checked parser over an mmap: a
malformed file is a BadInputError naming it, never a crash, a hang or a huge allocation; 50x
faster than `gguf.GGUFReader`'s per-string Python loop on a 49k-token vocabulary), turning the metadata into a ModelConfig, the GGUF tensor names into Hugging Face
Llama names, the quantized blocks into float32 (our own numpy code, checked against
`gguf.quants.dequantize` in the tests), and the vocabulary + merges into a `tokenizers` JSON.

Supported: architectures `llama` and `qwen2`; tensor types F32, F16, BF16, Q8_0, Q4_0, Q4_1;
byte-level BPE vocabularies (`tokenizer.ggml.model == "gpt2"`: Llama 3, SmolLM, Qwen2, ...) and
SentencePiece ones (`"llama"`: Llama 2, TinyLlama, Mistral), both rebuilt by gguf_vocab.py;
Llama 3 RoPE scaling (the `rope_freqs` tensor llama.cpp's converter writes).
Refused with a message: other quant types (K-quants, IQ*), other RoPE scaling (linear, YaRN).

Footgun: llama.cpp's converter permutes the rows of q/k weights of `llama` models from HF's
rotate-half RoPE layout into the interleaved one ggml uses:
    w.reshape(n_head, 2, hd // 2, dim).swapaxes(1, 2)
`_unpermute` undoes it. `qwen2` GGUFs use NEOX (rotate-half) RoPE and are stored unpermuted.
"""

from __future__ import annotations

import mmap
import os
from typing import TYPE_CHECKING, Any

import numpy as np

from twofiles.errors import BadInputError
from twofiles.formats.gguf_vocab import bpe_tokenizer_json, spm_tokenizer_json

if TYPE_CHECKING:
    import torch

    from twofiles.artifact import LoadedModel

MAGIC = b"GGUF"
# Sanity limits checked before the reader walks the file: a flipped byte in a count must give a
# clear error, not a loop over 2**60 entries.
MAX_TENSORS = 1 << 16
MAX_KV = 1 << 16
MAX_DIM = 1 << 20  # any one of width / inner width / vocab / context
MAX_LAYERS = 1024

# ggml type ids (ggml.h); block size in elements, bytes per block
F32, F16, Q4_0, Q4_1, Q8_0, BF16 = 0, 1, 2, 3, 8, 30
BLOCKS: dict[int, tuple[int, int]] = {
    F32: (1, 4),
    F16: (1, 2),
    BF16: (1, 2),
    Q8_0: (32, 34),
    Q4_0: (32, 18),
    Q4_1: (32, 20),
}
TYPE_NAMES = {F32: "F32", F16: "F16", BF16: "BF16", Q8_0: "Q8_0", Q4_0: "Q4_0", Q4_1: "Q4_1"}

# GGUF tensor name (after "blk.N.") -> HF Llama name (after "model.layers.N.")
LAYER_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.bias": "self_attn.v_proj.bias",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
TOP_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}

# ---------------------------------------------------------------------------- dequantization


def dequantize(data: np.ndarray, ggml_type: int, n_elements: int) -> np.ndarray:
    """float32 [n_elements] from the raw bytes of one tensor (any dtype view of them)."""
    raw = np.ascontiguousarray(data).reshape(-1).view(np.uint8)
    if ggml_type not in BLOCKS:
        raise ValueError(f"unsupported tensor type {ggml_type}")
    block, size = BLOCKS[ggml_type]
    if n_elements % block or raw.size != n_elements // block * size:
        raise ValueError(
            f"{raw.size} bytes do not hold {n_elements} elements of type {TYPE_NAMES[ggml_type]}"
        )
    if ggml_type == F32:
        return raw.view("<f4").astype(np.float32)
    if ggml_type == F16:
        return raw.view("<f2").astype(np.float32)
    if ggml_type == BF16:  # the top 16 bits of a float32
        return (raw.view("<u2").astype(np.uint32) << 16).view(np.float32)
    blocks = raw.reshape(-1, size)  # [n_blocks, bytes per block]
    d = blocks[:, 0:2].copy().view("<f2").astype(np.float32)  # [n_blocks, 1] scale
    if ggml_type == Q8_0:  # fp16 d, 32 x int8: x = q * d
        return (blocks[:, 2:].view(np.int8).astype(np.float32) * d).reshape(-1)
    qs = blocks[:, 4:] if ggml_type == Q4_1 else blocks[:, 2:]  # 16 bytes, two 4-bit values each
    # low nibbles are elements 0..15 of the block, high nibbles 16..31
    q = np.concatenate([qs & 0x0F, qs >> 4], axis=1).astype(np.float32)  # [n_blocks, 32]
    if ggml_type == Q4_0:  # x = (q - 8) * d
        return ((q - 8.0) * d).reshape(-1)
    m = blocks[:, 2:4].copy().view("<f2").astype(np.float32)  # Q4_1: x = q * d + m
    return (q * d + m).reshape(-1)


def _unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's q/k row permutation (interleaved RoPE pairs -> HF rotate-half halves)."""
    rows = w.shape[0]
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


# ---------------------------------------------------------------------------- reading


class _Parser:
    """A bounds-checked reader of GGUF's little-endian header, metadata and tensor infos. Every
    length is checked against the bytes left before anything is allocated or looped over."""

    SCALARS = {
        0: "<u1",
        1: "<i1",
        2: "<u2",
        3: "<i2",
        4: "<u4",
        5: "<i4",
        6: "<f4",
        7: "<u1",
        10: "<u8",
        11: "<i8",
        12: "<f8",
    }
    STRING, ARRAY, BOOL = 8, 9, 7

    def __init__(self, buf, path: str) -> None:
        self.buf, self.path, self.pos = buf, path, 0

    def fail(self, what: str) -> BadInputError:
        return BadInputError(f"malformed GGUF at byte {self.pos}: {what}", path=self.path)

    def take(self, n: int) -> int:
        if n < 0 or self.pos + n > len(self.buf):
            raise self.fail(f"needs {n} bytes, {len(self.buf) - self.pos} left (truncated?)")
        at, self.pos = self.pos, self.pos + n
        return at

    def u32(self) -> int:
        return int.from_bytes(self.buf[self.take(4) : self.pos], "little")

    def u64(self) -> int:
        return int.from_bytes(self.buf[self.take(8) : self.pos], "little")

    def string(self) -> str:
        n = self.u64()
        at = self.take(n)
        try:
            return bytes(self.buf[at : self.pos]).decode("utf-8")
        except UnicodeDecodeError:
            raise self.fail("a string is not UTF-8") from None

    def value(self, vtype: int, depth: int = 0) -> Any:
        if vtype == self.STRING:
            return self.string()
        if vtype in self.SCALARS:
            dt = np.dtype(self.SCALARS[vtype])
            v = np.frombuffer(self.buf, dt, 1, self.take(dt.itemsize))[0].item()
            return bool(v) if vtype == self.BOOL else v
        if vtype == self.ARRAY and depth == 0:
            itype, n = self.u32(), self.u64()
            if itype in self.SCALARS:
                dt = np.dtype(self.SCALARS[itype])
                if n > (len(self.buf) - self.pos) // dt.itemsize:
                    raise self.fail(f"array of {n} items runs past the end of the file")
                out = np.frombuffer(self.buf, dt, n, self.take(n * dt.itemsize)).tolist()
                return [bool(x) for x in out] if itype == self.BOOL else out
            if itype == self.STRING:
                if (
                    n > (len(self.buf) - self.pos) // 8
                ):  # each string takes at least its 8-byte length
                    raise self.fail(f"array of {n} strings runs past the end of the file")
                return [self.string() for _ in range(n)]
            raise self.fail(f"array of value type {itype} is not supported")
        raise self.fail(f"unknown value type {vtype}")


def _read(path: str, buf) -> tuple[dict[str, Any], list[tuple[str, int, tuple[int, ...], int]]]:
    """(metadata, [(tensor name, ggml type, numpy-order shape, absolute data offset)])."""
    p = _Parser(buf, path)
    if len(buf) < 24:
        raise BadInputError("file too short to be GGUF", path=path)
    if bytes(buf[:4]) != MAGIC:
        raise BadInputError("not a GGUF file (bad magic)", path=path)
    p.pos = 4
    version = p.u32()
    if version not in (2, 3):
        raise BadInputError(f"unsupported GGUF version {version} (2 and 3 are)", path=path)
    n_tensors, n_kv = p.u64(), p.u64()
    # every tensor info and key/value pair takes at least 8 bytes of the file
    if n_tensors > min(MAX_TENSORS, len(buf) // 8) or n_kv > min(MAX_KV, len(buf) // 8):
        raise BadInputError(
            f"absurd counts in the header: {n_tensors} tensors, {n_kv} metadata keys", path=path
        )
    meta: dict[str, Any] = {}
    for _ in range(n_kv):
        key = p.string()
        if key in meta:
            raise p.fail(f"metadata key '{key}' appears twice")
        meta[key] = p.value(p.u32())
    infos = []
    for _ in range(n_tensors):
        name = p.string()
        n_dims = p.u32()
        if not 1 <= n_dims <= 4:
            raise p.fail(f"tensor '{name}' has {n_dims} dimensions")
        dims = [p.u64() for _ in range(n_dims)]
        if any(not 1 <= d <= MAX_DIM * 4 for d in dims):
            raise p.fail(f"tensor '{name}' has absurd dimensions {dims}")
        infos.append((name, p.u32(), tuple(reversed(dims)), p.u64()))
    align = meta.get("general.alignment", 32)
    if not isinstance(align, int) or align <= 0 or align & (align - 1):
        raise BadInputError(f"general.alignment {align!r} is not a power of two", path=path)
    data_start = -(-p.pos // align) * align
    return meta, [(name, t, shape, data_start + off) for name, t, shape, off in infos]


class _Meta:
    def __init__(self, meta: dict[str, Any], path: str) -> None:
        self.meta, self.path = meta, path

    def get(self, key: str, default: Any = None, *, required: bool = False) -> Any:
        if key not in self.meta:
            if required:
                raise BadInputError(f"metadata key '{key}' is missing", path=self.path)
            return default
        return self.meta[key]

    def int(self, key: str, default: int | None = None, *, lo: int = 1, hi: int = MAX_DIM) -> int:
        v = self.get(key, default, required=default is None)
        if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
            raise BadInputError(
                f"metadata key '{key}' = {v!r} is not an integer in [{lo}, {hi}]", path=self.path
            )
        return int(v)

    def float(self, key: str, default: float) -> float:
        v = self.get(key, default)
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not np.isfinite(v) or v <= 0:
            raise BadInputError(
                f"metadata key '{key}' = {v!r} is not a positive number", path=self.path
            )
        # GGUF stores float32: 1e-5 comes back as 9.99999975e-06; take the shortest decimal that
        # is the same float32, which is what the converter was given.
        return float(str(np.float32(v)))


def _config(meta: _Meta, vocab_size: int):
    from twofiles.model import ModelConfig

    arch = meta.get("general.architecture", required=True)
    if arch not in ("llama", "qwen2"):
        raise BadInputError(
            f"architecture '{arch}' is not supported (llama and qwen2 are)", path=meta.path
        )
    scaling = meta.get(f"{arch}.rope.scaling.type", "none")
    linear = meta.get(f"{arch}.rope.scaling.factor", 0.0)  # llama.cpp: 0 = unset, 1 = no scaling
    if scaling not in ("none", None) or linear not in (0.0, 1.0):
        raise BadInputError(
            f"RoPE scaling '{scaling}' is not supported (Llama 3's rope_freqs is)", path=meta.path
        )
    dim = meta.int(f"{arch}.embedding_length")
    n_heads = meta.int(f"{arch}.attention.head_count", hi=dim)
    n_kv = meta.int(f"{arch}.attention.head_count_kv", n_heads, hi=n_heads)
    rope_dim = meta.int(f"{arch}.rope.dimension_count", dim // n_heads)
    if (
        rope_dim != dim // n_heads
        or meta.int(f"{arch}.attention.key_length", dim // n_heads) != dim // n_heads
    ):
        raise BadInputError(
            "head dimension other than width / heads (or partial RoPE) is not supported",
            path=meta.path,
        )
    try:
        return arch, ModelConfig(
            vocab_size=vocab_size,
            dim=dim,
            n_layers=meta.int(f"{arch}.block_count", hi=MAX_LAYERS),
            n_heads=n_heads,
            n_kv_heads=n_kv,
            hidden_dim=meta.int(f"{arch}.feed_forward_length"),
            max_seq_len=meta.int(f"{arch}.context_length", 2048),
            rope_theta=meta.float(f"{arch}.rope.freq_base", 10000.0),
            norm_eps=meta.float(f"{arch}.attention.layer_norm_rms_epsilon", 1e-5),
            tie_embeddings=False,  # decided by the presence of output.weight
            qkv_bias=False,  # decided by the presence of attn_q.bias
        )
    except ValueError as e:
        raise BadInputError(f"model shape is not usable: {e}", path=meta.path) from None


LLAMA3_CONTEXT = 8192  # Llama 3's original context; llama.cpp's converter does not store it


def llama3_scaling(
    factors: np.ndarray, head_dim: int, theta: float, orig_context: int, path: str = ""
) -> dict[str, Any]:
    """Llama 3 `rope_scaling` from the per-frequency divisors llama.cpp stores as rope_freqs.

    The divisors are 1 for short wavelengths, `factor` for long ones and 1 / ((1 - s) / factor + s)
    between, where s = (orig / wavelength - low) / (high - low) is linear in 1 / wavelength: two
    points of that band give low and high (the file does not store them; with fewer, Llama 3.1's
    1 and 4). The result must reproduce every divisor, or the file is refused."""
    from twofiles.model import check_rope_scaling, rope_inv_freq

    if not np.all(np.isfinite(factors)) or factors.min() < 1 - 1e-6:
        raise BadInputError(
            "rope_freqs.weight holds values below 1 or not finite (not Llama 3 scaling)", path=path
        )
    factor = float(factors.max())
    base = rope_inv_freq(head_dim, theta).double().numpy()
    x = orig_context * base / (2 * np.pi)  # orig / wavelength
    band = (factors > 1 + 1e-4) & (factors < factor * (1 - 1e-4))
    low, high = 1.0, 4.0
    if band.sum() >= 2 and factor > 1:
        s = (1 / factors[band] - 1 / factor) / (1 - 1 / factor)
        slope, low = np.polyfit(s, x[band], 1)  # x = low + s * (high - low)
        low, high = float(round(low, 4)), float(round(low + slope, 4))
    scaling = {
        "rope_type": "llama3",
        "factor": round(factor, 4),
        "low_freq_factor": low,
        "high_freq_factor": high,
        "original_max_position_embeddings": orig_context,
    }
    try:
        check_rope_scaling(scaling)
        again = base / rope_inv_freq(head_dim, theta, scaling).double().numpy()
    except ValueError as e:
        raise BadInputError(
            f"rope_freqs.weight does not follow Llama 3 scaling: {e}", path=path
        ) from None
    if not np.allclose(again, factors, rtol=1e-4, atol=0):
        raise BadInputError(
            "rope_freqs.weight does not follow Llama 3 scaling (the only kind supported)", path=path
        )
    return scaling


def _tokenizer(meta: _Meta):
    from twofiles.tokenizer import Tokenizer

    kind = meta.get("tokenizer.ggml.model", required=True)
    if kind not in ("gpt2", "llama"):
        raise BadInputError(
            f"tokenizer model '{kind}' is not supported (byte-level BPE 'gpt2' and SentencePiece 'llama' are)",
            path=meta.path,
        )
    tokens = meta.get("tokenizer.ggml.tokens", required=True)
    types = meta.get("tokenizer.ggml.token_type")
    if not isinstance(tokens, list) or not tokens or not all(isinstance(t, str) for t in tokens):
        raise BadInputError("tokenizer.ggml.tokens is not a list of strings", path=meta.path)
    if types is not None and (
        not isinstance(types, list) or not all(isinstance(t, int) for t in types)
    ):
        raise BadInputError("tokenizer.ggml.token_type is not a list of integers", path=meta.path)
    if kind == "gpt2":
        merges = meta.get("tokenizer.ggml.merges", required=True)
        if not isinstance(merges, list) or not all(isinstance(m, str) for m in merges):
            raise BadInputError("tokenizer.ggml.merges is not a list of strings", path=meta.path)
        spec = bpe_tokenizer_json(
            tokens, merges, types, str(meta.get("tokenizer.ggml.pre", "default")), meta.path
        )
    else:
        scores = meta.get("tokenizer.ggml.scores", required=True)
        if not isinstance(scores, list) or not all(
            isinstance(s, (int, float)) and not isinstance(s, bool) for s in scores
        ):
            raise BadInputError("tokenizer.ggml.scores is not a list of numbers", path=meta.path)
        unk = meta.int("tokenizer.ggml.unknown_token_id", -1, lo=-1, hi=len(tokens) - 1)
        prefix = meta.get("tokenizer.ggml.add_space_prefix", True)
        if not isinstance(prefix, bool):
            raise BadInputError(
                f"tokenizer.ggml.add_space_prefix = {prefix!r} is not a boolean", path=meta.path
            )
        spec = spm_tokenizer_json(
            tokens,
            [float(s) for s in scores],
            types,
            unk if unk >= 0 else None,
            meta.path,
            add_space_prefix=prefix,
        )
    n = len(tokens)
    bos = meta.int("tokenizer.ggml.bos_token_id", -1, lo=-1, hi=n - 1)
    eos = meta.int("tokenizer.ggml.eos_token_id", -1, lo=-1, hi=n - 1)
    eot = meta.int("tokenizer.ggml.eot_token_id", -1, lo=-1, hi=n - 1)
    eos_ids = [i for i in dict.fromkeys([eos, eot]) if i >= 0]
    # Whether a prompt starts with the bos. Without the key, llama.cpp and transformers' GGUF
    # loader add it for SentencePiece vocabularies only (Llama 2 era files predate the key).
    add_bos = meta.get("tokenizer.ggml.add_bos_token", kind == "llama")
    if not isinstance(add_bos, bool):
        raise BadInputError(
            f"tokenizer.ggml.add_bos_token = {add_bos!r} is not a boolean", path=meta.path
        )
    try:
        return Tokenizer.from_json(
            spec,
            bos_id=bos if bos >= 0 else (eos_ids[0] if eos_ids else None),
            eos_ids=eos_ids or None,
            add_bos=add_bos,
        )
    except BadInputError as e:
        raise BadInputError(str(e), path=meta.path) from None


def _tensors(
    meta: _Meta, infos: list[tuple[str, int, tuple[int, ...], int]], buf
) -> tuple[dict[str, torch.Tensor], Any, str, Any]:
    """HF-named float32 tensors (q/k un-permuted), the config, the architecture, the tokenizer."""
    import torch

    from twofiles.model import Transformer

    path = meta.path
    by_name = {name: (t, shape, off) for name, t, shape, off in infos}
    if len(by_name) != len(infos):
        raise BadInputError("a tensor name appears twice", path=path)
    if "token_embd.weight" not in by_name:
        raise BadInputError("no token_embd.weight tensor", path=path)
    emb_shape = by_name["token_embd.weight"][1]  # [vocab, dim]
    if len(emb_shape) != 2:
        raise BadInputError(f"token_embd.weight has an unusable shape {emb_shape}", path=path)
    arch, cfg = _config(meta, emb_shape[0])
    cfg.tie_embeddings = "output.weight" not in by_name
    cfg.qkv_bias = "blk.0.attn_q.bias" in by_name  # Qwen2; llama.cpp's llama graph takes one too
    if "rope_freqs.weight" in by_name:
        t, shape, off = by_name.pop("rope_freqs.weight")
        if t != F32 or shape != (cfg.head_dim // 2,) or off + 4 * shape[0] > len(buf):
            raise BadInputError(
                f"rope_freqs.weight is not F32 [{cfg.head_dim // 2}] inside the file", path=path
            )
        factors = np.frombuffer(buf, "<f4", shape[0], off).astype(np.float64)
        orig = meta.int(f"{arch}.rope.scaling.original_context_length", LLAMA3_CONTEXT)
        cfg.rope_scaling = llama3_scaling(factors, cfg.head_dim, cfg.rope_theta, orig, path)
    tokenizer = _tokenizer(meta)
    # shapes only: parameters on the meta device cost nothing
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in Transformer(cfg).state_dict().items()}
    sd: dict[str, torch.Tensor] = {}
    for name, (ggml_type, shape, offset) in by_name.items():
        if name in TOP_NAMES:
            hf = TOP_NAMES[name]
        else:
            parts = name.split(".", 2)
            if len(parts) != 3 or parts[0] != "blk" or parts[2] not in LAYER_NAMES:
                raise BadInputError(f"unexpected tensor '{name}'", path=path)
            hf = f"model.layers.{parts[1]}.{LAYER_NAMES[parts[2]]}"
        if hf not in expected:
            raise BadInputError(f"tensor '{name}' does not fit the config", path=path)
        if shape != expected[hf]:
            raise BadInputError(
                f"tensor '{name}' has shape {shape}, the config expects {expected[hf]}", path=path
            )
        if ggml_type not in BLOCKS:
            raise BadInputError(
                f"tensor '{name}' has type {_type_name(ggml_type)}, not supported yet (F32/F16/BF16/Q8_0/Q4_0/Q4_1 are)",
                path=path,
            )
        n = int(np.prod(shape))
        block, size = BLOCKS[ggml_type]
        if n % block:
            raise BadInputError(
                f"tensor '{name}': {n} elements are not whole blocks of {block}", path=path
            )
        nbytes = n // block * size
        if offset + nbytes > len(buf):
            raise BadInputError(
                f"tensor '{name}' runs past the end of the file (truncated?)", path=path
            )
        w = dequantize(np.frombuffer(buf, np.uint8, nbytes, offset), ggml_type, n).reshape(shape)
        kind = _kind(name)
        if arch == "llama" and kind in ("attn_q", "attn_k"):
            w = _unpermute(w, cfg.n_heads if kind == "attn_q" else cfg.n_kv_heads)
        sd[hf] = torch.from_numpy(np.ascontiguousarray(w))
    if cfg.tie_embeddings and "model.embed_tokens.weight" in sd:
        sd["lm_head.weight"] = sd["model.embed_tokens.weight"]
    missing = set(expected) - set(sd)
    if missing:
        raise BadInputError(f"tensors missing: {sorted(missing)[:5]}", path=path)
    return sd, cfg, arch, tokenizer


def _type_name(ggml_type: int) -> str:
    try:
        from gguf import GGMLQuantizationType

        return GGMLQuantizationType(ggml_type).name
    except (ImportError, ValueError):
        return f"#{ggml_type}"


def load_gguf(
    path: str | os.PathLike[str],
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
) -> LoadedModel:
    """Load a GGUF file as a twofiles model: weights dequantized to float32 (or `dtype`)."""
    from twofiles.artifact import LoadedModel
    from twofiles.formats import build_model

    path = str(path)
    if not os.path.isfile(path):
        raise BadInputError("no such GGUF file", path=path)
    with open(path, "rb") as f:
        if os.path.getsize(path) < 24:
            raise BadInputError("file too short to be GGUF", path=path)
        buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    try:
        raw_meta, infos = _read(path, buf)
        meta = _Meta(raw_meta, path)
        sd, cfg, arch, tokenizer = _tensors(meta, infos, buf)
    finally:
        try:
            buf.close()
        except (
            BufferError
        ):  # a numpy view still alive (only while an exception unwinds): let GC close it
            pass
    model = build_model(cfg, sd)
    model.to(device=device, dtype=dtype) if dtype is not None else model.to(device=device)
    model.eval()
    name = meta.get("general.name", "")
    provenance = {
        "source": "gguf",
        "file": os.path.abspath(path),
        "name": name if isinstance(name, str) else "",
        "architecture": arch,
    }
    template = meta.get("tokenizer.chat_template", "")
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        chat_template=template if isinstance(template, str) else "",
        provenance=provenance,
        path=path,
    )


def _kind(name: str) -> str:
    """'blk.3.attn_q.weight' -> 'attn_q'."""
    parts = name.split(".")
    return parts[2] if len(parts) == 4 and parts[0] == "blk" else ""


tokenizer_json = bpe_tokenizer_json  # the name earlier versions exported

__all__ = ["dequantize", "load_gguf", "tokenizer_json"]
