"""run_with_cache against the peers users would check it with: transformers' hidden states and
attention weights, and TransformerLens's own cache (its TransformerBridge wraps the Hugging Face
modules), on a Hugging Face directory loaded the way every verb loads a model."""

from __future__ import annotations

import pytest
import torch
from tests.peers import require, require_smollm2
from tests.tiny_models import random_model, tiny_tokenizer

from twofiles.artifact import LoadedModel
from twofiles.inspect import hook_names, run_with_cache

TEXT = "to be or not to be, that is the question"


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    from twofiles.formats.hf import export_hf

    tok = tiny_tokenizer()
    out = tmp_path_factory.mktemp("hf") / "tiny-llama"
    export_hf(LoadedModel(model=random_model(tok, seed=5), tokenizer=tok), out)
    return out


@pytest.fixture(scope="module")
def ours(hf_dir):
    from twofiles.formats.resolve import resolve_model

    loaded = resolve_model(str(hf_dir))
    ids = [loaded.tokenizer.bos_id, *loaded.tokenizer.encode(TEXT)]
    logits, cache = run_with_cache(loaded, ids)
    return ids, logits, cache, hook_names(loaded)


def test_cache_matches_transformers_hidden_states_and_attentions(hf_dir, ours):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ids, logits, cache, _ = ours
    assert AutoTokenizer.from_pretrained(hf_dir)(TEXT)["input_ids"] == ids  # same text, same ids
    hf = AutoModelForCausalLM.from_pretrained(hf_dir, attn_implementation="eager").eval()
    with torch.no_grad():
        out = hf(torch.tensor([ids]), output_hidden_states=True, output_attentions=True)
    n = hf.config.num_hidden_layers
    # transformers: hidden_states[i] enters layer i; the last one is after the final norm
    for i in range(n):
        torch.testing.assert_close(
            cache["resid_pre", i], out.hidden_states[i], atol=1e-5, rtol=1e-5
        )
        torch.testing.assert_close(cache["pattern", i], out.attentions[i], atol=1e-6, rtol=1e-5)
    final = cache["ln_final.hook_normalized"] * hf.model.norm.weight
    torch.testing.assert_close(final, out.hidden_states[n], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logits, out.logits, atol=1e-5, rtol=1e-5)


def test_cache_matches_transformer_lens(hf_dir, ours):
    bridge_mod = require("transformer_lens.model_bridge", "pip install -e '.[test]'")
    ids, logits, cache, names = ours
    bridge = bridge_mod.TransformerBridge.boot_transformers(str(hf_dir), device="cpu")
    with torch.no_grad():
        tl_logits, tl_cache = bridge.run_with_cache(torch.tensor([ids]))
    torch.testing.assert_close(logits, tl_logits, atol=1e-5, rtol=1e-5)
    assert set(names) <= set(tl_cache.keys())  # every name we offer, TransformerLens has too
    for name in names:
        mine, theirs = cache[name], tl_cache[name]
        assert mine.shape == theirs.shape, name
        if name.endswith("hook_attn_scores"):
            # the future is masked: -inf here (as HookedTransformer does), the dtype's minimum in
            # the bridge (as transformers does); the softmax is the same
            masked = torch.isinf(mine)
            assert torch.equal(masked, theirs < -1e30), name
            mine, theirs = mine[~masked], theirs[~masked]
        torch.testing.assert_close(mine, theirs, atol=1e-5, rtol=1e-5, msg=name)


@pytest.mark.slow
def test_smollm2_cache_matches_transformers():
    """The real model from its GGUF file, both sides dequantising the same Q4_1 weights."""
    from transformers import AutoModelForCausalLM

    from twofiles.formats.resolve import resolve_model

    require("accelerate", "pip install -e '.[test]'")  # transformers needs it to read GGUF
    path = require_smollm2()
    loaded = resolve_model("smollm2")
    ids = loaded.tokenizer.encode("When Mary and John went to the store, John gave a drink to")
    layers = [0, 14, 29]
    _, cache = run_with_cache(
        loaded, ids, names=[n for i in layers for n in (("resid_pre", i), ("pattern", i))]
    )
    hf = AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    with torch.no_grad():
        out = hf(torch.tensor([ids]), output_hidden_states=True, output_attentions=True)
    for i in layers:
        theirs = out.hidden_states[i]
        err = ((cache["resid_pre", i] - theirs).abs().max() / theirs.std()).item()
        assert err < 1e-4, f"layer {i}: residual stream differs by {err:.1e} of its std"
        torch.testing.assert_close(cache["pattern", i], out.attentions[i], atol=1e-4, rtol=1e-3)
