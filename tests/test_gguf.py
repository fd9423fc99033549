"""GGUF out (export_gguf, `twofiles export gguf`), SentencePiece GGUF vocabularies in, Llama 3 RoPE
scaling through every format, and hostile files on those paths.

References: transformers (its GGUF loader for weights and for SentencePiece vocabularies, its
LlamaForCausalLM for Llama 3 RoPE scaling), the `gguf` package (writing test files, quantization).
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch

from peers import require
from twofiles.artifact import LoadedModel, save_model
from twofiles.errors import BadInputError
from twofiles.model import ModelConfig, Transformer
from twofiles.tokenizer import Tokenizer

TEXTS = [
    "The quick brown fox jumps over the lazy dog. 12345 apples!",
    "To be, or not to be: that is the question.",
    "Hello world\n" * 3,
]
# small original context: every band of the scaling (kept, smoothed, slowed) is exercised within 64 positions
LLAMA3 = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 16.0,
    "original_max_position_embeddings": 32,
}


def unicode_sample(n: int = 60, seed: int = 0) -> list[str]:
    """Hand-picked hard cases plus seeded random strings over many scripts, emoji and controls."""
    fixed = [
        "Hello   world\n\n\n  x\t\ty  ",
        " leading space",
        "  two leading",
        "trailing  ",
        "I'm can't we'll YOU'RE",
        "1234567 3.14159 1,000,000 x²³ ½ Ⅻ 一二三 ٣٤٥",
        "café naïve résumé Ångström straße a\u0301 e\u0308",
        "emoji 😀👍🏽 👨‍👩‍👧 ✨ ♥",
        "日本語のテキスト、です。 مرحبا بالعالم नमस्ते",
        "\x1c\x1d a\u00a0b\u3000c\u2028d",
        "▁ already ▁▁ metaspace",
        "<0x41> looks like a byte token",
        "tab\tand\r\nwindows",
        "",
        "\n",
        " ",
        "x",
    ]
    ranges = [
        (0x20, 0x7E),
        (0xA0, 0x24F),
        (0x370, 0x3FF),
        (0x400, 0x4FF),
        (0x590, 0x6FF),
        (0x900, 0x97F),
        (0x3040, 0x30FF),
        (0x4E00, 0x4FFF),
        (0xAC00, 0xAD00),
        (0x1F300, 0x1F64F),
        (0x2000, 0x206F),
        (0x0, 0x1F),
    ]
    rng = random.Random(seed)
    out = list(fixed)
    for _ in range(n):
        parts = []
        for _ in range(rng.randint(1, 12)):
            lo, hi = rng.choice(ranges)
            parts.append("".join(chr(rng.randint(lo, hi)) for _ in range(rng.randint(1, 6))))
            parts.append(rng.choice([" ", "", "  ", "\n", "the ", " and"]))
        out.append("".join(parts))
    return out


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.train(TEXTS * 20, 400)


def random_model(cfg: ModelConfig, seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    model = Transformer(cfg)
    with torch.no_grad():
        for p in model.parameters():  # every weight non-trivial (init_weights zeroes some)
            p.normal_(0, 0.1 if p.ndim > 1 else 0.5).add_(1.0 if p.ndim == 1 else 0.0)
    return model.eval()


def tiny_cfg(vocab_size: int, **kw) -> ModelConfig:
    return ModelConfig(
        **{
            **dict(
                vocab_size=vocab_size,
                dim=64,
                n_layers=2,
                n_heads=4,
                n_kv_heads=2,
                hidden_dim=128,
                max_seq_len=64,
            ),
            **kw,
        }
    )


VARIANTS = {
    "gqa": {},
    "tied": {"tie_embeddings": True},
    "qkv_bias": {"qkv_bias": True, "n_kv_heads": 1},
    "llama3_rope": {"rope_scaling": LLAMA3},
    "llama3_rope_bias": {"rope_scaling": LLAMA3, "qkv_bias": True},
}


def ids_for(tok: Tokenizer) -> torch.Tensor:
    return torch.tensor([[tok.bos_id] + tok.encode(TEXTS[0])[:40]])


def loaded(model: Transformer, tok: Tokenizer) -> LoadedModel:
    return LoadedModel(
        model=model, tokenizer=tok, chat_template="{{ messages }}", provenance={"name": "tiny"}
    )


# ---------------------------------------------------------------------------- export


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("qtype", ["f32", "f16", "q8_0"])
def test_export_gguf_reimports(tmp_path, tok, variant, qtype) -> None:
    from gguf.quants import dequantize, quantize

    from twofiles.formats.gguf import load_gguf
    from twofiles.formats.gguf_export import export_gguf

    model = random_model(tiny_cfg(tok.vocab_size, **VARIANTS[variant]))
    summary = export_gguf(loaded(model, tok), tmp_path / "m.gguf", qtype=qtype)
    assert summary["architecture"] == ("qwen2" if variant == "qkv_bias" else "llama")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.gguf"]  # no temp file left
    back = load_gguf(tmp_path / "m.gguf")
    assert back.model.config == model.config  # rope_scaling recovered from rope_freqs
    assert back.chat_template == "{{ messages }}" and back.provenance["name"] == "tiny"
    assert (back.tokenizer.bos_id, back.tokenizer.eos_ids) == (tok.bos_id, tok.eos_ids)
    for text in [*TEXTS, *unicode_sample(20)]:
        assert back.tokenizer.encode(text) == tok.encode(text), repr(text)
    ids = ids_for(tok)
    ref = random_model(
        model.config
    )  # our model holding what the file holds, dequantized by gguf itself
    with torch.no_grad():
        for _name, p in ref.named_parameters():
            a = p.detach().numpy()
            if a.ndim == 2 and qtype == "f16":
                p.copy_(torch.from_numpy(a.astype(np.float16).astype(np.float32)))
            elif a.ndim == 2 and qtype == "q8_0":
                p.copy_(
                    torch.from_numpy(
                        dequantize(
                            quantize(a, gguf.GGMLQuantizationType.Q8_0),
                            gguf.GGMLQuantizationType.Q8_0,
                        )
                    )
                )
        expected = ref(ids)
        got = back.model(ids)
        if qtype == "f32":
            torch.testing.assert_close(got, model(ids), atol=0, rtol=0)
        else:
            torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(got, model(ids), atol=0.2, rtol=0)


@pytest.mark.parametrize("variant", ["gqa", "tied", "qkv_bias"])
def test_transformers_loads_the_exported_gguf(tmp_path, tok, variant) -> None:
    from transformers import AutoModelForCausalLM

    from twofiles.formats.gguf_export import export_gguf

    model = random_model(tiny_cfg(tok.vocab_size, **VARIANTS[variant]))
    export_gguf(loaded(model, tok), tmp_path / "m.gguf", qtype="f32")
    hf = AutoModelForCausalLM.from_pretrained(
        str(tmp_path), gguf_file="m.gguf", dtype=torch.float32
    ).eval()
    assert hf.config.tie_word_embeddings == (variant == "tied")
    ids = ids_for(tok)
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, model(ids), atol=1e-4, rtol=1e-4)


def test_export_gguf_cli(tmp_path, tok, capsys) -> None:
    from twofiles.cli import main
    from twofiles.formats.gguf import load_gguf

    model = random_model(tiny_cfg(tok.vocab_size))
    src = save_model(tmp_path / "m.safetensors", model, tok)
    assert (
        main(
            [
                "export",
                "gguf",
                str(src),
                str(tmp_path / "out" / "m.gguf"),
                "--type",
                "q8_0",
                "--json",
            ]
        )
        == 0
    )
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (
        summary["type"] == "q8_0"
        and summary["architecture"] == "llama"
        and summary["bytes"] == (tmp_path / "out" / "m.gguf").stat().st_size
    )
    raw = {name: t for name, t, _, _ in _tensor_types(tmp_path / "out" / "m.gguf")}
    assert (
        raw["blk.0.attn_q.weight"] == gguf.GGMLQuantizationType.Q8_0
        and raw["blk.0.attn_norm.weight"] == gguf.GGMLQuantizationType.F32
    )
    back = load_gguf(tmp_path / "out" / "m.gguf")
    assert back.model.config == model.config
    assert (
        main(["export", "gguf", str(tmp_path / "missing.safetensors"), str(tmp_path / "x.gguf")])
        == 2
    )
    assert main(["export", "gguf", str(src), str(tmp_path)]) == 2  # a directory is not a file name
    assert "error" in capsys.readouterr().err


def _tensor_types(path: Path):
    r = gguf.GGUFReader(str(path))
    return [(t.name, t.tensor_type, tuple(t.shape), t.n_elements) for t in r.tensors]


def test_export_gguf_metadata_is_llama_cpp_s(tmp_path, tok) -> None:
    """The keys and tensor names llama.cpp's loader reads, checked with gguf's own reader."""
    from twofiles.formats.gguf_export import export_gguf

    model = random_model(tiny_cfg(tok.vocab_size, rope_scaling=LLAMA3))
    export_gguf(loaded(model, tok), tmp_path / "m.gguf", qtype="f16")
    r = gguf.GGUFReader(str(tmp_path / "m.gguf"))

    def value(key):
        f = r.fields[key]
        return f.contents()

    cfg = model.config
    expected = {
        "general.architecture": "llama",
        "llama.context_length": cfg.max_seq_len,
        "llama.embedding_length": cfg.dim,
        "llama.block_count": cfg.n_layers,
        "llama.feed_forward_length": cfg.hidden_dim,
        "llama.attention.head_count": cfg.n_heads,
        "llama.attention.head_count_kv": cfg.n_kv_heads,
        "llama.rope.dimension_count": cfg.head_dim,
        "llama.vocab_size": cfg.vocab_size,
        "general.file_type": int(gguf.LlamaFileType.MOSTLY_F16),
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "llama-bpe",
        "tokenizer.ggml.bos_token_id": tok.bos_id,
        "tokenizer.ggml.eos_token_id": tok.eos_ids[0],
        "tokenizer.ggml.add_bos_token": True,
        "tokenizer.chat_template": "{{ messages }}",
    }
    for key, v in expected.items():
        assert value(key) == v, key
    assert value("llama.rope.freq_base") == pytest.approx(cfg.rope_theta)
    assert value("llama.attention.layer_norm_rms_epsilon") == pytest.approx(cfg.norm_eps)
    assert (
        "llama.rope.scaling.factor" not in r.fields
    )  # llama.cpp would add linear scaling on top of rope_freqs
    assert (
        len(value("tokenizer.ggml.tokens")) == tok.vocab_size
        and value("tokenizer.ggml.token_type")[tok.bos_id] == 3
    )
    names = {t.name for t in r.tensors}
    assert {
        "token_embd.weight",
        "output_norm.weight",
        "output.weight",
        "rope_freqs.weight",
        "blk.1.ffn_down.weight",
        "blk.0.attn_output.weight",
    } <= names
    freqs = next(t for t in r.tensors if t.name == "rope_freqs.weight")
    # Llama 3's divisors grow from >= 1 (fastest frequencies) to `factor` (slowest)
    assert (
        freqs.data[0] >= 1
        and np.all(np.diff(freqs.data) >= 0)
        and freqs.data[-1] == pytest.approx(LLAMA3["factor"])
    )
    q = next(t for t in r.tensors if t.name == "blk.0.attn_q.weight")
    from twofiles.formats.gguf_export import permute

    w = model.model.layers[0].self_attn.q_proj.weight.detach().numpy()
    np.testing.assert_array_equal(
        np.asarray(q.data).astype(np.float32),
        permute(w, cfg.n_heads).astype(np.float16).astype(np.float32),
    )


def test_pre_tokenizer_names(tok) -> None:
    from twofiles.formats.gguf_vocab import PRE_TOKENIZERS, pre_name

    assert pre_name(json.loads(tok.to_json())["pre_tokenizer"]) == "llama-bpe"
    for name in ("gpt2", "smollm", "llama-bpe", "qwen2"):
        assert pre_name({"type": "Sequence", "pretokenizers": PRE_TOKENIZERS[name]}) == name
    assert pre_name({"type": "Sequence", "pretokenizers": PRE_TOKENIZERS["llama3"]}) == "llama-bpe"
    with pytest.raises(BadInputError, match="no GGUF name"):
        pre_name({"type": "Whitespace"})


# ---------------------------------------------------------------------------- SentencePiece vocabularies

SPM_CORPUS = [
    "The quick brown fox jumps over the lazy dog. Hello world, hello there!",
    "To be, or not to be: that is the question. Whether 'tis nobler in the mind to suffer",
    "café naïve résumé — 日本語 テキスト — числа 12345 and 6789",
] * 30


def spm_vocab() -> tuple[list[str], list[float], list[int]]:
    """A Llama-2-shaped SentencePiece vocabulary: <unk> <s> </s>, the 256 byte tokens, then pieces
    best-first with scores; plus one control and one user-defined token."""
    from tokenizers import SentencePieceBPETokenizer

    trainer = SentencePieceBPETokenizer()
    trainer.train_from_iterator(SPM_CORPUS, vocab_size=300, show_progress=False)
    model = json.loads(trainer.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    rank = {}
    for r, (a, b) in enumerate(merges):
        rank.setdefault(a + b, r)
    pieces = [t for t, _ in sorted(model["vocab"].items(), key=lambda kv: kv[1]) if t != "<unk>"]
    pieces.sort(key=lambda t: rank.get(t, len(merges)))
    tokens = [
        "<unk>",
        "<s>",
        "</s>",
        *[f"<0x{b:02X}>" for b in range(256)],
        "<|im_start|>",
        "<think>",
        *pieces,
    ]
    types = [2, 3, 3, *[6] * 256, 3, 4, *[1] * len(pieces)]
    scores = [0.0] * 261 + [-float(rank.get(t, len(merges) + i)) for i, t in enumerate(pieces)]
    return tokens, scores, types


def write_gguf(path: Path, model: Transformer, tokenizer_kv, *, arch: str = "llama") -> None:
    """A GGUF written directly with gguf's GGUFWriter (independent of export_gguf)."""
    from twofiles.formats.gguf_export import permute, tensor_name

    cfg = model.config
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name("spm-tiny")
    w.add_context_length(cfg.max_seq_len)
    w.add_embedding_length(cfg.dim)
    w.add_block_count(cfg.n_layers)
    w.add_feed_forward_length(cfg.hidden_dim)
    w.add_head_count(cfg.n_heads)
    w.add_head_count_kv(cfg.n_kv_heads)
    w.add_rope_freq_base(cfg.rope_theta)
    w.add_layer_norm_rms_eps(cfg.norm_eps)
    tokenizer_kv(w)
    for name, t in model.state_dict().items():
        a = t.detach().numpy().astype(np.float32)
        g = tensor_name(name)
        if ".attn_q." in g or ".attn_k." in g:
            a = permute(a, cfg.n_heads if ".attn_q." in g else cfg.n_kv_heads)
        w.add_tensor(g, a)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def spm_kv(tokens, scores, types, **extra):
    def add(w) -> None:
        w.add_tokenizer_model("llama")
        w.add_tokenizer_pre("default")
        w.add_token_list(tokens)
        w.add_token_scores(scores)
        w.add_token_types(types)
        w.add_bos_token_id(1)
        w.add_eos_token_id(2)
        w.add_unk_token_id(0)
        for key, v in extra.items():
            getattr(w, f"add_{key}")(v)

    return add


