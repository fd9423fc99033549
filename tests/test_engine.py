"""The engine against known answers and against a naive reference generator.

The oracle (`naive_generate`) recomputes the full forward pass for every token, with no cache,
and draws with the same sampler: cached generation must give the same tokens, greedy or seeded.
Filters are checked on hand-made logits with answers worked out by hand. Text streaming is
checked with a scripted model (it emits a fixed token sequence) and stand-in tokenizers whose
tokens are arbitrary byte strings, so multi-byte characters and stop strings split across
tokens are under our control.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from twofiles.decoder import decode_batch, generate_batch
from twofiles.engine import (
    PromptTooLongError,
    SamplingParams,
    TextStream,
    apply_repetition_penalty,
    apply_temperature,
    generate,
    generate_steps,
    generate_text,
    make_generator,
    min_p_filter,
    roll,
    sample_next,
    token_distribution,
    top_candidates,
    top_k_filter,
    top_p_filter,
)
from twofiles.errors import TwofilesError
from twofiles.model import ModelConfig, Transformer

# ---------------------------------------------------------------------------------------------
# fixtures


class PieceTokenizer:
    """Stand-in tokenizer: id 0 is <|bos|>, ids 1..256 are single bytes, then any extra byte
    strings given. Encodes byte by byte; decodes with U+FFFD for broken UTF-8, like the real one."""

    bos_id = 0

    def __init__(self, extra: list[bytes] = ()) -> None:
        self.pieces = [b""] + [bytes([b]) for b in range(256)] + list(extra)
        self.vocab_size = len(self.pieces)

    def encode(self, text: str) -> list[int]:
        return [b + 1 for b in text.encode("utf-8")]

    def decode(self, ids) -> str:
        return b"".join(self.pieces[i] for i in ids).decode("utf-8", errors="replace")

    def id_of(self, piece: bytes) -> int:
        return self.pieces.index(piece)


def tiny_model(
    seed: int = 0, vocab_size: int = 260, max_seq_len: int = 64, **overrides
) -> Transformer:
    """A random model with every weight non-zero and a high-entropy output (logits std ~1)."""
    cfg = ModelConfig(
        vocab_size=vocab_size,
        dim=32,
        n_layers=2,
        n_heads=4,
        n_kv_heads=2,
        hidden_dim=64,
        max_seq_len=max_seq_len,
        **overrides,
    )
    model = Transformer(cfg)
    model.init_weights(seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("o_proj.weight", "down_proj.weight")) or name == "lm_head.weight":
                p.copy_(torch.randn(p.shape, generator=g) * p.shape[1] ** -0.5)
    return model.eval()


class ScriptedModel(nn.Module):
    """Quacks like a Transformer for the engine; always predicts the next token of `script`
    (then token `filler`), whatever the prompt."""

    def __init__(
        self,
        script: list[int],
        vocab_size: int,
        prompt_len: int,
        max_seq_len: int = 256,
        filler: int = 1,
    ) -> None:
        super().__init__()
        self.config = ModelConfig(
            vocab_size=vocab_size,
            dim=8,
            n_layers=1,
            n_heads=1,
            n_kv_heads=1,
            hidden_dim=8,
            max_seq_len=max_seq_len,
        )
        self.lm_head = nn.Linear(1, 1, bias=False)
        self.script, self.prompt_len, self.filler = script, prompt_len, filler

    def new_caches(self, batch: int, max_len: int | None = None) -> list:
        return []

    def forward(
        self, idx: torch.Tensor, targets=None, *, caches=None, pos: int = 0
    ) -> torch.Tensor:
        B, T = idx.shape
        logits = torch.zeros(B, T, self.config.vocab_size)
        for t in range(T):
            k = pos + t + 1 - self.prompt_len  # index in the script of the token predicted here
            logits[:, t, self.script[k] if 0 <= k < len(self.script) else self.filler] = 10.0
        return logits


def naive_generate(
    model: Transformer, prompt: list[int], params: SamplingParams, n: int
) -> list[int]:
    """The oracle: full forward over the whole sequence for every new token, no cache."""
    g = make_generator(params.seed)
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            x = torch.tensor([ids])
            logits = model(x)[:, -1]
            ids.append(int(sample_next(logits, params, g, history=x)[0]))
    return ids[len(prompt) :]


def logits_of(probs: list[float]) -> torch.Tensor:
    return torch.tensor(probs).log()[None]  # [1, V]


def kept(logits: torch.Tensor) -> list[int]:
    return torch.isfinite(logits[0]).nonzero().flatten().tolist()


# ---------------------------------------------------------------------------------------------
# the die: filters on hand-made logits


def test_top_k_keeps_exactly_k_even_with_ties():
    logits = torch.tensor([[1.0, 5.0, 3.0, 3.0, 3.0, -2.0]])
    assert kept(top_k_filter(logits, 1)) == [1]
    out = top_k_filter(logits, 3)
    assert len(kept(out)) == 3 and 1 in kept(out)
    assert torch.equal(top_k_filter(logits, 0), logits)  # off
    assert torch.equal(top_k_filter(logits, 6), logits)
    assert torch.equal(out[torch.isfinite(out)], logits[torch.isfinite(out)])  # survivors untouched


def test_top_p_keeps_smallest_set_reaching_p():
    logits = logits_of([0.15, 0.5, 0.05, 0.3])  # sorted: 1 (.5), 3 (.3), 0 (.15), 2 (.05)
    assert kept(top_p_filter(logits, 0.5)) == [1]  # .5 reaches .5 alone
    assert kept(top_p_filter(logits, 0.6)) == [1, 3]
    assert kept(top_p_filter(logits, 0.8)) == [1, 3]  # .8 reached exactly
    assert kept(top_p_filter(logits, 0.81)) == [0, 1, 3]
    assert kept(top_p_filter(logits, 0.01)) == [1]  # the top token always survives
    assert kept(top_p_filter(logits, 1.0)) == [0, 1, 2, 3]


def test_min_p_threshold_is_relative_to_the_top_probability():
    logits = logits_of([0.15, 0.5, 0.05, 0.3])
    assert kept(min_p_filter(logits, 0.2)) == [0, 1, 3]  # threshold 0.1
    assert kept(min_p_filter(logits, 0.5)) == [1, 3]  # threshold 0.25
    assert kept(min_p_filter(logits, 1.0)) == [1]
    assert kept(min_p_filter(logits, 0.0)) == [0, 1, 2, 3]


def test_temperature():
    logits = torch.tensor([[2.0, -1.0, 0.5]])
    assert torch.allclose(apply_temperature(logits, 2.0), logits / 2)
    assert kept(apply_temperature(logits, 0)) == [0]  # the T -> 0 limit: all mass on the argmax
    cold, hot = (apply_temperature(logits, t).softmax(-1)[0, 0] for t in (0.5, 2.0))
    assert cold > logits.softmax(-1)[0, 0] > hot
    g = make_generator(0)
    greedy = SamplingParams(temperature=0)
    batch = torch.randn(64, 50, generator=torch.Generator().manual_seed(1))
    for _ in range(3):
        assert torch.equal(sample_next(batch, greedy, g), batch.argmax(-1))


def test_repetition_penalty_lowers_seen_tokens():
    logits = torch.tensor([[2.0, -1.0, 0.5, 1.0]])
    seen = torch.tensor([[0, 1, 1]])  # duplicates are penalised once
    out = apply_repetition_penalty(logits, seen, 2.0)
    assert out.tolist() == [[1.0, -2.0, 0.5, 1.0]]  # positive divided, negative multiplied
    p_before, p_after = logits.softmax(-1)[0], out.softmax(-1)[0]
    assert p_after[0] < p_before[0] and p_after[1] < p_before[1]
    assert torch.equal(apply_repetition_penalty(logits, seen, 1.0), logits)


def test_token_distribution_chains_filters():
    logits = logits_of([0.15, 0.5, 0.05, 0.3])
    probs = token_distribution(logits, SamplingParams(top_k=3, top_p=0.7))
    assert probs[0].tolist() == pytest.approx([0, 0.5 / 0.8, 0, 0.3 / 0.8], abs=1e-6)
    # greedy reports the temperature-1 die
    assert token_distribution(logits, SamplingParams(temperature=0))[0].tolist() == pytest.approx(
        [0.15, 0.5, 0.05, 0.3], abs=1e-6
    )


def test_roll_draws_with_the_right_frequencies():
    p = torch.tensor([0.1, 0.6, 0.0, 0.3])
    draws = roll(p.expand(40_000, 4), 1.0, make_generator(0))
    freq = torch.bincount(draws, minlength=4).float() / draws.numel()
    assert freq[2] == 0  # a removed token is never drawn
    assert torch.allclose(freq, p, atol=0.01)


def test_sampling_ignores_global_rng():
    logits = torch.randn(8, 100, generator=torch.Generator().manual_seed(0))
    params = SamplingParams(temperature=1.0)
    torch.manual_seed(1)
    a = sample_next(logits, params, make_generator(7))
    torch.manual_seed(2)
    torch.rand(10)
    b = sample_next(logits, params, make_generator(7))
    assert torch.equal(a, b)


def test_top_candidates():
    logits = logits_of([0.15, 0.5, 0.05, 0.3])[0]
    top = top_candidates(logits, 2)
    assert [i for i, _ in top] == [1, 3]
    assert [p for _, p in top] == pytest.approx([0.5, 0.3], abs=1e-6)
    assert len(top_candidates(logits, 10)) == 4


@pytest.mark.parametrize(
    "bad",
    [
        dict(temperature=-0.1),
        dict(temperature=math.nan),
        dict(top_p=0.0),
        dict(top_p=1.5),
        dict(top_k=-1),
        dict(min_p=1.5),
        dict(repetition_penalty=0.0),
        dict(max_tokens=0),
        dict(stop=[""]),
    ],
)
def test_bad_params_are_user_errors(bad):
    with pytest.raises(TwofilesError):
        SamplingParams(**bad).validate()


# ---------------------------------------------------------------------------------------------
# generation vs the naive oracle


@pytest.fixture(scope="module")
def model() -> Transformer:
    return tiny_model()


def test_cached_greedy_equals_naive(model):
    prompt = [0, 5, 17, 200, 3]
    params = SamplingParams(temperature=0, max_tokens=50)
    assert list(generate(model, prompt, params)) == naive_generate(model, prompt, params, 50)


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(temperature=1.0, seed=3),
        SamplingParams(temperature=0.7, top_k=20, top_p=0.9, min_p=0.02, seed=11),
        SamplingParams(temperature=1.3, repetition_penalty=1.5, seed=5),
    ],
)
def test_cached_sampling_equals_naive_with_the_same_seed(model, params):
    prompt = [0, 9, 8, 7]
    params.max_tokens = 30
    assert list(generate(model, prompt, params)) == naive_generate(model, prompt, params, 30)


def test_seed_determinism(model):
    params = SamplingParams(temperature=1.0, seed=42, max_tokens=20)
    a = list(generate(model, [0, 1, 2], params))
    torch.manual_seed(123)
    assert list(generate(model, [0, 1, 2], params)) == a
    other = list(
        generate(model, [0, 1, 2], SamplingParams(temperature=1.0, seed=43, max_tokens=20))
    )
    assert other != a  # a high-entropy model: 20 draws agreeing by chance is ~impossible


def test_batched_greedy_equals_unbatched(model):
    prompts = [[0, 5, 6], [0, 100, 101, 102, 103], [0, 7, 8], [0, 1], [0, 200, 201, 202, 203]]
    params = SamplingParams(temperature=0, max_tokens=12)
    batched = generate_batch(model, prompts, params)
    assert batched == [list(generate(model, p, params)) for p in prompts]
    assert all(len(r) == 12 for r in batched)


def test_identical_prompts_prefill_once(model, monkeypatch):
    """N samples of one prompt: one single-row prefill, copied into every row's cache; the rows
    then decode as if each had prefilled itself (greedy rows equal an unbatched run)."""
    prompt = [0, 9, 10, 11]
    greedy = SamplingParams(temperature=0, max_tokens=10)
    shapes = []
    real = type(model).hidden_states  # what prefill and every decode step go through

    def recording(self, idx, *a, **kw):
        shapes.append(tuple(idx.shape))
        return real(self, idx, *a, **kw)

    monkeypatch.setattr(type(model), "hidden_states", recording)
    batched = generate_batch(model, [prompt] * 4, greedy)
    assert shapes[0] == (1, 4) and set(shapes[1:]) == {(4, 1)}  # prefill on one row, decode on four
    assert batched == [list(generate(model, prompt, greedy))] * 4
    sampled = SamplingParams(temperature=1.0, seed=7, max_tokens=10)
    rows = generate_batch(model, [prompt] * 4, sampled)
    assert len({tuple(r) for r in rows}) > 1  # one prefill, yet every row draws its own tokens
    shapes.clear()
    generate_batch(model, [prompt, [0, 9, 10, 12]], greedy)
    assert shapes[0] == (2, 4)  # different prompts of one length still prefill together


def test_batched_rows_stop_on_their_own(model):
    params = SamplingParams(temperature=0, max_tokens=12)
    prompts = [[0, 5, 6], [0, 7, 8]]
    full = [list(generate(model, p, params)) for p in prompts]
    stop_tok = full[0][3]
    params.stop_token_ids = [stop_tok]
    got = generate_batch(model, prompts, params)
    assert got[0] == full[0][: full[0].index(stop_tok) + 1]
    assert got[1] == (full[1][: full[1].index(stop_tok) + 1] if stop_tok in full[1] else full[1])


# ---------------------------------------------------------------------------------------------
# the one batched decoder (twofiles.decoder): rows of different lengths, continuous admission


def test_batched_decoder_greedy_equals_the_naive_generator_per_row(model):
    """Prompts of different lengths, more of them than rows: each row's greedy tokens are the
    naive (uncached, unbatched) generator's, whichever rows it shared steps with."""
    prompts = [[0, 5, 6], [0, 100, 101, 102, 103, 104, 105], [0, 7], [0, 1, 2, 3], [0, 200, 201]]
    params = SamplingParams(temperature=0, max_tokens=10)
    rows = decode_batch(model, prompts, params, max_rows=2)
    for p, r in zip(prompts, rows):
        assert r.tokens == naive_generate(model, p, params, 10), p
        assert r.finish == "length"


