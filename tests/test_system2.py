"""System 2: self-consistency and best-of-N, on fake samplers (known answers) and on a tiny
real model (batched sampling equals what the engine gives row by row)."""

from __future__ import annotations

import math

import pytest
import torch

from peers import require_smollm2
from twofiles.engine import SamplingParams, generate
from twofiles.system2 import (
    best_of_n,
    make_sampler,
    mean_logprob_scorer,
    sample_texts,
    self_consistency,
    vote,
)


def fake_sampler(texts):
    calls = []

    def sample(n):
        calls.append(n)
        return [texts[i % len(texts)] for i in range(n)]

    sample.calls = calls
    return sample


def test_self_consistency_takes_the_majority_answer():
    sample = fake_sampler(
        [
            "so the answer is 12",
            "I think 7 + 4 = 11",
            "#### 12",
            "it is 13",
            "The answer is 12.0",
            "no idea",
        ]
    )
    answer, votes = self_consistency(sample, 6)
    assert answer == "12" and votes == {"12": 3, "11": 1, "13": 1}
    assert list(votes) == ["12", "11", "13"]  # most voted first, then first seen
    assert sample.calls == [6]  # one request for all six samples: the sampler batches them
    answer, votes = self_consistency(sample, 2)
    assert answer == "12" and votes == {"12": 1, "11": 1}  # a tie goes to the first sample
    with pytest.raises(ValueError):
        self_consistency(sample, 0)


def test_vote_details():
    v = vote(["a 1", "b 2", "c 2", "nothing"])
    assert v.answer == "2" and v.answers == ["1", "2", "2", None] and v.agreement == 0.5
    assert v.reply == "b 2"  # the first sample that reached the majority answer
    assert vote(["none", "here"]).answer is None and vote(["none", "here"]).reply == "none"
    assert vote([]).agreement == 0.0 and vote([]).reply == ""


def test_best_of_n_keeps_the_top_score():
    sample = fake_sampler(["short", "a much longer answer", "mid size", "a much longer answer"])
    best, scores = best_of_n(sample, len, 4)
    assert best == "a much longer answer" and scores == [5.0, 20.0, 8.0, 20.0]
    best, _ = best_of_n(sample, lambda t: -len(t), 3)
    assert best == "short"


@pytest.fixture(scope="module")
def tiny():
    from twofiles.model import ModelConfig, Transformer
    from twofiles.tokenizer import Tokenizer

    tok = Tokenizer.train(
        ["the cat sat on the mat. 1 2 3 4 5 6 7 8 9 0 the answer is 42. " * 30], 300
    )
    model = Transformer(
        ModelConfig(
            vocab_size=tok.vocab_size,
            dim=32,
            n_layers=2,
            n_heads=4,
            n_kv_heads=2,
            hidden_dim=64,
            max_seq_len=64,
        )
    )
    model.init_weights(seed=0)
    with torch.no_grad():  # a spread of probabilities instead of the near-uniform init
        model.lm_head.weight.normal_(0.0, 0.5, generator=torch.Generator().manual_seed(1))
    model.eval()
    return model, tok


def test_greedy_batched_samples_equal_the_engine_row_by_row(tiny):
    model, tok = tiny
    prompt = [tok.bos_id] + tok.encode("the answer is")
    params = SamplingParams(temperature=0, max_tokens=10)
    reference = tok.decode(
        [t for t in generate(model, prompt, params, tokenizer=tok) if t != tok.bos_id]
    )
    assert sample_texts(model, tok, prompt, params, 5, batch_size=2) == [reference] * 5


def test_sampling_is_seeded_and_batched(tiny, monkeypatch):
    import twofiles.decoder as decoder

    model, tok = tiny
    prompt = [tok.bos_id] + tok.encode("the cat")
    params = SamplingParams(temperature=1.0, max_tokens=12, seed=3)
    calls = []
    real = decoder.generate_batch

    def counting(model, prompts, params, **kw):
        calls.append(len(prompts))
        assert len({tuple(p) for p in prompts}) == 1  # one prompt: one prefill inside the decoder
        return real(model, prompts, params, **kw)

    monkeypatch.setattr(decoder, "generate_batch", counting)
    first = make_sampler(model, tok, prompt, params, batch_size=16)(16)
    assert calls == [16]  # all sixteen rows in one batch
    assert first == sample_texts(model, tok, prompt, params, 16)  # same seed, same samples
    assert len(set(first)) > 1  # ... but the rows differ from each other
    calls.clear()
    chunked = sample_texts(model, tok, prompt, params, 10, batch_size=4)
    assert calls == [4, 4, 2] and len(chunked) == 10
    assert chunked[:4] != chunked[4:8]  # each chunk draws with its own seeds
    # sample i draws with seed + i whatever the batch size: chunking does not change the samples
    assert chunked == sample_texts(model, tok, prompt, params, 10, batch_size=10)


