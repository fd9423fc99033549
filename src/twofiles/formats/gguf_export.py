"""GGUF export: any model twofiles loads becomes a file llama.cpp (and transformers) can read.

What it owns: the mapping back from twofiles (HF Llama names, rotate-half RoPE) to what
llama.cpp's `convert_hf_to_gguf.py` writes: architecture `llama` (`qwen2` for a model with a qkv
bias, since that is where llama.cpp and transformers expect one), llama.cpp tensor names, q/k rows
permuted into ggml's interleaved RoPE layout, the standard hyperparameter keys, the vocabulary
(byte-level BPE as `gpt2` + a `tokenizer.ggml.pre` name, SentencePiece-style BPE as `llama` with
scores), special token ids, the chat template, and Llama 3 RoPE scaling as the `rope_freqs`
tensor. The container and quantization are the `gguf` package's (GGUFWriter, gguf.quants).
What it leaves to others: reading GGUF (gguf.py), the vocabularies' JSON (gguf_vocab.py).

Quantization follows llama.cpp's file types: 1-D tensors (norms, biases, rope_freqs) stay F32;
2-D weights become F16 or Q8_0 (a row that is not whole 32-element blocks falls back to F16, as
llama.cpp does). The file is written to a temporary name and renamed: never half-written.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from twofiles.errors import BadInputError
from twofiles.formats.gguf import LAYER_NAMES, TOP_NAMES
from twofiles.formats.gguf_vocab import pre_name, spm_scores

if TYPE_CHECKING:
    from twofiles.artifact import LoadedModel

TYPES = ("f32", "f16", "q8_0")


def permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF rotate-half q/k rows -> ggml's interleaved pairs (convert_hf_to_gguf.py LlamaModel.permute)."""
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def _gguf_names() -> dict[str, str]:
    out = {hf: g for g, hf in TOP_NAMES.items()}
    out.update({f"model.layers.{{}}.{hf}": f"blk.{{}}.{g}" for g, hf in LAYER_NAMES.items()})
    return out


def tensor_name(hf_name: str) -> str:
    """'model.layers.3.self_attn.q_proj.weight' -> 'blk.3.attn_q.weight'."""
    if hf_name in (names := _gguf_names()):
        return names[hf_name]
    parts = hf_name.split(".", 3)
    if len(parts) == 4 and parts[:2] == ["model", "layers"] and parts[2].isdigit():
        key = f"model.layers.{{}}.{parts[3]}"
        if key in names:
            return names[key].format(parts[2])
    raise BadInputError(f"tensor {hf_name} has no GGUF name")


def llama3_rope_factors(head_dim: int, theta: float, scaling: dict[str, Any]) -> np.ndarray:
    """The divisor of each RoPE frequency, float32 [head_dim / 2], computed as llama.cpp's
    convert_hf_to_gguf.py does (LlamaModel.generate_extra_tensors: float32 scalar arithmetic per
    frequency), so the bytes equal its output; the same curve as model.rope_inv_freq to 1 ulp."""
    from twofiles.model import rope_inv_freq

    factor, low, high, old_len = (
        scaling[k]
        for k in (
            "factor",
            "low_freq_factor",
            "high_freq_factor",
            "original_max_position_embeddings",
        )
    )
    out = []
    for freq in rope_inv_freq(head_dim, theta):  # 0-d float32 tensors, as in the converter
        wavelen = 2 * math.pi / freq
        if wavelen < old_len / high:
            out.append(1.0)
        elif wavelen > old_len / low:
            out.append(float(factor))
        else:
            smooth = (old_len / wavelen - low) / (high - low)
            out.append(float(1 / ((1 - smooth) / factor + smooth)))
    return np.array(out, dtype=np.float32)