def test_batched_decoder_prefills_repeated_prompts_once_in_any_order(model, monkeypatch):
    """Repeats scattered among other prompts: one prefill row per distinct prompt, and every
    row's cache copied from the right one (its greedy tokens are its own prompt's)."""
    a, b, c = [0, 9, 10, 11], [0, 40, 41], [0, 70, 71, 72, 73]
    prompts = [a, b, a, c, b, a]
    shapes = []
    real = type(model).hidden_states

    def recording(self, idx, *args, **kw):
        shapes.append(tuple(idx.shape))
        return real(self, idx, *args, **kw)

    monkeypatch.setattr(type(model), "hidden_states", recording)
    params = SamplingParams(temperature=0, max_tokens=8)
    rows = decode_batch(model, prompts, params)
    assert shapes[0] == (3, 5)  # a, b, c prefilled together, right-padded to c's length
    for p, r in zip(prompts, rows):
        assert r.tokens == list(generate(model, p, params))


def test_batched_decoder_sampled_rows_equal_generate_with_their_seeds(model):
    """Each row rolls its own seeded die: its tokens equal `generate` with the same params,
    whatever else is in the batch (filters, penalties and lengths differ between rows)."""
    prompts = [[0, 9, 8, 7], [0, 3], [0, 50, 51, 52, 53, 54], [0, 9, 8, 7]]
    params = [
        SamplingParams(temperature=1.0, seed=3, max_tokens=15),
        SamplingParams(temperature=0.7, top_k=20, top_p=0.9, min_p=0.02, seed=11, max_tokens=15),
        SamplingParams(temperature=1.3, repetition_penalty=1.5, seed=5, max_tokens=15),
        SamplingParams(temperature=1.0, seed=4, max_tokens=15),
    ]
    rows = decode_batch(model, prompts, params, max_rows=3)
    for p, sp, r in zip(prompts, params, rows):
        assert r.tokens == list(generate(model, p, sp))
    assert rows[0].tokens != rows[3].tokens  # one prompt, two seeds, two samples