@pytest.fixture(scope="module")
def spm_gguf(tmp_path_factory):
    tokens, scores, types = spm_vocab()
    d = tmp_path_factory.mktemp("spm")
    model = random_model(tiny_cfg(len(tokens), n_layers=1))
    write_gguf(d / "spm.gguf", model, spm_kv(tokens, scores, types))
    return d / "spm.gguf", model


def test_spm_gguf_tokenizer_matches_transformers(spm_gguf) -> None:
    from transformers import AutoTokenizer

    from twofiles.formats.gguf import load_gguf

    path, model = spm_gguf
    ours = load_gguf(path)
    theirs = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    assert (
        "Metaspace" in json.loads(theirs.backend_tokenizer.to_str())["pre_tokenizer"]["type"]
    )  # its SentencePiece path
    assert (ours.tokenizer.bos_id, ours.tokenizer.eos_ids) == (1, [2])
    assert ours.tokenizer.special_ids == {"<unk>": 0, "<s>": 1, "</s>": 2, "<|im_start|>": 259}
    samples = unicode_sample(120) + SPM_CORPUS[:3]
    fallback = 0
    for text in samples:
        ids = ours.tokenizer.encode(text)
        assert ids == theirs.encode(text, add_special_tokens=False), repr(text)
        assert ours.tokenizer.decode(ids) == theirs.decode(ids), repr(text)
        fallback += sum(3 <= i < 259 for i in ids)
        # the ids' bytes rebuild the text: "▁" is a space, one is prepended unless there is one
        prefixed = text if not text or text.startswith((" ", "\u2581")) else " " + text
        assert (
            b"".join(ours.tokenizer.token_to_bytes(i) for i in ids)
            == prefixed.replace("\u2581", " ").encode()
        )
    assert fallback > 100  # the sample exercises byte fallback, not only known pieces
    assert ours.tokenizer.encode("<think>") == [260]  # user-defined: matched whole
    x = torch.tensor([[1] + ours.tokenizer.encode(SPM_CORPUS[0])])
    with torch.no_grad():
        torch.testing.assert_close(ours.model(x), model(x), atol=1e-5, rtol=1e-5)


