"""Hugging Face model directories: import (`load_hf_dir`) and export (`export_hf`).

What it owns: config.json <-> ModelConfig, safetensors weights (one file or a sharded index),
tokenizer.json + tokenizer_config.json (bos/eos, chat template). Because twofiles' parameter
names and RoPE layout are HF Llama's, the weights map 1:1; nothing is ever unpickled
(pytorch_model.bin is refused).

Supported: `llama` (Llama 2/3, SmolLM/SmolLM2, TinyLlama), `mistral` (a sliding window only
shortens the usable context to the window, where attention is identical) and `qwen2` (qkv bias).
Llama 3 RoPE scaling (`rope_scaling` / `rope_parameters` with rope_type "llama3") is kept.
Refused with a message: other RoPE scaling (linear, dynamic, YaRN), a head dim other than
hidden / heads, MLP or output biases, activations other than SiLU.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from twofiles.errors import BadInputError

if TYPE_CHECKING:
    import torch

    from twofiles.artifact import LoadedModel
    from twofiles.model import ModelConfig

MODEL_TYPES = ("llama", "mistral", "qwen2")
DEFAULT_CONTEXT = 2048  # when config.json gives no max_position_embeddings


def _read_json(path: Path, *, required: bool = True) -> dict[str, Any]:
    if not path.is_file():
        if required:
            raise BadInputError("missing", path=str(path))
        return {}
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BadInputError(f"not valid JSON: {e}", path=str(path)) from None
    if not isinstance(d, dict):
        raise BadInputError("not a JSON object", path=str(path))
    return d


def config_from_hf(c: dict[str, Any], path: str = "") -> ModelConfig:
    from twofiles.model import LLAMA3_KEYS, ModelConfig, check_rope_scaling

    kind = c.get("model_type")
    if kind not in MODEL_TYPES:
        raise BadInputError(
            f"model_type {kind!r} is not supported (supported: {', '.join(MODEL_TYPES)})", path=path
        )
    # transformers < 5 writes rope_theta + rope_scaling, >= 5 rope_parameters (theta and type)
    rope = c.get("rope_scaling") or c.get("rope_parameters") or {}
    rope_type = (
        rope.get("rope_type", rope.get("type", "default")) if isinstance(rope, dict) else None
    )
    if rope_type not in ("default", "llama3"):
        raise BadInputError(f"RoPE scaling {rope!r} is not supported (llama3 is)", path=path)
    scaling = None
    if rope_type == "llama3":
        scaling = {"rope_type": "llama3", **{k: rope.get(k) for k in LLAMA3_KEYS}}
        try:
            check_rope_scaling(scaling)
        except ValueError as e:
            raise BadInputError(str(e), path=path) from None
    if c.get("hidden_act", "silu") != "silu" or c.get("mlp_bias"):
        raise BadInputError("only SiLU MLPs without biases are supported", path=path)
    if kind != "qwen2" and c.get("attention_bias"):
        raise BadInputError(
            "attention_bias=true (a bias on o_proj too) is not supported; qkv-only bias (qwen2) is",
            path=path,
        )
    try:
        dim, n_heads = int(c["hidden_size"]), int(c["num_attention_heads"])
        if c.get("head_dim") not in (None, dim // n_heads):
            raise BadInputError(
                f"head_dim={c['head_dim']} differs from hidden_size / heads, not supported",
                path=path,
            )
        max_len = int(c.get("max_position_embeddings") or DEFAULT_CONTEXT)
        window = (
            c.get("sliding_window") if (kind == "mistral" or c.get("use_sliding_window")) else None
        )
        if window:
            max_len = min(max_len, int(window))
        return ModelConfig(
            vocab_size=int(c["vocab_size"]),
            dim=dim,
            n_layers=int(c["num_hidden_layers"]),
            n_heads=n_heads,
            n_kv_heads=int(c.get("num_key_value_heads") or n_heads),
            hidden_dim=int(c["intermediate_size"]),
            max_seq_len=max_len,
            rope_theta=float(c.get("rope_theta") or rope.get("rope_theta") or 10000.0),
            norm_eps=float(c.get("rms_norm_eps", 1e-6)),
            tie_embeddings=bool(c.get("tie_word_embeddings", False)),
            qkv_bias=kind == "qwen2",
            rope_scaling=scaling,
        )
    except KeyError as e:
        raise BadInputError(f"config.json lacks {e}", path=path) from None
    except (TypeError, ValueError) as e:
        raise BadInputError(f"config.json is not usable: {e}", path=path) from None


def _token_id(tok: Any, hf_tokenizer) -> int | None:
    """A bos/eos entry of tokenizer_config.json: a string, an AddedToken dict, or absent."""
    if isinstance(tok, dict):
        tok = tok.get("content")
    if isinstance(tok, str):
        return hf_tokenizer.token_to_id(tok)
    return None


def _ids(v: Any) -> list[int]:
    if isinstance(v, int) and not isinstance(v, bool):
        return [v]
    if isinstance(v, list):
        return [i for i in v if isinstance(i, int) and not isinstance(i, bool)]
    return []


def _post_steps(tokenizer_json: dict[str, Any]) -> list[dict[str, Any]]:
    post = tokenizer_json.get("post_processor") or {}
    steps = (post.get("processors") or []) if post.get("type") == "Sequence" else [post]
    return [s for s in steps if isinstance(s, dict) and s]


def _adds_bos(tokenizer_json: dict[str, Any]) -> bool:
    """Whether transformers' tokenizer for this tokenizer.json starts a text with a special token:
    its post-processor's template (Llama 3's and Llama 2's write the bos; SmolLM2's and Qwen2's
    none). tokenizer_config.json's `add_bos_token` does not count: transformers 5 drops it
    whenever a tokenizer.json exists, and only such directories are read here."""
    for step in _post_steps(tokenizer_json):
        if step.get("type") == "TemplateProcessing":
            single = step.get("single") or []
            return bool(single) and isinstance(single[0], dict) and "SpecialToken" in single[0]
    return False


def _with_prompt_rule(tokenizer_json: str, add_bos: bool, bos: str, bos_id: int) -> str:
    """tokenizer.json whose post-processor starts a text with `bos` exactly when `add_bos`."""
    spec = json.loads(tokenizer_json)
    if _adds_bos(spec) == add_bos:
        return tokenizer_json
    steps = [s for s in _post_steps(spec) if s.get("type") != "TemplateProcessing"]
    if add_bos:
        start, a, b = (
            {"SpecialToken": {"id": bos, "type_id": 0}},
            {"Sequence": {"id": "A", "type_id": 0}},
            {"Sequence": {"id": "B", "type_id": 1}},
        )
        steps.append(
            {
                "type": "TemplateProcessing",
                "single": [start, a],
                "pair": [start, a, {"SpecialToken": {"id": bos, "type_id": 1}}, b],
                "special_tokens": {bos: {"id": bos, "ids": [bos_id], "tokens": [bos]}},
            }
        )
    if len(steps) > 1:
        spec["post_processor"] = {"type": "Sequence", "processors": steps}
    else:
        spec["post_processor"] = steps[0] if steps else None
    return json.dumps(spec, ensure_ascii=False)


def _tokenizer(d: Path, config: dict[str, Any]):
    from tokenizers import Tokenizer as HFTokenizer

    from twofiles.tokenizer import Tokenizer

    tj = d / "tokenizer.json"
    if not tj.is_file():
        raise BadInputError(
            "no tokenizer.json (a SentencePiece tokenizer.model alone is not supported)",
            path=str(d),
        )
    text = tj.read_text(encoding="utf-8")
    try:
        hf = HFTokenizer.from_str(text)
    except Exception as e:
        raise BadInputError(f"not a valid tokenizer.json: {e}", path=str(tj)) from None
    tc = _read_json(d / "tokenizer_config.json", required=False)
    gen = _read_json(d / "generation_config.json", required=False)
    bos = _token_id(tc.get("bos_token"), hf)
    if bos is None:
        bos = next(iter(_ids(config.get("bos_token_id")) or _ids(gen.get("bos_token_id"))), None)
    eos = [
        i
        for i in [
            _token_id(tc.get("eos_token"), hf),
            *_ids(config.get("eos_token_id")),
            *_ids(gen.get("eos_token_id")),
        ]
        if i is not None
    ]
    eos = list(dict.fromkeys(eos))
    if (
        bos is None
        and eos
        and not any(n in text for n in ('"<|begin_of_text|>"', '"<s>"', '"<|endoftext|>"'))
    ):
        bos = eos[0]  # models without a document-start token (Qwen2) start from end-of-text
    add_bos = _adds_bos(json.loads(text))
    try:
        tok = Tokenizer(hf, bos_id=bos, eos_ids=eos or None, add_bos=add_bos)
    except BadInputError as e:
        raise BadInputError(str(e), path=str(tj)) from None
    template = tc.get("chat_template") or ""
    if isinstance(template, list):  # [{"name": "default", "template": ...}, ...]
        template = next(
            (
                t.get("template", "")
                for t in template
                if isinstance(t, dict) and t.get("name") == "default"
            ),
            "",
        )
    jinja = d / "chat_template.jinja"  # where transformers >= 4.43 may store it instead
    if not template and jinja.is_file():
        template = jinja.read_text(encoding="utf-8")
    return tok, template if isinstance(template, str) else ""


def _weights(d: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    single, index = d / "model.safetensors", d / "model.safetensors.index.json"
    if single.is_file():
        files = [single]
    elif index.is_file():
        weight_map = _read_json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not all(
            isinstance(f, str) and "/" not in f for f in weight_map.values()
        ):
            raise BadInputError(
                "weight_map is missing or names files outside the directory", path=str(index)
            )
        files = [d / f for f in sorted(set(weight_map.values()))]
    elif any(d.glob("*.bin")) or any(d.glob("*.pth")):
        raise BadInputError(
            "only safetensors weights are supported (pickled .bin/.pth are never loaded)",
            path=str(d),
        )
    else:
        raise BadInputError("no model.safetensors or model.safetensors.index.json", path=str(d))
    sd: dict[str, torch.Tensor] = {}
    for f in files:
        try:
            sd.update(load_file(str(f), device="cpu"))
        except (SafetensorError, OSError) as e:
            raise BadInputError(f"cannot read tensors: {e}", path=str(f)) from None
    return sd


def load_hf_dir(
    path: str | os.PathLike[str],
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
) -> LoadedModel:
    """Load a Hugging Face Llama-family directory. Weights become float32 unless `dtype` is given
    (fp32 is the CPU precision; checkpoints usually ship bf16)."""
    import torch

    from twofiles.artifact import LoadedModel
    from twofiles.formats import build_model
    from twofiles.model import Transformer

    d = Path(path)
    if not d.is_dir():
        raise BadInputError("not a directory", path=str(d))
    raw = _read_json(d / "config.json")
    cfg = config_from_hf(raw, str(d / "config.json"))
    tokenizer, template = _tokenizer(d, raw)
    sd = _weights(d)
    sd = {
        k: v for k, v in sd.items() if not k.endswith("rotary_emb.inv_freq")
    }  # old checkpoints store RoPE tables
    if cfg.tie_embeddings:
        sd.pop("lm_head.weight", None)
        if "model.embed_tokens.weight" in sd:
            sd["lm_head.weight"] = sd["model.embed_tokens.weight"]
    with torch.device("meta"):  # shapes only
        expected = Transformer(cfg).state_dict()
    missing, unexpected = set(expected) - set(sd), set(sd) - set(expected)
    if missing or unexpected:
        raise BadInputError(
            f"weights do not match config.json: missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}",
            path=str(d),
        )
    for k, v in expected.items():
        if tuple(sd[k].shape) != tuple(v.shape):
            raise BadInputError(
                f"tensor {k} has shape {tuple(sd[k].shape)}, config.json expects {tuple(v.shape)}",
                path=str(d),
            )
    model = build_model(cfg, {k: v.to(torch.float32) for k, v in sd.items()})
    model.to(device=device, dtype=dtype) if dtype is not None else model.to(device=device)
    model.eval()
    provenance = {
        "source": "huggingface",
        "dir": str(d.resolve()),
        "model_type": raw.get("model_type"),
        "name": raw.get("_name_or_path", ""),
    }
    return LoadedModel(
        model=model, tokenizer=tokenizer, chat_template=template, provenance=provenance, path=str(d)
    )


def config_to_hf(cfg: ModelConfig, bos_id: int, eos_ids: list[int]) -> dict[str, Any]:
    # qkv bias without an o_proj bias is Qwen2's layout; Llama's attention_bias adds both.
    qwen = cfg.qkv_bias
    c: dict[str, Any] = {
        "architectures": ["Qwen2ForCausalLM" if qwen else "LlamaForCausalLM"],
        "model_type": "qwen2" if qwen else "llama",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.dim,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_kv_heads,
        "intermediate_size": cfg.hidden_dim,
        "max_position_embeddings": cfg.max_seq_len,
        "rope_theta": cfg.rope_theta,
        "rms_norm_eps": cfg.norm_eps,
        "tie_word_embeddings": cfg.tie_embeddings,
        "hidden_act": "silu",
        "bos_token_id": bos_id,
        "eos_token_id": eos_ids[0] if len(eos_ids) == 1 else eos_ids,
        "torch_dtype": "float32",
    }
    if (
        cfg.rope_scaling
    ):  # transformers < 5 reads rope_scaling, >= 5 also accepts it (as rope_parameters)
        c["rope_scaling"] = dict(cfg.rope_scaling)
    if not qwen:
        c.update(attention_bias=False, mlp_bias=False, head_dim=cfg.head_dim)
    else:
        c.update(use_sliding_window=False)
    return c


def export_hf(loaded: LoadedModel, out_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Write a directory that transformers' AutoModelForCausalLM / AutoTokenizer load: config.json,
    model.safetensors, tokenizer.json, tokenizer_config.json, generation_config.json (each file
    written atomically)."""
    from safetensors.torch import save

    from twofiles.artifact import atomic_write_bytes

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model, tok = loaded.model, loaded.tokenizer
    cfg = model.config
    sd = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()}
    if cfg.tie_embeddings:
        sd.pop("lm_head.weight", None)
    names = {i: t for t, i in tok.special_ids.items()}
    bos_name = names.get(tok.bos_id) or tok.id_to_token(tok.bos_id)
    eos_name = names.get(tok.eos_ids[0]) or tok.id_to_token(tok.eos_ids[0])
    tc = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": bos_name,
        "eos_token": eos_name,
        "add_bos_token": tok.add_bos,  # transformers 4 reads this; 5 the tokenizer.json template
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": cfg.max_seq_len,
    }
    if loaded.chat_template:
        tc["chat_template"] = loaded.chat_template
    files = {
        "config.json": json.dumps(config_to_hf(cfg, tok.bos_id, tok.eos_ids), indent=2).encode(),
        "generation_config.json": json.dumps(
            {"bos_token_id": tok.bos_id, "eos_token_id": tok.eos_ids}, indent=2
        ).encode(),
        "tokenizer.json": _with_prompt_rule(
            tok.to_json(), tok.add_bos, bos_name, tok.bos_id
        ).encode(),
        "tokenizer_config.json": json.dumps(tc, indent=2).encode(),
    }
    # weights first and config.json last: a directory without config.json is not loadable yet
    atomic_write_bytes(out / "model.safetensors", save(sd, metadata={"format": "pt"}))
    for name in (
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
        "config.json",
    ):
        atomic_write_bytes(out / name, files[name])
    return {
        "dir": str(out),
        "files": ["model.safetensors", *files],
        "params": sum(v.numel() for v in sd.values()),
    }


__all__ = ["config_from_hf", "config_to_hf", "export_hf", "load_hf_dir"]