def test_batched_decoder_text_and_stops_equal_generate_steps(model):
    """With a tokenizer: stop strings, stop tokens and the streamed text are the engine's."""
    tok = PieceTokenizer([b"x", b"y", b"z"])  # every id of the model's 260 has a piece
    prompts = [[0, 105, 106], [0, 120, 121, 122, 123], [0, 66]]
    free = [list(generate(model, p, SamplingParams(temperature=0, max_tokens=12))) for p in prompts]
    stop_tok = free[1][2]
    stop_str = tok.decode(free[0][4:6]) if "\ufffd" not in tok.decode(free[0][4:6]) else "zz"
    params = SamplingParams(
        temperature=0, max_tokens=12, stop=[stop_str], stop_token_ids=[stop_tok]
    )
    rows = decode_batch(model, prompts, params, tokenizer=tok)
    for p, r in zip(prompts, rows):
        steps = list(generate_steps(model, p, params, tokenizer=tok))
        assert r.tokens == [s.token for s in steps]
        assert r.text == "".join(s.text for s in steps)
        assert r.finish == steps[-1].finish
    assert rows[1].finish == "stop" and rows[1].tokens[-1] == stop_tok


def test_batched_decoder_refuses_a_prompt_with_no_room(model):
    with pytest.raises(PromptTooLongError):
        decode_batch(model, [[0] * 64], SamplingParams(max_tokens=4))
    assert decode_batch(model, [], SamplingParams()) == []