def gpt2_kv(tok: Tokenizer, **extra):
    """A byte-level BPE vocabulary (our tokenizer's) as llama.cpp's converter writes one."""

    def add(w) -> None:
        vocab = sorted(
            tok._hf_plain.get_vocab(with_added_tokens=True).items(), key=lambda kv: kv[1]
        )
        merges = json.loads(tok.to_json())["model"]["merges"]
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre("llama-bpe")
        w.add_token_list([t for t, _ in vocab])
        w.add_token_types([3 if i in tok.special_ids.values() else 1 for _, i in vocab])
        w.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])
        w.add_bos_token_id(tok.bos_id)
        w.add_eos_token_id(tok.special_ids["<|assistant_end|>"])
        for key, v in extra.items():
            getattr(w, f"add_{key}")(v)

    return add


@pytest.mark.parametrize("flag", [True, False, None])
@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_prompt_starts_as_the_files_add_bos_token_says(tmp_path, tok, kind, flag) -> None:
    """`tokenizer.ggml.add_bos_token` decides whether a prompt starts with the bos, as in
    transformers' tokenizer for the same file; without the key a SentencePiece vocabulary adds
    it and a byte-level one does not (llama.cpp's defaults, which transformers follows)."""
    from transformers import AutoTokenizer

    from twofiles.engine import encode_prompt
    from twofiles.formats.gguf import load_gguf

    extra = {} if flag is None else {"add_bos_token": flag}
    if kind == "gpt2":
        kv, vocab_size = gpt2_kv(tok, **extra), tok.vocab_size
    else:
        tokens, scores, types = spm_vocab()
        kv, vocab_size = spm_kv(tokens, scores, types, **extra), len(tokens)
    write_gguf(tmp_path / "m.gguf", random_model(tiny_cfg(vocab_size, n_layers=1)), kv)
    ours = load_gguf(tmp_path / "m.gguf").tokenizer
    theirs = AutoTokenizer.from_pretrained(str(tmp_path), gguf_file="m.gguf")
    expected = flag if flag is not None else kind == "llama"
    assert ours.add_bos is expected
    for text in TEXTS[:2]:
        plain = theirs.encode(text, add_special_tokens=False)
        assert theirs(text)["input_ids"] == [ours.bos_id] * expected + plain, text
        assert encode_prompt(ours, text) == theirs(text)["input_ids"], text


