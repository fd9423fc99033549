"""The model against known answers and a reference: Hugging Face transformers.

Parity tests load our state_dict into `LlamaForCausalLM` (or `Qwen2ForCausalLM` for qkv bias:
HF Llama's `attention_bias=True` also puts a bias on o_proj, Qwen2 has q/k/v bias only) with
strict=True, so a renamed or missing parameter fails loudly, then compare logits. The zero-initialised
o_proj/down_proj are perturbed first: with them at zero every block is the identity and attention /
MLP bugs would be invisible.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from twofiles.model import KVCache, ModelConfig, Transformer, count_params

TINY = dict(
    vocab_size=97,
    dim=64,
    n_layers=2,
    n_heads=4,
    n_kv_heads=4,
    hidden_dim=96,
    max_seq_len=32,
    rope_theta=5000.0,
)

VARIANTS = {
    "mha": {},
    "gqa": {"n_kv_heads": 2},
    "mqa": {"n_kv_heads": 1},
    "tied": {"tie_embeddings": True},
    "qkv_bias": {"qkv_bias": True, "n_kv_heads": 2},
}


def build(seed: int = 0, **overrides) -> Transformer:
    """A tiny model with every parameter random and non-zero (biases and norm gains included)."""
    model = Transformer(ModelConfig(**{**TINY, **overrides}))
    model.init_weights(seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("o_proj.weight", "down_proj.weight")):
                p.copy_(torch.randn(p.shape, generator=g) * p.shape[1] ** -0.5)
            elif name.endswith("bias"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
            elif "norm" in name:
                p.add_(torch.randn(p.shape, generator=g) * 0.1)
            elif name == "lm_head.weight" and not model.config.tie_embeddings:
                p.normal_(0.0, 0.1, generator=g)  # init is 0.001: logits would all be ~0
    return model


def hf_twin(model: Transformer, attn_implementation: str = "sdpa"):
    """The HF model of identical shape, holding our weights (strict load)."""
    import transformers

    cfg = model.config
    common = dict(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.dim,
        intermediate_size=cfg.hidden_dim,
        num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads,
        num_key_value_heads=cfg.n_kv_heads,
        max_position_embeddings=cfg.max_seq_len,
        rms_norm_eps=cfg.norm_eps,
        rope_theta=cfg.rope_theta,
        tie_word_embeddings=cfg.tie_embeddings,
        attn_implementation=attn_implementation,
    )
    if cfg.qkv_bias:
        hf = transformers.Qwen2ForCausalLM(
            transformers.Qwen2Config(**common, use_sliding_window=False)
        )
    else:
        hf = transformers.LlamaForCausalLM(
            transformers.LlamaConfig(**common, attention_bias=False, mlp_bias=False)
        )
    hf.load_state_dict(model.state_dict(), strict=True)
    return hf.eval()


def tokens(cfg: ModelConfig, B: int = 2, T: int = 24, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, cfg.vocab_size, (B, T), generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------- parity with Hugging Face


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_logits_match_hf(variant: str, attn: str) -> None:
    model = build(**VARIANTS[variant]).eval()
    hf = hf_twin(model, attn)
    idx = tokens(model.config)
    with torch.no_grad():
        ours = model(idx)
        theirs = hf(input_ids=idx).logits
    assert ours.shape == theirs.shape == (*idx.shape, model.config.vocab_size)
    assert ours.std() > 0.1  # the comparison is not between two near-constant tensors
    torch.testing.assert_close(ours, theirs, atol=2e-5, rtol=1e-4)


def test_qkv_bias_matches_qwen2_not_llama_attention_bias() -> None:
    """Why Qwen2 is the reference: HF Llama's attention_bias adds an o_proj bias we don't have."""
    import transformers

    hf = transformers.LlamaForCausalLM(
        transformers.LlamaConfig(
            hidden_size=64,
            intermediate_size=96,
            num_hidden_layers=1,
            num_attention_heads=4,
            vocab_size=97,
            attention_bias=True,
        )
    )
    ours = Transformer(ModelConfig(**{**TINY, "n_layers": 1, "qkv_bias": True}))
    assert set(hf.state_dict()) - set(ours.state_dict()) == {"model.layers.0.self_attn.o_proj.bias"}


@pytest.mark.parametrize("variant", ["mha", "gqa", "tied", "qkv_bias"])
def test_train_step_matches_hf(variant: str) -> None:
    """Same weights, same batch: same loss and same gradients (HF's loss recomputed from its logits
    without its internal label shift, since our targets are already shifted)."""
    model = build(**VARIANTS[variant]).train()
    hf = hf_twin(model).train()
    idx = tokens(model.config, seed=1)
    targets = tokens(model.config, seed=2)
    loss = model(idx, targets)
    logits = hf(input_ids=idx).logits
    hf_loss = F.cross_entropy(
        logits.float().view(-1, logits.shape[-1]), targets.view(-1), ignore_index=-1
    )
    loss.backward()
    hf_loss.backward()
    torch.testing.assert_close(loss, hf_loss, atol=1e-5, rtol=1e-5)
    ours = dict(model.named_parameters())
    theirs = dict(hf.named_parameters())
    assert ours.keys() == theirs.keys()
    for name in ours:
        assert ours[name].grad is not None and theirs[name].grad is not None, name
        torch.testing.assert_close(
            ours[name].grad, theirs[name].grad, atol=1e-5, rtol=1e-3, msg=name
        )


def test_rope_tables_match_hf() -> None:
    import transformers
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    model = build()
    cfg = model.config
    rotary = LlamaRotaryEmbedding(
        transformers.LlamaConfig(
            hidden_size=cfg.dim,
            num_attention_heads=cfg.n_heads,
            rope_theta=cfg.rope_theta,
            max_position_embeddings=cfg.max_seq_len,
        )
    )
    pos = torch.arange(cfg.max_seq_len)[None]
    cos, sin = rotary(torch.zeros(1, dtype=torch.float32), pos)
    torch.testing.assert_close(model.rope_cos, cos[0], atol=1e-6, rtol=0)
    torch.testing.assert_close(model.rope_sin, sin[0], atol=1e-6, rtol=0)


def test_llama3_rope_scaling_tables_match_hf() -> None:
    import transformers
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    # an original context of 32 puts every band (kept, smoothed, slowed) inside head_dim 16
    scaling = {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 16.0,
        "original_max_position_embeddings": 32,
    }
    model = build(rope_scaling=scaling)
    cfg = model.config
    rotary = LlamaRotaryEmbedding(
        transformers.LlamaConfig(
            hidden_size=cfg.dim,
            num_attention_heads=cfg.n_heads,
            rope_theta=cfg.rope_theta,
            max_position_embeddings=cfg.max_seq_len,
            rope_scaling=dict(scaling),
        )
    )
    cos, sin = rotary(torch.zeros(1, dtype=torch.float32), torch.arange(cfg.max_seq_len)[None])
    torch.testing.assert_close(model.rope_cos, cos[0], atol=1e-6, rtol=0)
    torch.testing.assert_close(model.rope_sin, sin[0], atol=1e-6, rtol=0)
    assert (model.rope_cos - build().rope_cos).abs().max() > 0.1
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize(
    "scaling",
    [
        {"rope_type": "yarn", "factor": 4.0},
        {"rope_type": "llama3", "factor": 8.0},
        "llama3",
        {
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 4.0,
            "high_freq_factor": 1.0,
            "original_max_position_embeddings": 32,
        },
    ],
)
def test_bad_rope_scaling_is_refused(scaling) -> None:
    with pytest.raises(ValueError, match="rope_scaling"):
        ModelConfig(**{**TINY, "rope_scaling": scaling})


# ---------------------------------------------------------------- KV cache


@pytest.mark.parametrize("variant", ["mha", "gqa", "qkv_bias"])
def test_kv_cache_decoding_equals_full_forward(variant: str) -> None:
    """Prefill a chunk, then single tokens, then a multi-token chunk after the cached prefix."""
    model = build(**VARIANTS[variant]).eval()
    idx = tokens(model.config, B=2, T=20)
    with torch.no_grad():
        full = model(idx)
        caches = model.new_caches(batch=2)
        pieces, pos = [], 0
        for length in (7, 1, 1, 1, 6, 1, 3):  # 7 + 3 + 6 + 1 + 3 = 20
            pieces.append(model(idx[:, pos : pos + length], caches=caches, pos=pos))
            pos += length
    assert pos == idx.shape[1]
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("variant", ["mha", "gqa", "qkv_bias"])
def test_packed_documents_equal_separate_runs(variant: str) -> None:
    """Two documents in one row, block-diagonal causal mask, positions restarting at the second
    document: each document's logits equal running it alone (no attention across them)."""
    model = build(**VARIANTS[variant]).eval()
    a, b = tokens(model.config, B=1, T=11, seed=1), tokens(model.config, B=1, T=7, seed=2)
    packed = torch.cat([a, b], dim=1)
    doc = torch.tensor([0] * 11 + [1] * 7)
    positions = torch.cat([torch.arange(11), torch.arange(7)])[None]
    causal = torch.ones(18, 18, dtype=torch.bool).tril()
    mask = (causal & (doc[:, None] == doc[None, :]))[None, None]  # [1, 1, T, T]
    with torch.no_grad():
        out = model(packed, positions=positions, attn_mask=mask)
        torch.testing.assert_close(out[:, :11], model(a), atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(out[:, 11:], model(b), atol=1e-5, rtol=1e-4)
        # without the mask the second document sees the first: the test can tell
        leaky = model(packed, positions=positions)
        assert (leaky[:, 11:] - model(b)).abs().max() > 1e-3


@pytest.mark.parametrize("variant", ["mha", "gqa"])
def test_ragged_batch_with_per_row_positions_equals_unbatched(variant: str) -> None:
    """Rows of different lengths share one cache: a padded prefill, then decode steps where each
    row writes its k/v at its own slot and the mask shows it only its own filled slots."""
    model = build(**VARIANTS[variant]).eval()
    lens = [6, 3]
    prompts = [tokens(model.config, B=1, T=n, seed=10 + i)[0] for i, n in enumerate(lens)]
    steps = [
        tokens(model.config, B=1, T=3, seed=20 + i)[0] for i in range(2)
    ]  # teacher-forced next tokens
    L = 12
    with torch.no_grad():
        caches = model.new_caches(batch=2, max_len=L)
        T = max(lens)
        idx = torch.zeros(2, T, dtype=torch.long)
        for r, p in enumerate(prompts):
            idx[r, : len(p)] = p
        positions = torch.arange(T).expand(2, T).contiguous()
        slot = torch.arange(L)
        # query t of row r sees slots <= t that hold its prompt; a padding query sees itself only
        valid = slot[None, None, :] < torch.tensor(lens)[:, None, None]  # [2, 1, L]
        mask = (slot[None, None, :] <= positions[:, :, None]) & (
            valid | (slot[None, None, :] == positions[:, :, None])
        )
        out = model(idx, caches=caches, positions=positions, attn_mask=mask[:, None])
        got = [[out[r, lens[r] - 1]] for r in range(2)]
        length = torch.tensor(lens)
        for i in range(3):
            new = torch.stack([steps[0][i], steps[1][i]])[:, None]  # [2, 1]
            pos = length[:, None]  # each row writes at its own next slot
            mask = (slot[None, :] <= pos)[:, None, None, :]  # [2, 1, 1, L]
            out = model(new, caches=caches, positions=pos, attn_mask=mask)
            for r in range(2):
                got[r].append(out[r, 0])
            length = length + 1
        for r in range(2):
            alone = model(torch.cat([prompts[r], steps[r]])[None])[0, lens[r] - 1 :]
            torch.testing.assert_close(torch.stack(got[r]), alone, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("variant", ["mha", "gqa", "qkv_bias"])
def test_fused_projections_compute_the_same_model(variant: str) -> None:
    """The inference layout ([q; k; v] and [gate; up] as one matmul each) gives the same logits,
    through a full forward and a cached prefill + decode, and only the fused weights remain."""
    ref, model = build(**VARIANTS[variant]).eval(), build(**VARIANTS[variant]).eval()
    assert model.fuse_projections() == 2 * model.config.n_layers
    assert model.fuse_projections() == 2 * model.config.n_layers  # idempotent
    keys = set(model.state_dict())
    assert (
        "model.layers.0.self_attn.qkv_proj.weight" in keys
        and "model.layers.0.mlp.gate_up_proj.weight" in keys
    )
    assert not any(
        k.split(".")[-2] in ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj") for k in keys
    )
    assert ("model.layers.0.self_attn.qkv_proj.bias" in keys) == model.config.qkv_bias
    idx = tokens(model.config, B=2, T=12)
    with torch.no_grad():
        torch.testing.assert_close(model(idx), ref(idx), atol=1e-5, rtol=1e-4)
        caches = model.new_caches(batch=2)
        steps = [model(idx[:, :9], caches=caches, pos=0)]
        steps += [model(idx[:, p : p + 1], caches=caches, pos=p) for p in range(9, 12)]
        torch.testing.assert_close(torch.cat(steps, dim=1), ref(idx), atol=1e-5, rtol=1e-4)


def test_lora_wrapped_projections_are_not_fused() -> None:
    from twofiles.lora import LoRAConfig, apply_lora

    model = build(n_kv_heads=2).eval()
    apply_lora(model, LoRAConfig(rank=2, targets=["q_proj"]))
    assert model.fuse_projections() == model.config.n_layers  # the MLPs only
    assert (
        model.model.layers[0].self_attn.qkv_proj is None
        and model.model.layers[0].mlp.gate_up_proj is not None
    )


def test_adapters_disabled_is_the_base_model_without_a_copy() -> None:
    """The reference model of DPO and RL's KL: the LoRA model with its adapters switched off
    computes exactly the base model, and switching them back on restores the adapted model."""
    from twofiles.lora import LoRAConfig, adapters_disabled, apply_lora, lora_layers

    base = build(n_kv_heads=2).eval()
    model = build(n_kv_heads=2).eval()
    model.load_state_dict(base.state_dict())
    apply_lora(model, LoRAConfig(rank=2, targets=["q_proj", "down_proj"]))
    with torch.no_grad():
        for layer in lora_layers(model).values():
            layer.lora_B.normal_()
    idx = tokens(model.config, B=2, T=8)
    with torch.no_grad():
        adapted = model(idx)
        assert not torch.allclose(adapted, base(idx))
        with adapters_disabled(model):
            torch.testing.assert_close(model(idx), base(idx))
        torch.testing.assert_close(model(idx), adapted)
    with pytest.raises(ValueError, match="no LoRA adapters"), adapters_disabled(base):
        pass


def test_positions_with_caches_need_a_mask() -> None:
    model = build()
    with pytest.raises(ValueError, match="attn_mask"):
        model(
            tokens(model.config, B=1, T=3),
            caches=model.new_caches(1),
            positions=torch.arange(3)[None],
        )


def test_kv_cache_buffers_and_shapes() -> None:
    model = build(**VARIANTS["gqa"])
    caches = model.new_caches(batch=3, max_len=10)
    assert len(caches) == model.config.n_layers
    assert all(isinstance(c, KVCache) for c in caches)
    assert caches[0].k.shape == (3, 2, 10, model.config.head_dim)
    assert "k" not in caches[0].state_dict()  # non-persistent: never saved with the weights


def test_sequence_longer_than_max_seq_len_is_refused() -> None:
    model = build()
    with pytest.raises(ValueError, match="exceeds max_seq_len"):
        model(torch.zeros(1, model.config.max_seq_len + 1, dtype=torch.long))
    caches = model.new_caches(batch=1)
    with pytest.raises(ValueError, match="exceeds max_seq_len"):
        model(torch.zeros(1, 2, dtype=torch.long), caches=caches, pos=model.config.max_seq_len - 1)


# ---------------------------------------------------------------- loss


def test_loss_reduction_none_averages_to_mean() -> None:
    model = build()
    idx, targets = tokens(model.config, seed=3), tokens(model.config, seed=4)
    with torch.no_grad():
        per_token = model(idx, targets, reduction="none")
        mean = model(idx, targets)
        logits = model(idx)
    assert per_token.shape == targets.shape
    torch.testing.assert_close(per_token.mean(), mean)
    # known answer: the per-token loss is -log softmax at the target
    expected = -logits.log_softmax(-1).gather(-1, targets[..., None])[..., 0]
    torch.testing.assert_close(per_token, expected, atol=1e-5, rtol=1e-5)


def test_ignore_index_is_ignored() -> None:
    model = build()
    idx, targets = tokens(model.config, seed=5), tokens(model.config, seed=6)
    masked = targets.clone()
    masked[:, ::3] = -1
    keep = masked != -1
    with torch.no_grad():
        per_token = model(idx, masked, reduction="none")
        mean = model(idx, masked)
        full = model(idx, targets, reduction="none")
    assert (per_token[~keep] == 0).all()
    torch.testing.assert_close(per_token[keep], full[keep])
    torch.testing.assert_close(mean, full[keep].mean())


def test_initial_loss_is_near_uniform() -> None:
    """At init every block is the identity and lm_head is tiny: loss ~ ln(vocab)."""
    cfg = ModelConfig(**TINY)
    model = Transformer(cfg)
    model.init_weights(seed=0)
    with torch.no_grad():
        loss = model(tokens(cfg), tokens(cfg, seed=1))
    assert abs(loss.item() - torch.log(torch.tensor(float(cfg.vocab_size))).item()) < 0.05


# ---------------------------------------------------------------- config, size, init


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_num_params_equals_actual_count(variant: str) -> None:
    model = build(**VARIANTS[variant])
    assert (
        model.config.num_params()
        == count_params(model)
        == sum(p.numel() for p in model.parameters())
    )


@pytest.mark.parametrize(
    "variant",
    [
        "mha",
        "gqa",
        "qkv_bias",
        "tied",
    ],
)
def test_matmul_params_exclude_only_the_embedding_lookup(variant: str) -> None:
    """num_params(embeddings=False) feeds flops_per_token: every matrix used in a matmul counts, the
    embedding lookup (a gather) does not. Tied, the one matrix is both, and the matmul still runs."""
    model = build(**VARIANTS[variant])
    cfg = model.config
    lookup_only = 0 if cfg.tie_embeddings else cfg.vocab_size * cfg.dim
    assert cfg.num_params(embeddings=False) == count_params(model) - lookup_only


def test_flops_per_token_known_answer() -> None:
    cfg = ModelConfig(**TINY)
    assert (
        cfg.flops_per_token(32)
        == 6 * cfg.num_params(embeddings=False) + 12 * cfg.n_layers * cfg.dim * 32
    )


def test_init_is_seeded_and_zero_inits_output_projections() -> None:
    a, b = Transformer(ModelConfig(**TINY)), Transformer(ModelConfig(**TINY))
    a.init_weights(seed=7)
    b.init_weights(seed=7)
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(pa, pb), name
        if name.endswith(("o_proj.weight", "down_proj.weight")):
            assert not pa.any(), name


@pytest.mark.parametrize("variant", ["mha", "gqa"])
def test_meta_device_build_then_init(variant: str) -> None:
    cfg = ModelConfig(**{**TINY, **VARIANTS[variant]})
    with torch.device("meta"):
        model = Transformer(cfg)
    assert all(p.is_meta for p in model.parameters())
    model.to_empty(device="cpu")
    model.init_weights(seed=3)
    ref = Transformer(cfg)
    ref.init_weights(seed=3)
    for (name, p), q in zip(model.state_dict().items(), ref.state_dict().values()):
        assert torch.equal(p, q), name
    torch.testing.assert_close(model.rope_cos, ref.rope_cos)
    torch.testing.assert_close(model.rope_sin, ref.rope_sin)
    idx = tokens(cfg)
    with torch.no_grad():
        torch.testing.assert_close(model(idx), ref(idx))


def test_meta_device_build_keeps_tied_embeddings() -> None:
    with torch.device("meta"):
        model = Transformer(ModelConfig(**{**TINY, "tie_embeddings": True}))
    model.to_empty(device="cpu")
    model.init_weights(seed=0)
    assert model.lm_head.weight is model.model.embed_tokens.weight


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"dim": 65, "n_heads": 4}, "not divisible by n_heads"),
        ({"n_heads": 4, "n_kv_heads": 3}, "not divisible by n_kv_heads"),
        ({"dim": 12, "n_heads": 4, "n_kv_heads": 4}, "head dimension must be even"),
    ],
)
def test_config_validation(overrides: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ModelConfig(**{**TINY, **overrides})


def test_config_dict_round_trip_and_unknown_fields() -> None:
    cfg = ModelConfig(**{**TINY, "qkv_bias": True})
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown model config fields"):
        ModelConfig.from_dict({**cfg.to_dict(), "n_embd": 4})