def test_max_tokens_and_context_limit(model):
    steps = list(generate_steps(model, [0, 1, 2], SamplingParams(temperature=0, max_tokens=7)))
    assert (
        len(steps) == 7
        and steps[-1].finish == "length"
        and all(s.finish is None for s in steps[:-1])
    )
    # max_seq_len 64: a 60-token prompt gets 4 tokens whatever max_tokens says
    steps = list(
        generate_steps(model, list(range(60)), SamplingParams(temperature=0, max_tokens=100))
    )
    assert len(steps) == 4 and steps[-1].finish == "length"
    with pytest.raises(PromptTooLongError):
        list(generate(model, list(range(64)), SamplingParams()))
    with pytest.raises(TwofilesError):
        list(generate(model, [], SamplingParams()))


def test_stop_token_is_last(model):
    full = list(generate(model, [0, 3], SamplingParams(temperature=0, max_tokens=20)))
    stop = full[5]
    steps = list(
        generate_steps(
            model, [0, 3], SamplingParams(temperature=0, max_tokens=20, stop_token_ids=[stop])
        )
    )
    assert [s.token for s in steps] == full[: full.index(stop) + 1]
    assert steps[-1].finish == "stop"


def test_steps_report_the_die(model):
    steps = list(generate_steps(model, [0, 3], SamplingParams(temperature=0, max_tokens=5), top=4))
    for s in steps:
        assert len(s.top) == 4
        probs = [p for _, p in s.top]
        assert probs == sorted(probs, reverse=True) and sum(probs) <= 1 + 1e-6
        assert s.top[0] == (s.token, pytest.approx(s.prob))  # greedy takes the most likely face
    steps = list(
        generate_steps(model, [0, 3], SamplingParams(top_k=3, seed=0, max_tokens=5), top=5)
    )
    for s in steps:
        assert sum(p for _, p in s.top) == pytest.approx(1.0) and s.top[3][1] == 0.0
        assert s.token in [i for i, _ in s.top[:3]]


