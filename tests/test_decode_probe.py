"""The decode probe and the inference layout it chooses: shapes, the per-machine cache, the
decision rule on made-up figures, and prepare_for_inference honouring what a caller forces."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from twofiles import decode_probe
from twofiles.decode_probe import (
    BF16_MIN_GAIN,
    DecodeProbe,
    available_formats,
    choose_dense,
    decode_shapes,
    probe_decode,
)
from twofiles.engine import SamplingParams, generate
from twofiles.model import ModelConfig, Transformer
from twofiles.quant import PackedLinear, onednn_linear_available, prepare_for_inference
from twofiles.runtime import can_compile

TINY = [(64, 32, 2), (32, 64, 2)]


def tiny_model(seed: int = 0, n_layers: int = 2) -> Transformer:
    cfg = ModelConfig(
        vocab_size=320,
        dim=64,
        n_layers=n_layers,
        n_heads=4,
        n_kv_heads=2,
        hidden_dim=128,
        max_seq_len=64,
    )
    m = Transformer(cfg)
    m.init_weights(seed)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.endswith(("o_proj.weight", "down_proj.weight")):  # zero at init
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return m.eval()


def greedy(model: Transformer, prompt: list[int], n: int) -> list[int]:
    return list(generate(model, prompt, SamplingParams(temperature=0, max_tokens=n)))


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TWOFILES_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / decode_probe.PROBE_CACHE_NAME


def test_decode_shapes_fused_and_plain_read_the_same_weights():
    cfg = ModelConfig(vocab_size=1000, dim=96, n_layers=3, n_heads=6, n_kv_heads=2, hidden_dim=256)
    args = (cfg.dim, cfg.hidden_dim, cfg.dim, cfg.n_kv_heads * cfg.head_dim, 3, 1000)
    fused, plain = decode_shapes(*args), decode_shapes(*args, fused=False)
    total = sum(n * k * c for n, k, c in fused)
    assert (
        total
        == sum(n * k * c for n, k, c in plain)
        == cfg.num_params(embeddings=False) - (cfg.n_layers * 2 * cfg.dim + cfg.dim)
    )  # every matmul weight once, the norms' vectors aside
    assert len(fused) == 5 and (1000, 96, 1) in fused and (96 + 2 * 32, 96, 3) in fused
    assert sum(c for _, _, c in plain) == 7 * 3 + 1 > sum(c for _, _, c in fused) == 4 * 3 + 1


def test_every_available_format_times_a_step():
    for fmt in available_formats():
        secs = decode_probe.time_step(fmt, TINY, [1], rounds=1)
        assert set(secs) == {1} and 0 < secs[1] < 1, fmt
    with pytest.raises(ValueError, match="format"):
        decode_probe.time_step("int3", TINY, [1])


def test_the_probe_is_cached_per_machine_and_a_damaged_cache_is_measured_again(cache, monkeypatch):
    first = probe_decode(TINY, ["fp32", "bf16"], threads=[1])
    assert not first.from_cache and cache.is_file() and first.cache_path == str(cache)
    again = probe_decode(TINY, ["fp32", "bf16"], threads=[1])
    assert again.from_cache and again.seconds == first.seconds
    assert again.probed_at == first.probed_at
    # a format not measured yet is measured and added, the others kept
    more = probe_decode(TINY, ["fp32", "bf16", "int8"], threads=[1])
    assert not more.from_cache and more.seconds["fp32"] == first.seconds["fp32"]
    assert set(json.loads(cache.read_text()).popitem()[1]["seconds"]) == {"fp32", "bf16", "int8"}
    cache.write_text("{not json")
    assert not probe_decode(TINY, ["fp32"], threads=[1]).from_cache
    assert probe_decode(TINY, ["fp32"], threads=[1]).from_cache
    # another CPU (or torch, or shapes) is another key: never trusted
    monkeypatch.setattr(decode_probe, "cpu_identity", lambda **_: ("Other CPU", ("avx2",)))
    assert not probe_decode(TINY, ["fp32"], threads=[1]).from_cache
    assert len(json.loads(cache.read_text())) == 2


def test_a_read_only_cache_still_runs(tmp_path, monkeypatch):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    monkeypatch.setenv("TWOFILES_CACHE", str(ro / "cache"))
    try:
        probe = probe_decode(TINY, ["fp32"], threads=[1])
    finally:
        ro.chmod(0o700)
    if probe.cache_path:  # running as root: permissions do not bind
        return
    assert not probe.from_cache and probe.seconds["fp32"][1] > 0


def test_choose_dense_takes_bf16_only_for_a_clear_gain():
    assert choose_dense({"fp32-packed": 0.020, "bf16-packed": 0.010})[0] == "bf16-packed"
    fmt, why = choose_dense({"fp32-packed": 0.020, "bf16-packed": 0.020 / (BF16_MIN_GAIN - 0.05)})
    assert fmt == "fp32-packed" and "not worth" in why
    fmt, why = choose_dense({"fp32": 0.030, "fp32-packed": 0.020, "bf16": 0.018})
    assert fmt == "fp32-packed" and "1.11x" in why  # bf16's gain is over the fastest fp32
    assert choose_dense({"bf16": 0.05, "bf16-packed": 0.04})[0] == "bf16-packed"  # forced bf16
    assert choose_dense({"fp32": 0.01})[0] == "fp32"
    with pytest.raises(ValueError):
        choose_dense({})


def fake_probe(seconds: dict[str, float], fast: int = 1):
    """probe_decode answering made-up figures (the same for every thread count but `fast`, which
    is 10% faster): the decision is tested apart from this machine's speed."""

    def probe(shapes, formats, *, threads=None, refresh=False):
        ts = threads or [1, 2]
        return DecodeProbe(
            cpu="Test CPU",
            isa=(),
            torch_version=torch.__version__,
            shapes=tuple(shapes),
            seconds={
                f: {t: seconds.get(f, 1.0) * (0.9 if t == fast else 1.0) for t in ts}
                for f in formats
            },
            probed_at="2026-12-06 00:00 UTC",
            cache_path="",
        )

    return probe