def test_add_bos_token_that_is_not_a_boolean_is_bad_input(tmp_path, tok) -> None:
    from twofiles.formats.gguf import load_gguf

    def kv(w) -> None:
        gpt2_kv(tok)(w)
        w.add_uint32("tokenizer.ggml.add_bos_token", 1)

    write_gguf(tmp_path / "m.gguf", random_model(tiny_cfg(tok.vocab_size, n_layers=1)), kv)
    with pytest.raises(BadInputError, match="add_bos_token = 1 is not a boolean"):
        load_gguf(tmp_path / "m.gguf")


@pytest.mark.parametrize("add_bos", [True, False])
def test_export_gguf_keeps_the_prompt_rule(tmp_path, tok, add_bos) -> None:
    from twofiles.formats.gguf import load_gguf
    from twofiles.formats.gguf_export import export_gguf

    ours = Tokenizer.from_json(tok.to_json(), add_bos=add_bos)
    model = random_model(tiny_cfg(tok.vocab_size, n_layers=1))
    export_gguf(loaded(model, ours), tmp_path / "m.gguf", qtype="f32")
    assert load_gguf(tmp_path / "m.gguf").tokenizer.add_bos is add_bos


def test_spm_without_space_prefix(tmp_path, spm_gguf) -> None:
    from twofiles.formats.gguf import load_gguf

    tokens, scores, types = spm_vocab()
    model = random_model(tiny_cfg(len(tokens), n_layers=1))
    write_gguf(tmp_path / "m.gguf", model, spm_kv(tokens, scores, types, add_space_prefix=False))
    with_prefix, without = (
        load_gguf(spm_gguf[0]).tokenizer,
        load_gguf(tmp_path / "m.gguf").tokenizer,
    )
    assert without.encode("hello") != with_prefix.encode("hello")
    assert without.encode(" hello") == with_prefix.encode("hello")
    assert without.decode(without.encode("hello world")) == "hello world"


