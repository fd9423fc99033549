"""Tokenizer: known answers, round trips (text, save/load), special-token safety, byte counts."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from twofiles.errors import BadInputError, TwofilesError
from twofiles.tokenizer import MIN_VOCAB_SIZE, SPECIAL_TOKENS, Tokenizer

CORPUS = ["low lower lowest newer wider new"] * 5


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.train(CORPUS, MIN_VOCAB_SIZE + 6)


@pytest.fixture(scope="module")
def wide_tok() -> Tokenizer:
    text = "The quick brown fox jumps over the lazy dog. Ünïcödé 日本語 🙂 1234567890\n\tend " * 20
    return Tokenizer.train([text], 600, min_frequency=1)


def test_known_merges_and_encoding(tok: Tokenizer) -> None:
    assert tok.vocab_size == MIN_VOCAB_SIZE + 6
    merged = [tok.id_to_token(i) for i in range(MIN_VOCAB_SIZE, tok.vocab_size)]
    assert merged == [
        "er",
        "lo",
        "low",
        "ew",
        "new",
        "Ġlow",
    ]  # BPE merge order, most frequent first
    assert tok.pieces("lowest newer") == [
        (272, "low"),
        (82, "e"),
        (96, "s"),
        (97, "t"),
        (234, " "),
        (274, "new"),
        (270, "er"),
    ]


def test_pretokenizer_splits_digits_in_groups_of_three() -> None:
    t = Tokenizer.train(["1234567 x"], MIN_VOCAB_SIZE + 10, min_frequency=1)
    assert [p for _, p in t.pieces("1234567")] == ["123", "456", "7"]
    # a merge never crosses the split boundaries: "12" + "3" is never "1234"
    assert all(
        len(t.id_to_token(i)) <= 3
        for i in range(MIN_VOCAB_SIZE, t.vocab_size)
        if t.id_to_token(i).isdigit()
    )


def test_special_tokens_take_lowest_ids(tok: Tokenizer) -> None:
    assert tok.special_ids == {s: i for i, s in enumerate(SPECIAL_TOKENS)}
    assert tok.bos_id == 0
    assert len(set(SPECIAL_TOKENS)) == len(SPECIAL_TOKENS) == 14


def test_plain_text_never_produces_special_tokens(tok: Tokenizer) -> None:
    text = "<|bos|>hi<|assistant_end|>"
    ids = tok.encode(text)
    assert not set(ids) & set(tok.special_ids.values())
    assert tok.decode(ids) == text
    assert tok.encode_batch([text]) == [ids]
    assert tok.encode(text, allow_special=True)[0] == tok.bos_id  # opt-in for rendered templates
    assert tok.decode([tok.bos_id] + tok.encode("x")) == "<|bos|>x"
    assert tok.decode([tok.bos_id] + tok.encode("x"), skip_special=True) == "x"


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.text(max_size=60))
def test_round_trip_and_byte_counts_any_text(wide_tok: Tokenizer, text: str) -> None:
    ids = wide_tok.encode(text)
    assert wide_tok.decode(ids) == text
    assert int(wide_tok.token_bytes()[ids].sum()) == len(text.encode("utf-8"))
    pieces = wide_tok.pieces(text)
    assert [i for i, _ in pieces] == ids


def test_round_trip_fixed_examples(wide_tok: Tokenizer) -> None:
    for text in [
        "",
        " ",
        "\n\n\t",
        "héllo wörld",
        "👩‍👩‍👧 family",
        "\ufffd\x00 nul",
        "ｆｕｌｌ",
        "a" * 1000,
    ]:
        assert wide_tok.decode(wide_tok.encode(text)) == text
    assert wide_tok.encode_batch(["ab", "", "🙂"]) == [
        wide_tok.encode("ab"),
        [],
        wide_tok.encode("🙂"),
    ]


def test_token_bytes(tok: Tokenizer) -> None:
    tb = tok.token_bytes()
    assert tb.dtype == np.int32 and tb.shape == (tok.vocab_size,)
    assert (tb[: len(SPECIAL_TOKENS)] == 0).all()
    assert (tb[len(SPECIAL_TOKENS) : MIN_VOCAB_SIZE] == 1).all()  # the 256 byte symbols
    assert tb[tok.encode("low")[0]] == 3


def test_pieces_show_partial_utf8_escaped(wide_tok: Tokenizer) -> None:
    t = Tokenizer.train(["ab"], MIN_VOCAB_SIZE)  # bytes only: an emoji is 4 tokens
    assert t.pieces("🙂") == [
        (t.encode("🙂")[0], "\\xf0"),
        (t.encode("🙂")[1], "\\x9f"),
        (t.encode("🙂")[2], "\\x99"),
        (t.encode("🙂")[3], "\\x82"),
    ]
    assert "".join(p for _, p in wide_tok.pieces("The lazy dog")) == "The lazy dog"


def test_save_load_round_trip(tmp_path, wide_tok: Tokenizer) -> None:
    path = wide_tok.save(tmp_path / "tokenizer.json")
    assert json.loads(path.read_text())["model"]["type"] == "BPE"
    assert [p.name for p in tmp_path.iterdir()] == ["tokenizer.json"]  # no temp file left
    loaded = Tokenizer.load(path)
    text = "The quick 🙂 fox <|bos|> 987654"
    assert loaded.encode(text) == wide_tok.encode(text)
    assert loaded.vocab_size == wide_tok.vocab_size and loaded.special_ids == wide_tok.special_ids
    assert (loaded.token_bytes() == wide_tok.token_bytes()).all()
    assert Tokenizer.from_json(wide_tok.to_json()).encode(text) == wide_tok.encode(text)
    assert Tokenizer.load(tmp_path).encode(text) == wide_tok.encode(
        text
    )  # a directory holding tokenizer.json


def test_load_from_model_safetensors_metadata(tmp_path, tok: Tokenizer) -> None:
    from safetensors.numpy import save_file

    path = tmp_path / "model.safetensors"
    save_file(
        {"x": np.zeros(2, dtype=np.float32)},
        str(path),
        metadata={"format": "twofiles", "tokenizer": tok.to_json()},
    )
    assert Tokenizer.load(path).encode("lowest") == tok.encode("lowest")


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"{not json", "invalid JSON"),
        (b"\xff\xfe", "not UTF-8"),
        (b'{"version": "1.0"}', "not a valid tokenizer.json"),
        (b"", "invalid JSON"),
    ],
)
def test_load_bad_file_is_a_clear_error(tmp_path, content: bytes, match: str) -> None:
    path = tmp_path / "tokenizer.json"
    path.write_bytes(content)
    with pytest.raises(BadInputError, match=match) as e:
        Tokenizer.load(path)
    assert str(path) in str(e.value)


def test_load_missing_file_and_foreign_tokenizer(tmp_path) -> None:
    with pytest.raises(BadInputError, match="no such tokenizer file"):
        Tokenizer.load(tmp_path / "nope.json")
    from tokenizers import Tokenizer as HF
    from tokenizers import models

    (tmp_path / "foreign.json").write_text(HF(models.BPE()).to_str())
    with pytest.raises(BadInputError, match="no <\\|bos\\|>"):
        Tokenizer.load(tmp_path / "foreign.json")


def test_vocab_too_small() -> None:
    with pytest.raises(TwofilesError, match="too small"):
        Tokenizer.train(["abc"], MIN_VOCAB_SIZE - 1)
