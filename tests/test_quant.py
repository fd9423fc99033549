"""Weight-only quantization: the schemes against a naive loop, the modules against fp32 nn.Linear,
whole models against their fp32 selves, and `generate --quantize` end to end."""

from __future__ import annotations

import json
import math
import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from twofiles.engine import SamplingParams, generate
from twofiles.errors import TwofilesError
from twofiles.model import ModelConfig, Transformer
from twofiles.quant import (
    Int4Linear,
    Int8Embedding,
    Int8Linear,
    PackedLinear,
    dequantize_int4,
    dequantize_int8,
    onednn_linear_available,
    pack_linears,
    prepare_for_inference,
    quantize_int4,
    quantize_int8,
    quantize_model,
)


def bf16(x: float) -> float:
    return torch.tensor(x).to(torch.bfloat16).float().item()


def naive_int8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The scheme as written in the docstring, one row at a time."""
    q = torch.empty(w.shape, dtype=torch.int8)
    s = torch.empty(w.shape[0])
    for n in range(w.shape[0]):
        scale = bf16(max(max(abs(v) for v in w[n].tolist()) / 127, 1e-8))
        s[n] = scale
        for k in range(w.shape[1]):
            q[n, k] = int(min(127, max(-127, round(w[n, k].item() / scale))))
    return q, s


def naive_int4(w: torch.Tensor, gs: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    N, K = w.shape
    q = torch.empty(N, K, dtype=torch.uint8)
    s, z = torch.empty(N, K // gs), torch.empty(N, K // gs)
    for n in range(N):
        for g in range(K // gs):
            vals = w[n, g * gs : (g + 1) * gs].tolist()
            scale = bf16(max((max(vals) - min(vals)) / 15, 1e-6))
            zero = bf16(min(vals) + scale * 8)
            s[n, g], z[n, g] = scale, zero
            for j, v in enumerate(vals):
                q[n, g * gs + j] = int(min(15, max(0, round((v - zero) / scale + 8))))
    return q, s, z


def test_int8_matches_the_naive_scheme_and_round_trips():
    w = torch.randn(12, 40, generator=torch.Generator().manual_seed(0)) * 0.1
    q, s = quantize_int8(w)
    nq, ns = naive_int8(w)
    assert torch.equal(s, ns)
    # torch.round and Python's round both round half to even; allow the odd float-division tie.
    assert (q.int() - nq.int()).abs().max() <= 1 and (q != nq).float().mean() < 0.01
    err = (dequantize_int8(q, s) - w).abs()
    assert (
        err <= s[:, None] * 0.5 * 1.01 + 1e-7
    ).all()  # at most half a step (scale is bf16-rounded up or down)
    assert q.abs().max() == 127  # the largest weight of some row lands on the end of the grid


@pytest.mark.parametrize("gs", [32, 64])
def test_int4_matches_the_naive_scheme_and_round_trips(gs):
    w = torch.randn(6, 128, generator=torch.Generator().manual_seed(1))
    q, s, z = quantize_int4(w, gs)
    nq, ns, nz = naive_int4(w, gs)
    assert torch.equal(s, ns) and torch.equal(z, nz)
    assert (q.int() - nq.int()).abs().max() <= 1 and (q != nq).float().mean() < 0.01
    assert q.max() <= 15
    deq = dequantize_int4(q, s, z, gs)
    step = s.repeat_interleave(gs, dim=1)
    assert ((deq - w).abs() <= step * 0.5 * 1.05 + 1e-6).all()
    with pytest.raises(ValueError, match="multiple of group_size"):
        quantize_int4(torch.randn(4, 48), 32)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("backend", ["packed", "dequant"])
def test_quantized_linear_is_close_to_fp32(backend):
    g = torch.Generator().manual_seed(2)
    lin = nn.Linear(128, 64, bias=True)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(64, 128, generator=g) * 0.05)
        lin.bias.copy_(torch.randn(64, generator=g))
    x = torch.randn(3, 5, 128, generator=g)
    ref = lin(x).detach()
    q8 = Int8Linear.from_linear(lin, backend=backend)
    q4 = Int4Linear.from_linear(lin, 32, backend=backend)
    assert q8.packed == q4.packed == (backend == "packed")
    with torch.no_grad():
        y8, y4 = q8(x), q4(x)
    assert y8.shape == y4.shape == ref.shape and y8.dtype == y4.dtype == torch.float32
    # Stated bounds: int8 per-channel ~0.5% (+ bf16 activations on the packed path); int4 groups of 32 ~8%.
    assert rel_err(y8, ref) < 0.01
    assert rel_err(y4, ref) < 0.10
    # Each module equals a plain fp32 matmul with its own dequantized weight, up to bf16 activations.
    with torch.no_grad():
        for m, y in ((q8, y8), (q4, y4)):
            exact = x @ m.dequantized_weight().T + lin.bias
            assert rel_err(y, exact) < (0.01 if backend == "packed" else 1e-5)


def test_packed_int4_weight_reads_back_exactly():
    lin = nn.Linear(64, 32, bias=False)
    q, s, z = quantize_int4(lin.weight, 32)
    packed = Int4Linear.from_linear(lin, 32, backend="packed")
    assert packed.packed
    assert torch.allclose(
        packed.dequantized_weight(), dequantize_int4(q, s, z, 32), rtol=1e-2, atol=1e-3
    )


def tiny_model(tie: bool = False) -> Transformer:
    cfg = ModelConfig(
        vocab_size=320,
        dim=64,
        n_layers=2,
        n_heads=4,
        n_kv_heads=2,
        hidden_dim=128,
        max_seq_len=64,
        tie_embeddings=tie,
    )
    model = Transformer(cfg)
    model.init_weights(seed=0)
    g = torch.Generator().manual_seed(3)
    with (
        torch.no_grad()
    ):  # trained-looking weights: nothing left at its zero init, a readable spread of logits
        for p in model.parameters():
            if p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=g) * p.shape[1] ** -0.5)
        model.lm_head.weight.mul_(3.0)
    return model.eval()


def greedy(model: Transformer, prompt: list[int], n: int) -> list[int]:
    return list(generate(model, prompt, SamplingParams(temperature=0, max_tokens=n)))


def test_int8_model_keeps_greedy_tokens_and_int4_stays_close():
    ref_model = tiny_model()
    prompt = [1, 17, 42, 99, 5]
    x = torch.tensor([prompt])
    with torch.no_grad():
        ref_logits = ref_model(x)
    want = greedy(ref_model, prompt, 16)

    m8 = tiny_model()
    report = quantize_model(m8, "int8")
    assert all(isinstance(m, (Int8Linear,)) for m in (m8.lm_head, m8.model.layers[0].mlp.down_proj))
    assert not any(isinstance(m, nn.Linear) for m in m8.modules())
    assert len(report.layers) == 2 * 7 + 1 and report.bytes_after < report.bytes_before / 2
    with torch.no_grad():
        assert (
            rel_err(m8(x), ref_logits) < 0.03
        )  # int8 weights ~0.7% each, bf16 activations and logits
    assert greedy(m8, prompt, 16) == want

    m4 = tiny_model()
    report = quantize_model(m4, "int4", group_size=32)
    assert {v.split()[0] for v in report.layers.values()} == {"int4"}
    with torch.no_grad():
        # 16 levels over a group's range of Gaussian weights: ~9% error per weight, compounding
        # over two blocks and the head. (Weights that came from a 4-bit file sit on the grid:
        # smollm2 measures ~5%, docs/LOG.md.)
        assert rel_err(m4(x), ref_logits) < 0.35


def test_int4_falls_back_where_the_kernel_cannot_run():
    model = tiny_model()
    report = quantize_model(
        model, "int4", group_size=128
    )  # in_features 64 is no multiple of 128: int8
    assert report.layers["model.layers.0.self_attn.q_proj"].startswith("int8")
    assert report.layers["model.layers.0.mlp.down_proj"].startswith("int4")  # in_features 128
    odd = nn.Linear(64, 40)  # out_features not a multiple of 16: the packed kernel refuses it
    assert not Int4Linear.from_linear(odd, 32).packed
    with pytest.raises(TwofilesError, match="group_size"):
        quantize_model(tiny_model(), "int4", group_size=16)
    with pytest.raises(TwofilesError, match="quantize"):
        prepare_for_inference(tiny_model(), quantize="int3")


def test_tied_int8_embedding_shares_the_head_and_matches():
    ref_model = tiny_model(tie=True)
    model = tiny_model(tie=True)
    report = quantize_model(model, "int8", embedding=True)
    emb = model.model.embed_tokens
    assert isinstance(emb, Int8Embedding) and emb.qweight is model.lm_head.qweight
    assert "shared" in report.layers["model.embed_tokens"]
    idx = torch.tensor([[3, 7, 300]])
    with torch.no_grad():
        assert rel_err(emb(idx), ref_model.model.embed_tokens(idx)) < 0.01
    prompt = [1, 17, 42, 99, 5]
    assert greedy(model, prompt, 12) == greedy(ref_model, prompt, 12)


def test_prepare_for_inference_reports_what_it_did():
    model = tiny_model()
    setup = prepare_for_inference(
        model, quantize="int4", threads=torch.get_num_threads(), compile=False
    )
    assert setup.quantize == "int4" and setup.dtype == "float32" and not setup.compiled
    assert setup.report is not None and any("int4" in r for r in setup.reasons)
    assert len(greedy(model, [1, 2, 3], 4)) == 4


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    from twofiles.artifact import save_model
    from twofiles.tokenizer import Tokenizer

    tok = Tokenizer.train(["to be or not to be, that is the question. " * 40], 320)
    model = tiny_model()
    assert model.config.vocab_size >= tok.vocab_size
    model.config.vocab_size = tok.vocab_size
    small = Transformer(model.config)
    sd = {
        k: (v[: tok.vocab_size] if k in ("model.embed_tokens.weight", "lm_head.weight") else v)
        for k, v in model.state_dict().items()
    }
    small.load_state_dict(sd)
    return str(save_model(tmp_path_factory.mktemp("m") / "model.safetensors", small, tok))


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_generate_cli_quantize(model_path, capsys, mode):
    from twofiles.cli import main

    rc = main(
        [
            "generate",
            model_path,
            "--prompt",
            "to be",
            "--temperature",
            "0",
            "--max-tokens",
            "6",
            "--quantize",
            mode,
            "--threads",
            "1",
            "--json",
        ]
    )
    out, err = capsys.readouterr()
    assert rc == 0, err
    summary = json.loads(out.splitlines()[-1])
    assert summary["quantize"] == mode and summary["tokens"] >= 1
    assert summary["prompt_tokens_per_second"] > 0 and summary["decode_tokens_per_second"] >= 0
    assert mode in err  # the set-up line says what was quantized
    with pytest.raises(SystemExit) as bad:  # argparse rejects an unknown mode before anything loads
        main(["generate", model_path, "--prompt", "to be", "--quantize", "int5"])
    assert bad.value.code == 2


SMOLLM2 = os.path.expanduser("~/.cache/twofiles/smollm2.gguf")


def test_bf16_inference_casts_weights_and_keeps_rope_tables_fp32():
    """dtype="bf16" is what runtime decides on CUDA; run here on the CPU to test the cast."""
    ref = tiny_model()
    model = tiny_model()
    setup = prepare_for_inference(model, dtype="bf16", quantize="int8")
    assert setup.dtype == "bfloat16" and model.model.norm.weight.dtype == torch.bfloat16
    assert model.rope_cos.dtype == torch.float32 and torch.equal(model.rope_cos, ref.rope_cos)
    x = torch.tensor([[1, 17, 42, 99, 5]])
    with torch.no_grad():
        assert rel_err(model(x), ref(x)) < 0.05
    assert len(greedy(model, [1, 2, 3], 4)) == 4


needs_onednn = pytest.mark.skipif(not onednn_linear_available(), reason="this torch has no oneDNN")


@needs_onednn
@pytest.mark.parametrize("bias", [False, True])
def test_packed_linear_is_f_linear_to_rounding(bias):
    g = torch.Generator().manual_seed(5)
    lin = nn.Linear(96, 160, bias=bias)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(lin.weight.shape, generator=g))
        if bias:
            lin.bias.copy_(torch.randn(160, generator=g))
    packed = PackedLinear(lin)
    for x in (
        torch.randn(1, 96, generator=g),  # a decode row
        torch.randn(2, 7, 96, generator=g),  # a prompt chunk
        torch.randn(3, 5, 96, generator=g)[
            :, -1
        ],  # a non-contiguous slice (the prompt's last position)
    ):
        with torch.inference_mode():
            got, want = packed(x), lin(x)
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        # bf16 storage with fp32 activations: fp32 math on the bf16-rounded weight, to the
        # rounding of the product's bf16 output (half a bf16 step: 2^-9 relative; the bound
        # allows 2^-8). The activation is not rounded (it goes in as two bf16 rows, hi and lo):
        # rounding it too (`crude`) breaks the bound for a quarter of the outputs
        packed16 = PackedLinear(lin, torch.bfloat16)
        rounded_bias = lin.bias.bfloat16() if lin.bias is not None else None
        with torch.inference_mode():
            got = packed16(x)
            want = F.linear(
                x, lin.weight.bfloat16().float(), None if lin.bias is None else rounded_bias.float()
            )
            crude = F.linear(x.bfloat16(), lin.weight.bfloat16(), rounded_bias).float()
        assert got.dtype == torch.float32 and got.shape == want.shape
        bound = 2**-8 * (want.abs() + (0 if rounded_bias is None else rounded_bias.float().abs()))
        over = ((got - want).abs() > bound + 1e-6).double().mean().item()
        crude_over = ((crude - want).abs() > bound + 1e-6).double().mean().item()
        assert over <= 0.05 and crude_over >= 0.15, (over, crude_over)
    with pytest.raises(ValueError, match="fp32 or bf16 CPU"):
        PackedLinear(nn.Linear(4, 4).half())


@needs_onednn
@pytest.mark.parametrize("tie", [False, True])
def test_fused_and_packed_model_generates_what_the_plain_one_does(tie):
    ref, model = tiny_model(tie), tiny_model(tie)
    setup = prepare_for_inference(model, dtype="fp32", layout="packed")
    assert any("fused projections: 4 groups" in r for r in setup.reasons)
    assert any("oneDNN packed fp32 linears: 9" in r for r in setup.reasons)  # 4 per layer + lm_head
    assert not any(type(m) is nn.Linear for m in model.modules())
    if tie:  # the lookup keeps the embedding; the head has its own packed copy
        assert (
            isinstance(model.lm_head, PackedLinear)
            and model.model.embed_tokens.weight.dtype == torch.float32
        )
    x = torch.tensor([[1, 17, 42, 99, 5]])
    with torch.inference_mode():
        torch.testing.assert_close(model(x), ref(x), rtol=1e-4, atol=1e-4)
    prompt = [1, 17, 42, 99, 5]
    assert greedy(model, prompt, 24) == greedy(ref, prompt, 24)


def test_prepare_for_inference_can_leave_the_layout_alone():
    model = tiny_model()
    setup = prepare_for_inference(model, dtype="fp32", layout="plain")
    assert not any("fused projections" in r or "packed" in r for r in setup.reasons)
    assert sum(type(m) is nn.Linear for m in model.modules()) == 2 * 7 + 1
    assert pack_linears(nn.Sequential(nn.Linear(4, 4).half())) == []  # fp32 and bf16 only


def test_fused_int8_model_quantizes_the_fused_projections():
    """Per-row scales: quantizing [q; k; v] at once is quantizing q, k and v apart."""
    plain, fused = tiny_model(), tiny_model()
    quantize_model(plain, "int8")
    fused.fuse_projections()
    report = quantize_model(fused, "int8")
    assert len(report.layers) == 2 * 4 + 1
    x = torch.tensor([[1, 17, 42, 99, 5]])
    with torch.inference_mode():
        torch.testing.assert_close(fused(x), plain(x), rtol=1e-3, atol=1e-3)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["none", "int4"])
def test_compiled_model_generates_what_eager_does(mode):
    """torch.compile (inductor, dynamic shapes) over the inference layout: the same greedy tokens
    as eager, across a prefill and decode steps whose cache length changes every step. (fp32 with
    compile skips the oneDNN packing, which inductor cannot lower: this once crashed.)"""
    import shutil

    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("inductor's CPU backend needs a C compiler")
    ref, model = tiny_model(), tiny_model()
    prepare_for_inference(ref, quantize=mode)
    setup = prepare_for_inference(model, quantize=mode, compile=True)
    assert setup.compiled and (
        mode != "none" or any("torch.compile cannot take" in r for r in setup.reasons)
    )
    from torch._dynamo.utils import counters

    assert greedy(model, [1, 17, 42, 99, 5], 12) == greedy(ref, [1, 17, 42, 99, 5], 12)
    compiled = dict(counters["frames"])
    # another prompt length and output length: the same tokens as eager, and no recompile (the
    # engine sizes KV caches in powers of two, and dynamic shapes cover the positions)
    assert greedy(model, [7, 3], 20) == greedy(ref, [7, 3], 20)
    assert dict(counters["frames"]) == compiled


@pytest.mark.slow
def test_generate_cli_compile_reports_its_compile_apart(model_path, capsys):
    """--compile builds the graph on a throwaway start of the request: the reported speeds are the
    compiled model's, the compile time is its own field, and the text is eager's."""
    import shutil

    from twofiles.cli import main

    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("inductor's CPU backend needs a C compiler")
    base = [
        "generate",
        model_path,
        "--prompt",
        "to be",
        "--temperature",
        "0",
        "--max-tokens",
        "12",
        "--quantize",
        "int8",
        "--json",
    ]
    summaries = []
    torch._dynamo.reset()  # graphs compiled by earlier tests in this process would be reused
    for extra in (["--no-compile"], []):  # quantized on CPU compiles by default
        assert main(base + extra) == 0
        summaries.append(json.loads(capsys.readouterr().out.splitlines()[-1]))
    eager, compiled = summaries
    assert (
        compiled["compiled"] and compiled["compile_seconds"] > 0 and eager["compile_seconds"] == 0
    )
    assert compiled["text"] == eager["text"] and compiled["tokens"] == eager["tokens"]
    assert (
        compiled["seconds"] < compiled["compile_seconds"]
    )  # the compile is not in the generation's time


# ---------------------------------------------------------------------------------------------
# SmolLM2 in the layout generate, chat and serve use, and what int8 / int4 cost it


HELD_OUT_TOKENS = 1024  # teacher-forced positions of held-out text for the agreement check
# Measured on SmolLM2-135M over these 1024 tokens (docs/LOG.md, 2026-12-06): bf16 weights with
# fp32 activations top-1 0.979, +0.0003 bits per byte; int8 top-1 0.956,
# +0.002 bits per byte; int4 (groups of 32) 0.786, +0.034 (over 2048 tokens: 0.951 / 0.807). The
# bounds leave room for other CPUs' kernels and rounding, yet a broken kernel fails them: it drops
# agreement towards chance and costs bits by the whole bit.
QUANT_BOUNDS = {  # (top-1 at least, Δbpb at most)
    "fp32": (0.995, 1e-4),  # fused, packed: the same math, summed in another order
    "bf16": (0.95, 0.005),  # bf16 weights, fp32 activations
    "int8": (0.92, 0.01),
    "int4": (0.72, 0.08),
}


@pytest.fixture(scope="module")
def smollm2_plain():
    """SmolLM2 as loaded (plain layout, fp32), and held-out text as ids with the plain logits."""
    from twofiles.data.builtin import shakespeare_documents
    from twofiles.formats.resolve import resolve_model

    if not os.path.isfile(SMOLLM2):
        pytest.skip("smollm2 not cached (twofiles pull smollm2)")
    loaded = resolve_model("smollm2")
    text = shakespeare_documents()[-1].text[20_000:60_000]  # far from any prompt used here
    ids = torch.tensor([loaded.tokenizer.encode(text)[: HELD_OUT_TOKENS + 1]])
    with torch.inference_mode():
        logits = loaded.model(ids[:, :-1]).float()[0]
    return loaded, ids, logits


def bits_per_byte(logits: torch.Tensor, ids: torch.Tensor, token_bytes: torch.Tensor) -> float:
    targets = ids[0, 1:]
    nll = -logits.log_softmax(-1)[torch.arange(len(targets)), targets].double()
    return nll.sum().item() / math.log(2) / token_bytes[targets].sum().item()


@pytest.mark.slow
def test_smollm2_in_the_inference_layout_generates_what_the_plain_model_does(smollm2_plain):
    """The fp32 inference layout (what generate, chat and serve run where the probe keeps fp32,
    and with --dtype fp32): fused q/k/v and gate/up projections, oneDNN-packed fp32 linears; the
    same greedy tokens as the plain model."""
    import copy

    from twofiles.engine import encode_prompt

    loaded, _, _ = smollm2_plain
    model = copy.deepcopy(loaded.model)
    setup = prepare_for_inference(model, dtype="fp32", layout="packed")
    assert any(r.startswith("fused projections: 60 groups") for r in setup.reasons)
    if onednn_linear_available():
        assert isinstance(model.lm_head, PackedLinear)
    for prompt in ["The capital of France is", "def fibonacci(n):\n    "]:
        ids = encode_prompt(loaded.tokenizer, prompt)
        assert greedy(model, ids, 32) == greedy(loaded.model, ids, 32), prompt


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["bf16", "int8", "int4", "default"])
def test_smollm2_reduced_precision_agrees_with_fp32_on_held_out_text(smollm2_plain, mode):
    """Teacher-forced on held-out text, through the layout the verbs use: how often the bf16 or
    quantized model's top token is fp32's, and how many more bits per byte it needs. "default"
    is whatever the probe chooses on this machine, held to its format's bounds."""
    import copy

    loaded, ids, ref = smollm2_plain
    model = copy.deepcopy(loaded.model)
    if mode == "default":
        setup = prepare_for_inference(model)
    elif mode == "bf16":
        setup = prepare_for_inference(model, dtype="bf16")
    else:
        setup = prepare_for_inference(model, quantize=mode)
    with torch.inference_mode():
        logits = model(ids[:, :-1]).float()[0]
    top1 = (logits.argmax(-1) == ref.argmax(-1)).double().mean().item()
    token_bytes = torch.from_numpy(loaded.tokenizer.token_bytes()).double()
    delta = bits_per_byte(logits, ids, token_bytes) - bits_per_byte(ref, ids, token_bytes)
    bound = setup.format.split("-")[0]  # fp32 / bf16 / int8 / int4, packed or not
    least_top1, most_delta = QUANT_BOUNDS[bound]
    print(mode, setup.format, f"top-1 {top1:.4f}, delta bpb {delta:+.5f}")
    assert top1 >= least_top1 and abs(delta) <= most_delta, (mode, setup.format, top1, delta)