def test_spm_gguf_exports_and_reimports(tmp_path, spm_gguf) -> None:
    from twofiles.formats.gguf import load_gguf
    from twofiles.formats.gguf_export import export_gguf

    first = load_gguf(spm_gguf[0])
    export_gguf(first, tmp_path / "again.gguf", qtype="f32")
    r = gguf.GGUFReader(str(tmp_path / "again.gguf"))
    assert r.fields["tokenizer.ggml.model"].contents() == "llama"
    assert r.fields["tokenizer.ggml.token_type"].contents()[3] == 6  # byte tokens stay BYTE
    again = load_gguf(tmp_path / "again.gguf")
    for text in unicode_sample(40) + SPM_CORPUS[:3]:
        assert again.tokenizer.encode(text) == first.tokenizer.encode(text), repr(text)
    x = torch.tensor([[1] + first.tokenizer.encode(SPM_CORPUS[1])])
    with torch.no_grad():
        torch.testing.assert_close(again.model(x), first.model(x), atol=0, rtol=0)


# ---------------------------------------------------------------------------- Llama 3 RoPE scaling


def write_llama3_hf_dir(path: Path, tok: Tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=tok.vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        rope_scaling=dict(LLAMA3),
        bos_token_id=tok.bos_id,
        eos_token_id=tok.bos_id,
    )
    torch.manual_seed(2)
    hf = LlamaForCausalLM(cfg)
    with torch.no_grad():
        for name, p in hf.named_parameters():  # sharp attention (large q/k), so positions matter
            p.normal_(0, 0.5 if ("q_proj" in name or "k_proj" in name) else 0.1)
    hf.eval().save_pretrained(path)
    tok.save(path / "tokenizer.json")
    return hf