def test_think_keeps_every_sample_and_counts_tokens(tiny):
    from twofiles.system2 import think

    model, tok = tiny
    prompt = [tok.bos_id] + tok.encode("the answer is")
    params = SamplingParams(temperature=1.0, max_tokens=8, seed=0)
    v = think(model, tok, prompt, params, 6, batch_size=4)
    assert v.texts == sample_texts(model, tok, prompt, params, 6, batch_size=4)
    from dataclasses import replace

    from twofiles.decoder import generate_batch

    counted = [  # the same two chunks (4 rows, then 2), each with its own seed
        len(ids)
        for chunk, rows in enumerate([4, 2])
        for ids in generate_batch(
            model, [prompt] * rows, replace(params, seed=params.seed + chunk), tokenizer=tok
        )
    ]
    assert v.tokens == sum(counted) and len(counted) == 6 and min(counted) >= 1
    assert len(v.answers) == 6
    assert (
        v.answer == self_consistency(make_sampler(model, tok, prompt, params, batch_size=4), 6)[0]
    )


def test_mean_logprob_scorer_matches_a_naive_loop(tiny):
    model, tok = tiny
    prompt = [tok.bos_id] + tok.encode("the cat")
    text = " sat on the mat"
    ids = tok.encode(text)
    with torch.no_grad():
        naive = []
        for i, target in enumerate(ids):
            logits = model(torch.tensor([prompt + ids[:i]]))[0, -1]
            naive.append(float(logits.log_softmax(-1)[target]))
    score = mean_logprob_scorer(model, tok, prompt)
    assert math.isclose(score(text), sum(naive) / len(naive), rel_tol=1e-4, abs_tol=1e-5)
    assert score("") == float("-inf")


def test_chat_think_flag_votes_over_batched_samples(tiny, tmp_path, capsys, monkeypatch):
    import io
    import json

    from twofiles.artifact import load_model, save_model
    from twofiles.chat import ChatFormat, Message
    from twofiles.cli import main
    from twofiles.system2 import think

    model, tok = tiny
    path = str(save_model(tmp_path / "model.safetensors", model, tok))
    monkeypatch.setattr("sys.stdin", io.StringIO("what is 6 times 7?\n"))
    rc = main(["chat", path, "--think", "4", "--seed", "5", "--max-tokens", "10", "--json"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    summary = json.loads(out.splitlines()[-1])
    assert "[think] 4 samples" in err
    # the reply shown is what think() picks for the same prompt and sampling settings
    loaded = load_model(path)
    fmt = ChatFormat.for_model(loaded)
    params = SamplingParams(
        temperature=0.7, top_p=0.9, seed=5, max_tokens=10, stop_token_ids=list(fmt.stop_token_ids)
    )
    expected = think(
        loaded.model,
        loaded.tokenizer,
        fmt.prompt_ids([Message("user", "what is 6 times 7?")]),
        params,
        4,
    )
    assert summary["replies"] == [expected.reply] and summary["tokens"] == expected.tokens
    prompt = fmt.prompt_ids([Message("user", "what is 6 times 7?")])
    assert summary["prompt_tokens"] == len(prompt) and summary["prompt_tokens_reused"] == 0
    monkeypatch.setattr("sys.stdin", io.StringIO("hi\n"))
    assert main(["chat", path, "--think", "0"]) == 2
    assert main(["chat", path, "--think", "2", "--tools", "calculator"]) == 2


@pytest.mark.slow
def test_smollm2_think_batched_greedy_equals_one_run():
    """The real model (GQA, 30 layers): N greedy rows sharing one prefill equal a single run."""
    from twofiles.chat import ChatFormat, Message
    from twofiles.formats.resolve import resolve_model
    from twofiles.system2 import think

    require_smollm2()
    loaded = resolve_model("smollm2")
    fmt = ChatFormat.for_model(loaded)
    ids = fmt.prompt_ids([Message("user", "What is 7 times 8?")])
    params = SamplingParams(temperature=0, max_tokens=8, stop_token_ids=list(fmt.stop_token_ids))
    single = loaded.tokenizer.decode(
        [
            t
            for t in generate(loaded.model, ids, params, tokenizer=loaded.tokenizer)
            if t not in fmt.stop_token_ids
        ]
    )
    v = think(loaded.model, loaded.tokenizer, ids, params, 3)
    assert v.texts == [single] * 3 and single