# ---------------------------------------------------------------------------------------------
# text: UTF-8 and stop strings


def scripted(
    pieces: list[bytes], tok: PieceTokenizer | None = None
) -> tuple[ScriptedModel, PieceTokenizer, list[int]]:
    tok = tok or PieceTokenizer([p for p in pieces if len(p) > 1])
    script = [tok.id_of(p) for p in pieces]
    return ScriptedModel(script, tok.vocab_size, prompt_len=2), tok, script


def test_utf8_split_across_tokens_is_never_shown_half_done():
    text = "héllo 🙂 wörld ✓"
    model, tok, _ = scripted([bytes([b]) for b in text.encode()])  # one byte per token
    deltas = list(
        generate_text(model, tok, "x", SamplingParams(temperature=0, max_tokens=len(text.encode())))
    )
    assert "".join(deltas) == text
    assert all("\ufffd" not in d for d in deltas)
    assert "🙂" in deltas  # emitted once, whole, when its 4th byte arrives


def test_text_is_cut_exactly_at_a_stop_string_split_across_tokens():
    pieces = [b"Hello", b" wor", b"ld", b"!", b"\n", b"\n", b"Bye"]
    model, tok, _ = scripted(pieces)
    params = SamplingParams(temperature=0, max_tokens=20, stop=["\n\n"])
    assert "".join(generate_text(model, tok, "x", params)) == "Hello world!"
    params.stop = ["orld"]  # starts inside " wor"
    assert "".join(generate_text(model, tok, "x", params)) == "Hello w"
    steps = list(generate_steps(model, [0, 1], params, tokenizer=tok))
    assert [s.token for s in steps] == [
        tok.id_of(p) for p in pieces[:3]
    ]  # halts on the completing token
    assert steps[-1].finish == "stop"


def test_stop_string_inside_one_token_and_earliest_of_many():
    model, tok, _ = scripted([b"ab", b"cSTOPde", b"f"])
    params = SamplingParams(temperature=0, max_tokens=20, stop=["de", "STOP", "zzz"])
    assert "".join(generate_text(model, tok, "x", params)) == "abc"