def test_llama3_rope_matches_transformers(tmp_path, tok) -> None:
    from transformers import AutoModelForCausalLM

    from twofiles.formats.hf import export_hf
    from twofiles.formats.resolve import resolve_model
    from twofiles.model import rope_inv_freq

    hf = write_llama3_hf_dir(tmp_path / "hf", tok)
    ours = resolve_model(str(tmp_path / "hf"))
    assert ours.model.config.rope_scaling == LLAMA3
    theirs_inv = hf.model.rotary_emb.inv_freq
    torch.testing.assert_close(
        rope_inv_freq(16, 10000.0, LLAMA3), theirs_inv.float(), atol=0, rtol=1e-6
    )
    assert not torch.allclose(
        rope_inv_freq(16, 10000.0), theirs_inv.float()
    )  # the scaling changes something
    ids = torch.tensor(
        [[tok.bos_id] + tok.encode(" ".join(TEXTS))[:60]]
    )  # long enough for slow frequencies to matter
    with torch.no_grad():
        expected = hf(ids).logits
        torch.testing.assert_close(ours.model(ids), expected, atol=1e-4, rtol=1e-4)
        plain = Transformer(ModelConfig(**{**ours.model.config.to_dict(), "rope_scaling": None}))
        plain.load_state_dict(ours.model.state_dict())
        assert (plain(ids) - expected).abs().max() > 1e-3  # without the scaling the logits differ
    export_hf(ours, tmp_path / "out")
    assert (
        json.loads((tmp_path / "out" / "config.json").read_text())["rope_scaling"]["rope_type"]
        == "llama3"
    )
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    with torch.no_grad():
        torch.testing.assert_close(again(ids).logits, expected, atol=1e-4, rtol=1e-4)
    # the parameters file keeps it
    back = resolve_model(str(save_model(tmp_path / "m.safetensors", ours.model, ours.tokenizer)))
    assert back.model.config.rope_scaling == LLAMA3


def test_llama3_scaling_fit_from_rope_freqs() -> None:
    """Real Llama 3.1 files store only the divisors (original context 8192, low 1, high 4, factor 8)."""
    from twofiles.formats.gguf import llama3_scaling
    from twofiles.model import rope_inv_freq

    for scaling, head_dim, theta in [
        (
            {
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192,
            },
            128,
            500000.0,
        ),
        (
            {
                "rope_type": "llama3",
                "factor": 32.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192,
            },
            64,
            500000.0,
        ),
        (LLAMA3, 16, 10000.0),
    ]:
        factors = (
            (
                rope_inv_freq(head_dim, theta).double()
                / rope_inv_freq(head_dim, theta, scaling).double()
            )
            .float()
            .double()
            .numpy()
        )
        assert (
            llama3_scaling(factors, head_dim, theta, scaling["original_max_position_embeddings"])
            == scaling
        )
    with pytest.raises(BadInputError, match="Llama 3"):
        llama3_scaling(np.linspace(1, 3, 8), 16, 10000.0, 2048)


def test_bad_rope_scaling_is_refused(tmp_path, tok) -> None:
    from twofiles.formats.hf import load_hf_dir

    write_llama3_hf_dir(tmp_path, tok)
    cfg = json.loads((tmp_path / "config.json").read_text())
    key = "rope_parameters" if "rope_parameters" in cfg else "rope_scaling"
    for bad in [
        {"rope_type": "llama3", "factor": -1.0},
        {"rope_type": "llama3", **{k: v for k, v in LLAMA3.items() if k != "factor"}},
        {"rope_type": "llama3", **{**LLAMA3, "high_freq_factor": 0.5}},
        {"rope_type": "yarn", "factor": 4.0},
        "llama3",
    ]:
        (tmp_path / "config.json").write_text(json.dumps({**cfg, key: bad}))
        with pytest.raises(BadInputError, match="(?i)rope"):
            load_hf_dir(tmp_path)
    with pytest.raises(ValueError):
        ModelConfig(rope_scaling={"rope_type": "linear", "factor": 2.0})


