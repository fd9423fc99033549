"""The logit lens: its last row is the model's own prediction, its rows are distributions."""

from __future__ import annotations

import torch
from tests.tiny_models import random_model, tiny_tokenizer

from twofiles.inspect.lens import logit_lens


def test_the_last_layer_of_the_lens_is_the_models_output():
    tok = tiny_tokenizer()
    model = random_model(tok)
    ids = [tok.bos_id, *tok.encode("to be or not to be")]
    lens = logit_lens(model, ids, k=3)
    n, T = model.config.n_layers, len(ids)
    assert lens.layers == ["embed", "block 0", "block 1"]
    assert lens.top_ids.shape == (n + 1, T, 3) and lens.next_prob.shape == (n + 1, T - 1)
    with torch.no_grad():
        probs = model(torch.tensor([ids])).softmax(-1)[0]
    torch.testing.assert_close(lens.top_ids[-1], probs.topk(3, dim=-1).indices)
    torch.testing.assert_close(
        lens.top_probs[-1], probs.topk(3, dim=-1).values, atol=1e-5, rtol=1e-4
    )
    want_next = probs[torch.arange(T - 1), torch.tensor(ids[1:])]
    torch.testing.assert_close(lens.next_prob[-1], want_next, atol=1e-5, rtol=1e-4)
    assert torch.all(lens.entropy >= 0) and torch.all(
        lens.entropy <= torch.log2(torch.tensor(float(tok.vocab_size))) + 1e-4
    )
    d = lens.to_dict(tok, ids)
    assert len(d["top"]) == n + 1 and len(d["top"][0]) == T and len(d["tokens"]) == T