@pytest.mark.skipif(not onednn_linear_available(), reason="this torch has no oneDNN")
def test_prepare_follows_the_probe_and_says_why(monkeypatch):
    figures = {"fp32": 0.04, "fp32-packed": 0.02, "bf16": 0.03, "bf16-packed": 0.01}
    monkeypatch.setattr(decode_probe, "probe_decode", fake_probe(figures, fast=2))
    ref, model = tiny_model(), tiny_model()
    setup = prepare_for_inference(model)
    assert (setup.format, setup.dtype, setup.activations) == ("bf16-packed", "bfloat16", "float32")
    assert setup.threads == 2 and setup.layout == "fused" and setup.forced == []
    assert isinstance(model.lm_head, PackedLinear) and model.lm_head.dtype == torch.bfloat16
    assert setup.probe_ms == {f: v * 1e3 * 0.9 for f, v in figures.items()}
    assert any(r.startswith("bf16-packed weights: 2.00x fp32-packed") for r in setup.reasons)
    json.dumps(setup.to_dict())  # what generate --json prints
    x = torch.tensor([[1, 17, 42, 99, 5]])
    with torch.inference_mode():
        got, want = model(x), ref(x)
    assert (got - want).abs().max() / want.abs().max() < 0.02  # bf16 weights: rounding only
    # bf16 not worth it here: fp32, packed
    figures["bf16-packed"] = 0.019
    model = tiny_model()
    setup = prepare_for_inference(model, threads=1)
    assert setup.format == "fp32-packed" and setup.threads == 1 and setup.forced == ["threads"]
    assert greedy(model, [1, 2, 3], 8) == greedy(tiny_model(), [1, 2, 3], 8)


def test_prepare_honours_what_the_caller_forces(monkeypatch):
    figures = {"fp32": 0.04, "fp32-packed": 0.02, "bf16": 0.03, "bf16-packed": 0.01}
    monkeypatch.setattr(decode_probe, "probe_decode", fake_probe(figures))
    model = tiny_model()
    setup = prepare_for_inference(model, dtype="fp32", layout="plain")
    assert setup.format == "fp32" and setup.layout == "plain" and setup.dtype == "float32"
    assert setup.forced == ["dtype", "layout"]
    assert type(model.lm_head) is nn.Linear and model.model.layers[0].self_attn.qkv_proj is None
    model = tiny_model()
    setup = prepare_for_inference(model, dtype="bf16", layout="fused")
    assert setup.format == "bf16" and setup.activations == "bfloat16"  # unpacked: cast model
    assert model.model.layers[0].self_attn.qkv_proj is not None
    model = tiny_model()
    setup = prepare_for_inference(model, quantize="int4", compile=False)
    assert setup.format == "int4" and not setup.compiled and setup.forced == ["compile"]
    with pytest.raises(Exception, match="layout"):
        prepare_for_inference(tiny_model(), layout="sideways")
    with pytest.raises(Exception, match="dtype"):
        prepare_for_inference(tiny_model(), dtype="int2")


def test_quantized_models_compile_by_default_where_inductor_can(monkeypatch):
    monkeypatch.setattr(decode_probe, "probe_decode", fake_probe({"int4": 0.01}))
    model = tiny_model()
    setup = prepare_for_inference(model, quantize="int4")
    ok, _ = can_compile(torch.device("cpu"))
    assert setup.compiled == ok and setup.forced == []
    assert any(("torch.compile per block" if ok else "eager") in r for r in setup.reasons)


@pytest.mark.slow
def test_compiled_blocks_generate_what_eager_does_and_share_one_graph():
    """Regional compilation: one block's graph serves every layer (the layers share the code and
    their weights are inputs), across prompt lengths and positions, with eager's tokens."""
    from torch._dynamo.utils import counters

    if not can_compile(torch.device("cpu"))[0]:
        pytest.skip("no C++ compiler for inductor")
    ref, model = tiny_model(n_layers=4), tiny_model(n_layers=4)
    prepare_for_inference(ref, quantize="int4", compile=False, probe=False)
    torch._dynamo.reset()  # an earlier test's compiled block would serve these too
    counters.clear()
    prepare_for_inference(model, quantize="int4", compile=True, probe=False)
    assert greedy(model, [1, 17, 42, 99, 5], 12) == greedy(ref, [1, 17, 42, 99, 5], 12)
    graphs = counters["stats"]["unique_graphs"]
    assert 0 < graphs <= 3  # prefill and decode (and a chunk), not one per layer (4 x 2)
    assert greedy(model, [7, 3], 20) == greedy(ref, [7, 3], 20)
    assert counters["stats"]["unique_graphs"] == graphs  # no recompiling for new lengths