def _vocab(loaded: LoadedModel, vocab_size: int) -> dict[str, Any]:
    """tokens, token types, merges/scores, pre and the model kind from the tokenizer JSON."""
    tok = loaded.tokenizer
    spec = json.loads(tok.to_json())
    model = spec.get("model") or {}
    if model.get("type") != "BPE":
        raise BadInputError(
            f"a {model.get('type')} tokenizer cannot be written to GGUF (BPE tokenizers can)"
        )
    tokens: list[str | None] = [None] * vocab_size
    types = [1] * vocab_size  # NORMAL
    for t, i in model["vocab"].items():
        if 0 <= i < vocab_size and tokens[i] is None:
            tokens[i] = t
    for a in spec.get("added_tokens") or []:
        i = a["id"]
        if 0 <= i < vocab_size:
            tokens[i] = a["content"]
            types[i] = 3 if a.get("special") else 4  # CONTROL / USER_DEFINED
    for i, t in enumerate(tokens):
        if t is None:  # embedding rows beyond the tokenizer: llama.cpp needs a token per row
            tokens[i], types[i] = f"[PAD{i}]", 5  # UNUSED
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or []]
    out: dict[str, Any] = {"tokens": tokens, "types": types, "merges": merges}
    if model.get("byte_fallback"):  # SentencePiece-style: Llama 2, Mistral, TinyLlama
        out["kind"] = "llama"
        names = cast("list[str]", tokens)  # every row has a token now (padding filled above)
        out["scores"] = spm_scores(names, merges)
        for i, t in enumerate(names):
            if len(t) == 6 and t.startswith("<0x") and t.endswith(">") and types[i] == 1:
                types[i] = 6  # BYTE
        out["space_prefix"] = (spec.get("pre_tokenizer") or {}).get(
            "prepend_scheme", "first"
        ) != "never"
        unk = model.get("unk_token")
        if unk in model["vocab"]:
            out["unk"] = model["vocab"][unk]
            types[out["unk"]] = 2  # UNKNOWN
    else:
        out["kind"] = "gpt2"
        out["pre"] = pre_name(spec.get("pre_tokenizer"))
    return out


