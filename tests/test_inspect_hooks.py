"""The hooked forward against the model's own: same logits, activations where the names say,
hooks that read, ablate, patch and steer, and module hooks inside cached generation."""

from __future__ import annotations

import pytest
import torch
from tests.tiny_models import random_model, tiny_tokenizer

from twofiles.engine import SamplingParams, generate
from twofiles.inspect import attached, hook_names, run_with_cache, run_with_hooks


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def model(tok):
    return random_model(tok)


def _ids(tok, text="to be or not to be, that is the question"):
    return torch.tensor([tok.bos_id, *tok.encode(text)])


def test_no_hooks_gives_the_models_logits(tok, model):
    ids = _ids(tok)
    with torch.no_grad():
        want = model(ids[None])
        got = run_with_hooks(model, ids)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-5)


def test_fused_projections_give_the_same_cache(tok):
    plain = random_model(tok, seed=3)
    fused = random_model(tok, seed=3)
    fused.fuse_projections()
    ids = _ids(tok)
    _, a = run_with_cache(plain, ids)
    logits, b = run_with_cache(fused, ids)
    assert set(a) == set(b) == set(hook_names(plain))
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-5, rtol=1e-5, msg=name)
    with torch.no_grad():
        torch.testing.assert_close(logits, fused(ids[None]), atol=2e-5, rtol=1e-5)


def test_cache_keeps_only_what_was_asked_with_shapes(tok, model):
    ids = _ids(tok)
    T, cfg = len(ids), model.config
    names = ["blocks.1.attn.hook_pattern", ("resid_post", 0), "embed", "blocks.0.attn.hook_k"]
    _, cache = run_with_cache(model, ids, names=names)
    assert sorted(cache) == sorted(
        [
            "blocks.1.attn.hook_pattern",
            "blocks.0.hook_resid_post",
            "hook_embed",
            "blocks.0.attn.hook_k",
        ]
    )
    pattern = cache["pattern", 1]
    assert pattern.shape == (1, cfg.n_heads, T, T)
    torch.testing.assert_close(pattern.sum(-1), torch.ones(1, cfg.n_heads, T))
    assert torch.all(pattern.triu(1) == 0)  # nothing attends to the future
    assert cache["blocks.0.attn.hook_k"].shape == (1, T, cfg.n_kv_heads, cfg.head_dim)
    assert cache["resid_post", 0].shape == (1, T, cfg.dim)
    with pytest.raises(KeyError, match="was not cached"):
        cache["resid_pre", 0]
    with pytest.raises(KeyError, match="no hook point"):
        run_with_cache(model, ids, names=["blocks.9.hook_resid_post"])


def test_the_residual_stream_adds_up(tok, model):
    _, c = run_with_cache(model, _ids(tok))
    for i in range(model.config.n_layers):
        torch.testing.assert_close(c["resid_mid", i], c["resid_pre", i] + c["attn_out", i])
        torch.testing.assert_close(c["resid_post", i], c["resid_mid", i] + c["mlp_out", i])
    torch.testing.assert_close(c["resid_pre", 0], c["embed"])
    torch.testing.assert_close(c["resid_pre", 1], c["resid_post", 0])
    assert c.stack("resid_post").shape[0] == model.config.n_layers


def test_ablating_a_head_changes_only_what_it_should(tok, model):
    ids = _ids(tok)
    clean_logits = run_with_hooks(model, ids)

    def zero_head(z, hook):
        z = z.clone()
        z[:, :, 1] = 0
        return z

    logits, ablated = run_with_cache(
        model, ids, hooks=[("blocks.1.attn.hook_z", zero_head)], names=["blocks.1.attn.hook_z"]
    )
    assert torch.all(ablated["blocks.1.attn.hook_z"][:, :, 1] == 0)  # cached after the hook
    assert not torch.allclose(logits, clean_logits)
    # a hook that returns None reads without changing anything
    seen = []
    same = run_with_hooks(
        model, ids, [(lambda n: n.endswith("hook_z"), lambda z, h: seen.append(h.layer()))]
    )
    torch.testing.assert_close(same, clean_logits)
    assert seen == [0, 1]


def test_patching_the_whole_residual_stream_reproduces_the_clean_run(tok, model):
    clean_ids, corrupt_ids = _ids(tok, "to be or not to be"), _ids(tok, "to suffer or not to be")
    assert len(clean_ids) == len(corrupt_ids)
    clean_logits, clean = run_with_cache(model, clean_ids, names=[("resid_pre", 1)])

    def patch(x, hook):
        return clean["resid_pre", 1]

    with torch.no_grad():
        patched = run_with_hooks(model, corrupt_ids, [(("resid_pre", 1), patch)])
    torch.testing.assert_close(patched, clean_logits)


def test_a_hook_must_keep_the_shape(tok, model):
    with pytest.raises(ValueError, match="returned shape"):
        run_with_hooks(model, _ids(tok), [("hook_embed", lambda x, h: x[:, :1])])


def test_attached_steers_cached_generation_like_the_hooked_forward(tok, model):
    ids = _ids(tok, "to be")
    direction = torch.randn(model.config.dim, generator=torch.Generator().manual_seed(0)) * 3

    def steer(x, hook):
        return x + direction

    params = SamplingParams(temperature=0.0, max_tokens=6)
    plain = list(generate(model, ids.tolist(), params, tokenizer=tok))
    with attached(model, [(("resid_post", 0), steer)]):
        steered = list(generate(model, ids.tolist(), params, tokenizer=tok))
    assert list(generate(model, ids.tolist(), params, tokenizer=tok)) == plain  # removed on exit
    # the same steering through the hooked forward, greedy, one token at a time
    seq = ids.tolist()
    for _ in range(len(steered)):
        with torch.no_grad():
            logits = run_with_hooks(model, seq, [(("resid_post", 0), steer)])
        seq.append(int(logits[0, -1].argmax()))
    assert seq[len(ids) :] == steered
    assert steered != plain
    with (
        pytest.raises(KeyError, match="module boundary"),
        attached(model, [("blocks.0.attn.hook_pattern", steer)]),
    ):
        pass
