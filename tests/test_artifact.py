"""The parameters file: round trip, self-containedness, and robustness against broken or hostile
files (every failure is a BadInputError naming the file: never a crash, hang or huge allocation)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from twofiles.artifact import load_model, read_metadata, save_model
from twofiles.errors import BadInputError
from twofiles.model import ModelConfig, Transformer
from twofiles.tokenizer import Tokenizer

CFG = ModelConfig(
    vocab_size=300, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=64, max_seq_len=32
)


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.train(["the quick brown fox jumps over the lazy dog " * 50], 300)


@pytest.fixture(scope="module")
def good_file(tmp_path_factory: pytest.TempPathFactory, tok: Tokenizer) -> bytes:
    m = Transformer(ModelConfig(**{**CFG.to_dict(), "vocab_size": tok.vocab_size}))
    m.init_weights(0)
    path = tmp_path_factory.mktemp("art") / "model.safetensors"
    save_model(path, m, tok, provenance={"stage": "test"})
    return path.read_bytes()


def split(data: bytes) -> tuple[dict, bytes]:
    n = struct.unpack("<Q", data[:8])[0]
    return json.loads(data[8 : 8 + n]), data[8 + n :]


def join(header: dict, body: bytes) -> bytes:
    h = json.dumps(header).encode()
    return struct.pack("<Q", len(h)) + h + body


def test_round_trip_is_exact_and_self_contained(tmp_path: Path, tok: Tokenizer) -> None:
    for tie in (False, True):
        m = Transformer(
            ModelConfig(**{**CFG.to_dict(), "vocab_size": tok.vocab_size, "tie_embeddings": tie})
        )
        m.init_weights(1)
        path = save_model(
            tmp_path / f"m{tie}.safetensors",
            m,
            tok,
            provenance={"stage": "test"},
            chat_template="{{ x }}",
        )
        loaded = load_model(path)
        for (k, a), (_, b) in zip(m.state_dict().items(), loaded.model.state_dict().items()):
            assert torch.equal(a, b), k
        assert (loaded.model.lm_head.weight is loaded.model.model.embed_tokens.weight) == tie
        assert loaded.tokenizer.encode("the lazy fox") == tok.encode("the lazy fox")
        assert (
            loaded.chat_template == "{{ x }}"
            and loaded.provenance["stage"] == "test"
            and "created" in loaded.provenance
        )
        assert not list(tmp_path.glob(".*.tmp"))  # the atomic write left no temp file


def _expect_clean_error(path: Path) -> None:
    with pytest.raises(BadInputError) as e:
        load_model(path)
    assert str(path) in str(e.value)


def test_structural_corruptions_give_clear_errors(tmp_path: Path, good_file: bytes) -> None:
    header, body = split(good_file)
    name = next(k for k in header if k != "__metadata__")
    cases: dict[str, bytes] = {
        "empty": b"",
        "short": good_file[:5],
        "huge_header_length": struct.pack("<Q", 2**62) + good_file[8:],
        "header_not_json": struct.pack("<Q", 10) + b"{not json!" + body,
        "header_not_object": struct.pack("<Q", 2) + b"[]" + body,
        "truncated_body": good_file[: len(good_file) - 100],
        "offsets_out_of_range": join(
            {**header, name: {**header[name], "data_offsets": [0, 10**12]}}, body
        ),
        "wrong_dtype": join({**header, name: {**header[name], "dtype": "Q9_9"}}, body),
        "not_twofiles": join({**header, "__metadata__": {"format": "pt"}}, body),
        "config_missing": join(
            {
                **header,
                "__metadata__": {k: v for k, v in header["__metadata__"].items() if k != "config"},
            },
            body,
        ),
        "config_not_json": join(
            {**header, "__metadata__": {**header["__metadata__"], "config": "{oops"}}, body
        ),
        "config_unknown_field": join(
            {
                **header,
                "__metadata__": {
                    **header["__metadata__"],
                    "config": json.dumps({**CFG.to_dict(), "bogus": 1}),
                },
            },
            body,
        ),
        "tokenizer_garbage": join(
            {**header, "__metadata__": {**header["__metadata__"], "tokenizer": "{]"}}, body
        ),
        "missing_tensor": join({k: v for k, v in header.items() if k != name}, body),
        "absurd_shape": join(
            {
                **header,
                "__metadata__": {
                    **header["__metadata__"],
                    "config": json.dumps({**CFG.to_dict(), "dim": 64, "hidden_dim": 64}),
                },
            },
            body,
        ),
    }
    for case, data in cases.items():
        p = tmp_path / f"{case}.safetensors"
        p.write_bytes(data)
        try:
            _expect_clean_error(p)
        except BaseException as e:  # name the case that failed
            raise AssertionError(f"case {case}: {e!r}") from e
    _expect_clean_error(tmp_path / "does_not_exist.safetensors")


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_fuzzed_files_never_crash(tmp_path: Path, good_file: bytes, data: st.DataObject) -> None:
    """Random truncations and byte flips anywhere (header included): either a clean BadInputError
    or, when the flip lands in weight bytes, a model that loads."""
    blob = bytearray(good_file)
    cut = data.draw(st.integers(0, len(blob)))
    flips = data.draw(
        st.lists(st.tuples(st.integers(0, max(0, len(blob) - 1)), st.integers(0, 255)), max_size=4)
    )
    header_len = struct.unpack("<Q", good_file[:8])[0] + 8
    flips += data.draw(
        st.lists(st.tuples(st.integers(0, header_len - 1), st.integers(0, 255)), max_size=3)
    )
    for i, v in flips:
        blob[i] = v
    blob = blob[:cut] if data.draw(st.booleans()) else blob
    p = tmp_path / "fuzz.safetensors"
    p.write_bytes(bytes(blob))
    try:
        loaded = load_model(p)
    except BadInputError:
        return
    assert loaded.model.config.n_layers >= 1


def test_read_metadata_rejects_header_longer_than_file(tmp_path: Path) -> None:
    p = tmp_path / "x.safetensors"
    p.write_bytes(struct.pack("<Q", 1000) + b"{}")
    with pytest.raises(BadInputError, match="header length"):
        read_metadata(p)