def test_held_back_stop_prefix_is_released_when_it_is_not_a_stop():
    model, tok, _ = scripted([b"a", b"\n", b"b", b"\n"])
    deltas = list(
        generate_text(model, tok, "x", SamplingParams(temperature=0, max_tokens=4, stop=["\n\n"]))
    )
    assert deltas == [
        "a",
        "\nb",
        "\n",
    ]  # each "\n" is held until the next token (or the end) clears it


def test_bos_ends_generation_with_a_tokenizer():
    model, tok, _ = scripted([b"a", b"b", b""])  # b"" is id 0, the bos
    steps = list(
        generate_steps(model, [0, 1], SamplingParams(temperature=0, max_tokens=10), tokenizer=tok)
    )
    assert [s.text for s in steps] == ["a", "b", ""] and steps[-1].finish == "stop"


@settings(max_examples=150, deadline=None)
@given(
    text=st.text(alphabet=st.sampled_from(list("ab\n é🙂")), max_size=30),
    cuts=st.lists(st.integers(1, 4), max_size=40),
    stops=st.lists(
        st.text(alphabet=st.sampled_from(list("ab\n é🙂")), min_size=1, max_size=3), max_size=2
    ),
)
def test_text_stream_property(text, cuts, stops):
    """Any byte segmentation: deltas are whole text, and their join is the text cut before the
    first stop string to appear (as tokens arrive; the earliest one if a token completes two)."""
    data = text.encode()
    pieces, i = [], 0
    for c in cuts + [len(data)]:
        if i >= len(data):
            break
        pieces.append(data[i : i + c])
        i += c
    tok = PieceTokenizer(pieces)
    stream = TextStream(tok, stops)
    deltas = []
    for p in pieces:
        deltas.append(stream.push(tok.id_of(p)))
        if stream.stopped:
            break
    deltas.append(stream.finish())
    expected, stopped = text, False
    for k in range(1, len(pieces) + 1):  # the text visible after each token
        seen = b"".join(pieces[:k]).decode("utf-8", errors="ignore")
        hits = [seen.find(s) for s in stops if s in seen]
        if hits:
            expected, stopped = text[: min(hits)], True
            break
    assert "".join(deltas) == expected
    assert all("\ufffd" not in d for d in deltas)
    assert stream.stopped == stopped


# ---------------------------------------------------------------------------------------------
# end to end with the real tokenizer and the parameters file


def test_real_tokenizer_and_saved_model(tmp_path):
    from twofiles.artifact import load_model, save_model
    from twofiles.tokenizer import Tokenizer

    tok = Tokenizer.train(
        ["héllo wörld, the cat sat on the mat 🙂 " * 30, "naïve café ünïcode ✓ " * 30], 300
    )
    model = tiny_model(seed=3, vocab_size=tok.vocab_size)
    loaded = load_model(save_model(tmp_path / "model.safetensors", model, tok))
    params = SamplingParams(temperature=0, max_tokens=40)
    prompt = "the cat"
    ids = [tok.bos_id] + tok.encode(prompt)
    tokens = list(generate(loaded.model, ids, params, tokenizer=loaded.tokenizer))
    assert tokens == list(generate(model, ids, params, tokenizer=tok))
    text = "".join(generate_text(loaded.model, loaded.tokenizer, prompt, params))
    body = tokens[:-1] if tokens[-1] == tok.bos_id else tokens
    assert text == tok.decode(body)
    # a stop string taken from the middle of the text cuts there, whatever the token boundaries
    stop = next(text[i : i + 3] for i in range(4, len(text) - 3) if "\ufffd" not in text[i : i + 3])
    params.stop = [stop]
    assert (
        "".join(generate_text(loaded.model, loaded.tokenizer, prompt, params))
        == text[: text.find(stop)]
    )


def test_cache_length_comes_in_powers_of_two_within_the_context():
    from twofiles.engine import cache_length

    assert [cache_length(n, 8192) for n in (1, 63, 64, 95, 127, 128, 1000)] == [
        64,
        64,
        128,
        128,
        128,
        256,
        1024,
    ]
    assert cache_length(5000, 6000) == 6000 and cache_length(50, 32) == 32  # never past the context
    assert all(cache_length(n, 8192) > n for n in range(1, 4000))  # never filled to its very end