def export_gguf(
    loaded: LoadedModel,
    out_path: str | os.PathLike[str],
    *,
    qtype: str = "f16",
    progress: bool = False,
) -> dict[str, Any]:
    """Write `loaded` as a GGUF file at `out_path` (atomically; a tqdm bar with `progress`).
    Returns a summary: path, type, architecture, tensors, bytes."""
    import gguf
    from gguf.quants import quantize
    from tqdm import tqdm

    if qtype not in TYPES:
        raise BadInputError(f"--type {qtype!r}: expected one of {', '.join(TYPES)}")
    model, tok = loaded.model, loaded.tokenizer
    cfg = model.config
    rope_scaling = getattr(cfg, "rope_scaling", None)
    # llama.cpp's qwen2 graph has the qkv bias but no rope_freqs; its llama graph has both
    arch = "qwen2" if cfg.qkv_bias and not rope_scaling else "llama"
    vocab = _vocab(loaded, cfg.vocab_size)
    out = Path(out_path)
    if out.is_dir():
        raise BadInputError("is a directory; give the .gguf file to write", path=str(out))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    file_type = {
        "f32": gguf.LlamaFileType.ALL_F32,
        "f16": gguf.LlamaFileType.MOSTLY_F16,
        "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
    }[qtype]

    w = gguf.GGUFWriter(str(tmp), arch)
    name = loaded.provenance.get("name") if isinstance(loaded.provenance.get("name"), str) else ""
    w.add_type("model")
    w.add_name(name or "twofiles")
    w.add_context_length(cfg.max_seq_len)
    w.add_embedding_length(cfg.dim)
    w.add_block_count(cfg.n_layers)
    w.add_feed_forward_length(cfg.hidden_dim)
    w.add_head_count(cfg.n_heads)
    w.add_head_count_kv(cfg.n_kv_heads)
    w.add_key_length(cfg.head_dim)
    w.add_value_length(cfg.head_dim)
    w.add_rope_dimension_count(cfg.head_dim)
    w.add_rope_freq_base(cfg.rope_theta)
    w.add_layer_norm_rms_eps(cfg.norm_eps)
    w.add_vocab_size(cfg.vocab_size)
    w.add_file_type(file_type)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    if rope_scaling:
        # llama.cpp reads Llama 3 scaling from the rope_freqs tensor alone (a rope.scaling.factor key
        # would add linear scaling on top); the original context is kept for our importer.
        w.add_rope_scaling_orig_ctx_len(int(rope_scaling["original_max_position_embeddings"]))

    w.add_tokenizer_model(vocab["kind"])
    if vocab["kind"] == "gpt2":
        w.add_tokenizer_pre(vocab["pre"])
        w.add_token_merges(vocab["merges"])
    else:
        w.add_tokenizer_pre("default")
        w.add_token_scores(vocab["scores"])
        w.add_add_space_prefix(vocab["space_prefix"])
        if "unk" in vocab:
            w.add_unk_token_id(vocab["unk"])
    w.add_token_list(vocab["tokens"])
    w.add_token_types(vocab["types"])
    w.add_bos_token_id(tok.bos_id)
    w.add_eos_token_id(tok.eos_ids[0])
    if len(tok.eos_ids) > 1:
        w.add_eot_token_id(tok.eos_ids[1])
    w.add_add_bos_token(tok.add_bos)  # llama.cpp then starts a prompt as our engine does
    w.add_add_eos_token(False)
    if loaded.chat_template:
        w.add_chat_template(loaded.chat_template)

    # Tensors are described first and converted one at a time while writing: peak memory is the
    # model plus one converted tensor, not a second copy of the whole model.
    q8 = gguf.GGMLQuantizationType.Q8_0
    sd = {
        k: v
        for k, v in model.state_dict().items()
        if not (k == "lm_head.weight" and cfg.tie_embeddings)
    }  # tied: no output.weight
    plan: list[
        tuple[str, str, str, tuple[int, ...]]
    ] = []  # (gguf name, hf name or "", target type, shape)
    factors = np.zeros(0)
    if rope_scaling:
        factors = llama3_rope_factors(cfg.head_dim, cfg.rope_theta, rope_scaling)
        plan.append(("rope_freqs.weight", "", "f32", factors.shape))
    for hf_name, t in sd.items():
        target = (
            "f32"
            if t.ndim == 1 or qtype == "f32"
            else "f16"
            if qtype == "f16" or t.shape[-1] % 32
            else "q8_0"
        )
        plan.append((tensor_name(hf_name), hf_name, target, tuple(t.shape)))
    for gname, _, target, shape in plan:
        n = int(np.prod(shape))
        if target == "q8_0":
            w.add_tensor_info(gname, shape, np.dtype(np.float32), n // 32 * 34, raw_dtype=q8)
        else:
            w.add_tensor_info(
                gname,
                shape,
                np.dtype(np.float32 if target == "f32" else np.float16),
                n * (4 if target == "f32" else 2),
            )

    def converted(gname: str, hf_name: str, target: str) -> np.ndarray:
        if not hf_name:
            return factors
        a = sd[hf_name].detach().to("cpu").float().numpy()
        kind = gname.split(".")[2] if gname.startswith("blk.") else ""
        if arch == "llama" and kind in ("attn_q", "attn_k"):
            a = permute(a, cfg.n_heads if kind == "attn_q" else cfg.n_kv_heads)
        a = np.ascontiguousarray(a, dtype=np.float32)
        return (
            a if target == "f32" else a.astype(np.float16) if target == "f16" else quantize(a, q8)
        )

    try:
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        for gname, hf_name, target, _ in tqdm(
            plan, desc=f"gguf {qtype}", unit="tensor", disable=not progress
        ):
            w.write_tensor_data(converted(gname, hf_name, target))
        w.close()
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, out)
    finally:
        w.close()
        tmp.unlink(missing_ok=True)
    return {
        "path": str(out),
        "type": qtype,
        "architecture": arch,
        "tensors": len(plan),
        "bytes": out.stat().st_size,
    }


__all__ = ["TYPES", "export_gguf", "llama3_rope_factors", "permute", "tensor_name"]