def test_gguf_other_rope_scaling_is_refused(tmp_path, tok) -> None:
    from twofiles.formats.gguf import load_gguf

    spec = json.loads(tok.to_json())
    vocab = [t for t, _ in sorted(spec["model"]["vocab"].items(), key=lambda kv: kv[1])]

    def kv(extra):
        def add(w) -> None:
            w.add_tokenizer_model("gpt2")
            w.add_tokenizer_pre("llama-bpe")
            w.add_token_list(vocab)
            w.add_token_merges(
                [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
            )
            w.add_bos_token_id(tok.bos_id)
            extra(w)

        return add

    model = random_model(tiny_cfg(tok.vocab_size, n_layers=1))
    write_gguf(
        tmp_path / "ok.gguf", model, kv(lambda w: w.add_rope_scaling_factor(1.0))
    )  # 1 = no scaling
    assert load_gguf(tmp_path / "ok.gguf").model.config.rope_scaling is None
    for extra in (
        lambda w: w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR),
        lambda w: w.add_rope_scaling_factor(4.0),
        lambda w: w.add_rope_scaling_type(gguf.RopeScalingType.YARN),
    ):
        write_gguf(tmp_path / "m.gguf", model, kv(extra))
        with pytest.raises(BadInputError, match="RoPE scaling"):
            load_gguf(tmp_path / "m.gguf")


# ---------------------------------------------------------------------------- hostile files


def _load_all(path: Path, cases: list[bytes]) -> dict[str, int]:
    from twofiles.formats.gguf import load_gguf

    outcomes = {"ok": 0, "bad": 0}
    for case in cases:
        path.write_bytes(case)
        t0 = time.perf_counter()
        try:
            load_gguf(path)
            outcomes["ok"] += 1
        except BadInputError as e:
            assert str(path) in str(e)
            outcomes["bad"] += 1
        assert time.perf_counter() - t0 < 10, "a hostile file must not hang the loader"
    return outcomes


def _mutations(data: bytes, header_end: int, n: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    out = [data[: rng.randrange(len(data))] for _ in range(n // 4)]
    for _ in range(n - len(out)):
        mutated = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(header_end)
            mutated[i] = rng.choice([0, 0xFF, mutated[i] ^ (1 << rng.randrange(8))])
        out.append(bytes(mutated))
    return out


def test_fuzz_spm_and_rope_scaling_metadata(tmp_path, tok) -> None:
    from twofiles.formats.gguf_export import export_gguf

    tokens, scores, types = spm_vocab()
    small = dict(dim=32, n_layers=1, n_heads=2, n_kv_heads=1, hidden_dim=64, max_seq_len=32)
    write_gguf(
        tmp_path / "spm.gguf",
        random_model(tiny_cfg(len(tokens), **small)),
        spm_kv(tokens, scores, types),
    )
    spm = (tmp_path / "spm.gguf").read_bytes()
    export_gguf(
        loaded(random_model(tiny_cfg(tok.vocab_size, **small, rope_scaling=LLAMA3)), tok),
        tmp_path / "rope.gguf",
        qtype="f32",
    )
    rope = (tmp_path / "rope.gguf").read_bytes()

    cases = _mutations(spm, spm.index(b"token_embd.weight") + 200, 120, 1)
    cases += _mutations(rope, rope.index(b"rope_freqs.weight") + 100, 80, 2)
    # targeted: the scores array, rope_freqs values, metadata values of the wrong type
    scores_at = (
        spm.index(b"tokenizer.ggml.scores") + len(b"tokenizer.ggml.scores") + 4 + 4
    )  # after key, value type, item type
    cases.append(
        spm[:scores_at] + (len(tokens) - 1).to_bytes(8, "little") + spm[scores_at + 8 :]
    )  # one score short
    cases.append(
        spm[:scores_at] + (2**62).to_bytes(8, "little") + spm[scores_at + 8 :]
    )  # absurd count
    nan = spm[: scores_at + 8] + np.float32("nan").tobytes() + spm[scores_at + 12 :]
    cases.append(nan)
    freqs = next(
        t
        for t in gguf.GGUFReader(str(tmp_path / "rope.gguf")).tensors
        if t.name == "rope_freqs.weight"
    )
    at = int(freqs.data_offset)
    for values in (np.full(8, np.inf), np.full(8, 0.5), np.linspace(1, 3, 8), -np.ones(8)):
        cases.append(rope[:at] + values.astype("<f4").tobytes() + rope[at + 32 :])
    outcomes = _load_all(tmp_path / "bad.gguf", cases)
    assert outcomes["bad"] > 150
    for i in (-4, -3, -2, -1):  # each of the bad rope_freqs alone is refused
        assert _load_all(tmp_path / "bad.gguf", [cases[i]]) == {"ok": 0, "bad": 1}
    assert _load_all(tmp_path / "bad.gguf", [nan]) == {"ok": 0, "bad": 1}


# ---------------------------------------------------------------------------- llama.cpp itself
# llama-cpp-python compiles llama.cpp from source: `make test` builds a portable wheel once (see the
# Makefile's llama-cpp target) and installs it, so these run in CI.
LLAMA_CPP_INSTALL = "run `make llama-cpp` (a portable build of llama-cpp-python, cached)"


def _llama_cpp_logits_and_greedy(
    path: Path, ids: list[int], n: int, n_ctx: int
) -> tuple[np.ndarray, list[int]]:
    """llama.cpp's logits for every prompt position and its greedy continuation of `ids`."""
    llama_cpp = require("llama_cpp", LLAMA_CPP_INSTALL)
    llm = llama_cpp.Llama(
        model_path=str(path), n_ctx=n_ctx, n_threads=2, logits_all=True, verbose=False
    )
    try:
        llm.eval(ids)
        logits = np.array(llm.scores[: len(ids)])
        llm.reset()
        out: list[int] = []
        for token in llm.generate(ids, temp=0.0, top_k=1, reset=True):
            out.append(int(token))
            if len(out) == n:
                break
        return logits, out
    finally:
        llm.close()


@pytest.mark.parametrize("variant", ["gqa", "tied", "qkv_bias", "llama3_rope"])
@pytest.mark.parametrize("qtype", ["f32", "f16"])
def test_llama_cpp_runs_the_exported_gguf(tmp_path, tok, variant, qtype) -> None:
    """llama.cpp's own loader and kernels on our file: same logits to its rounding, same greedy tokens."""
    require("llama_cpp", LLAMA_CPP_INSTALL)
    from twofiles.engine import SamplingParams, generate
    from twofiles.formats.gguf_export import export_gguf

    model = random_model(tiny_cfg(tok.vocab_size, **VARIANTS[variant]))
    export_gguf(loaded(model, tok), tmp_path / "m.gguf", qtype=qtype)
    ids = ids_for(tok)[0].tolist()
    theirs, their_tokens = _llama_cpp_logits_and_greedy(
        tmp_path / "m.gguf", ids, 12, model.config.max_seq_len
    )
    with torch.no_grad():
        ours = model(torch.tensor([ids]))[0].numpy()
    rel = np.abs(theirs - ours).max() / ours.std()
    assert rel < (5e-3 if qtype == "f32" else 2e-2), (
        rel
    )  # f32: llama.cpp still keeps its KV cache in f16
    assert their_tokens == list(generate(model, ids, SamplingParams(temperature=0, max_tokens=12)))


SMOLLM2_GGUF = Path("~/.cache/twofiles/smollm2.gguf").expanduser()


@pytest.mark.slow
@pytest.mark.skipif(not SMOLLM2_GGUF.is_file(), reason="smollm2 not cached (twofiles pull smollm2)")
@pytest.mark.parametrize("qtype", ["f32", "q8_0"])
def test_llama_cpp_runs_smollm2_exported_by_us(tmp_path, qtype) -> None:
    """A real model through `twofiles export gguf`, then llama.cpp: its tokenizer reads our vocabulary
    the same way, and greedy decoding agrees for 32 tokens. At q8_0 llama.cpp also rounds the
    activations to 8 bits, in a SIMD order that depends on the build, so only the tokens are
    compared, up to the first near-tie of ours (top-2 logits closer than 0.1), and that prefix
    must hold at least 16 tokens."""
    from twofiles.engine import SamplingParams, generate
    from twofiles.formats.gguf_export import export_gguf
    from twofiles.formats.resolve import resolve_model

    export_gguf(resolve_model("smollm2"), tmp_path / "s.gguf", qtype=qtype)
    back = resolve_model(str(tmp_path / "s.gguf"))
    text = "The capital of France is"
    ids = back.tokenizer.encode(text)
    llama_cpp = require("llama_cpp", LLAMA_CPP_INSTALL)
    llm = llama_cpp.Llama(
        model_path=str(tmp_path / "s.gguf"), n_ctx=64, vocab_only=True, verbose=False
    )
    try:
        assert llm.tokenize(text.encode(), add_bos=False, special=False) == ids
    finally:
        llm.close()
    theirs, their_tokens = _llama_cpp_logits_and_greedy(tmp_path / "s.gguf", ids, 32, 256)
    our_tokens = list(generate(back.model, ids, SamplingParams(temperature=0, max_tokens=32)))
    assert len(our_tokens) == len(their_tokens) == 32
    if qtype == "q8_0":
        with torch.no_grad():
            top2 = back.model(torch.tensor([ids + our_tokens]))[0, len(ids) - 1 : -1].topk(2)
        margins = (top2.values[:, 0] - top2.values[:, 1]).tolist()
        clear = next((i for i, m in enumerate(margins) if m < 0.1), 32)
        assert clear >= 16, margins
        our_tokens, their_tokens = our_tokens[:clear], their_tokens[:clear]
    assert their_tokens == our_tokens
    if qtype == "f32":
        with torch.no_grad():
            ours = back.model(torch.tensor([ids]))[0].numpy()
        assert np.abs(theirs - ours).max() / ours.std() < 1e-2
