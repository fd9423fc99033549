"""Compression: the arithmetic coder alone (known answers, round trips, properties), the
frequency tables, and `twofiles compress` / `decompress` end to end with a tiny model: byte-
identical round trips, a size that matches the model's cross-entropy, and every refusal."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tiny_models import random_model, tiny_tokenizer
from twofiles.cli import main
from twofiles.compression.coder import (
    MAX_TOTAL,
    Decoder,
    Encoder,
    cumulative,
    decode_symbols,
    encode_symbols,
)

# ------------------------------------------------------------------ the coder alone


def ideal_bits(symbols: list[int], freqs: list[int]) -> float:
    total = sum(freqs)
    return sum(math.log2(total / freqs[s]) for s in symbols)


def test_uniform_binary_codes_each_bit_as_itself():
    # two equal symbols: each symbol is one bit, then the two closing bits "01", zero-padded
    cum = cumulative([1, 1])
    data = encode_symbols([1, 0, 1, 1, 0, 0, 1, 0], cum)
    assert data == bytes([0b10110010, 0b01000000])
    assert decode_symbols(data, 8, cum) == [1, 0, 1, 1, 0, 0, 1, 0]


def test_uniform_256_symbols_is_the_bytes_themselves():
    cum = cumulative([1] * 256)
    msg = list(b"arithmetic")
    data = encode_symbols(msg, cum)
    assert data[: len(msg)] == b"arithmetic" and len(data) == len(msg) + 1
    assert decode_symbols(data, len(msg), cum) == msg


def test_empty_input_is_the_closing_bits_alone():
    cum = cumulative([3, 5])
    assert encode_symbols([], cum) == b"\x40"
    assert decode_symbols(b"\x40", 0, cum) == []


def test_one_symbol_alphabet_costs_nothing_per_symbol():
    data = encode_symbols([0] * 1000, [0, 1])
    assert data == b"\x40"
    assert decode_symbols(data, 1000, [0, 1]) == [0] * 1000


def test_skewed_frequencies_cost_their_entropy():
    rng = random.Random(0)
    freqs = [900, 90, 9, 1]
    syms = rng.choices(range(4), weights=freqs, k=20_000)
    data = encode_symbols(syms, cumulative(freqs))
    assert 8 * len(data) <= ideal_bits(syms, freqs) + 0.001 * len(syms) + 10
    assert decode_symbols(data, len(syms), cumulative(freqs)) == syms


def test_adversarial_frequencies_round_trip():
    # the largest total, a frequency-1 symbol beside a huge one, coded back to back: the
    # interval's narrowest cases, and long runs of pending (undecided) bits
    freqs = [1, MAX_TOTAL - 3, 1, 1]
    cum = cumulative(freqs)
    syms = [0, 2, 3, 0, 0, 2] * 50 + [1] * 500 + [3, 0] * 50
    assert decode_symbols(encode_symbols(syms, cum), len(syms), cum) == syms
    # a symbol whose range sits just either side of the midpoint, repeatedly
    cum = cumulative([MAX_TOTAL // 2 - 1, 2, MAX_TOTAL // 2 - 1])
    syms = [1] * 200 + [0, 2] * 100
    assert decode_symbols(encode_symbols(syms, cum), len(syms), cum) == syms


def test_zero_frequency_symbols_are_skipped_and_bad_ranges_refused():
    cum = cumulative([0, 5, 0, 3])
    syms = [1, 3, 3, 1]
    assert decode_symbols(encode_symbols(syms, cum), 4, cum) == syms
    enc = Encoder()
    for lo, hi, total in ((2, 2, 4), (3, 5, 4), (0, 1, MAX_TOTAL + 1), (-1, 1, 4)):
        with pytest.raises(ValueError):
            enc.encode(lo, hi, total)
    with pytest.raises(ValueError):
        Decoder(b"").target(0)


def test_tables_may_change_from_symbol_to_symbol():
    rng = random.Random(1)
    tables = [
        cumulative(rng.randint(1, 1000) for _ in range(rng.randint(1, 40))) for _ in range(300)
    ]
    syms = [rng.randrange(len(c) - 1) for c in tables]
    enc = Encoder()
    for s, c in zip(syms, tables):
        enc.encode(c[s], c[s + 1], c[-1])
    dec = Decoder(enc.finish())
    assert [dec.decode(c) for c in tables] == syms


@settings(max_examples=60, deadline=None)
@given(
    freqs=st.lists(st.integers(1, 1 << 12), min_size=1, max_size=64),
    data=st.data(),
)
def test_property_round_trip_at_entropy(freqs, data):
    syms = data.draw(st.lists(st.integers(0, len(freqs) - 1), max_size=300))
    cum = cumulative(freqs)
    coded = encode_symbols(syms, cum)
    assert decode_symbols(coded, len(syms), cum) == syms
    # total <= 2**18 << 2**30: the finite-precision loss is < 0.001 bit per symbol
    assert 8 * len(coded) <= ideal_bits(syms, freqs) + 0.001 * len(syms) + 10


@settings(max_examples=30, deadline=None)
@given(st.binary(max_size=64), st.integers(1, 50))
def test_property_any_bytes_decode_to_valid_symbols(junk, n):
    # a damaged payload still decodes to in-range symbols (the checksum then refuses it)
    cum = cumulative([5, 1, 1000, 7])
    assert all(0 <= s < 4 for s in decode_symbols(junk, n, cum))


# ------------------------------------------------------------------ the frequency tables


def test_cumulative_frequencies_are_a_pure_function_of_the_logits():
    from twofiles.compression.codec import FREQ_SCALE, cumulative_frequencies

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 500, generator=g) * 8
    logits[0, 7] = -float("inf")  # impossible under the model, still codable
    a, b = cumulative_frequencies(logits), cumulative_frequencies(logits.clone())
    assert torch.equal(a, b)
    freqs = a.diff(dim=-1)
    assert int(freqs.min()) >= 1 and int(freqs[0, 7]) == 1
    assert (a[:, -1] <= MAX_TOTAL).all() and (a[:, 0] == 0).all()
    p = torch.softmax(logits.double(), -1)
    assert torch.allclose(freqs.double() / a[:, -1:].double(), p, atol=500 / FREQ_SCALE)


# ------------------------------------------------------------------ end to end with a tiny model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Two tiny models with the same tokenizer (a mismatched model is the other one)."""
    from twofiles.artifact import save_model

    tok = tiny_tokenizer()
    root = tmp_path_factory.mktemp("compress_models")
    paths = []
    for seed in (0, 1):
        paths.append(
            str(save_model(root / f"m{seed}.safetensors", random_model(tok, seed=seed), tok))
        )
    return paths


@pytest.fixture(autouse=True)
def _threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main([*argv, "--no-progress"])
    out, err = capsys.readouterr()
    return rc, out, err


def squeeze(capsys, model, src, dst, *flags):
    return cli(capsys, "compress", model, str(src), str(dst), "--threads", "1", "--json", *flags)


TEXTS = {
    "ascii": "to be or not to be, that is the question: " * 3,
    "accents": "Café, naïve façade; Ærøskøbing, São Paulo, Straße, déjà vu. ",
    "cjk": "天地玄黄，宇宙洪荒。日月盈昃，辰宿列张。東京は日本の首都です。한국어도 있어요.",
    "emoji": "a 🙂 b 👩‍👩‍👧 c 🇫🇷 d \U0001f9ec\n\t\r\n<|bos|> not a special token",
    "empty": "",
    "long": "Whether 'tis nobler in the mind to suffer the slings and arrows. " * 40,
}


@pytest.mark.parametrize("kind", sorted(TEXTS))
def test_round_trip_is_byte_identical(tiny, tmp_path, capsys, kind):
    src, packed, back = tmp_path / "in.txt", tmp_path / "in.tfac", tmp_path / "out.txt"
    src.write_bytes(TEXTS[kind].encode("utf-8"))
    # 16-token blocks, 3 per batch: the long text spans several batches and a shorter last block
    rc, out, err = squeeze(capsys, tiny[0], src, packed, "--block-len", "16", "--batch-size", "3")
    assert rc == 0, err
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["verb"] == "compress" and summary["bytes"] == len(src.read_bytes())
    assert summary["compressed_bytes"] == packed.stat().st_size
    if kind == "long":
        assert summary["blocks"] > 3 * 2 and summary["tokens"] % 15 != 0
    rc, out, err = cli(capsys, "decompress", tiny[0], str(packed), str(back), "--json")
    assert rc == 0, err
    assert back.read_bytes() == src.read_bytes()
    last = json.loads(out.strip().splitlines()[-1])
    assert last["verb"] == "decompress" and last["bytes"] == len(src.read_bytes())


def test_compression_is_deterministic_and_reads_the_header_settings(tiny, tmp_path, capsys):
    src = tmp_path / "in.txt"
    src.write_text(TEXTS["long"], encoding="utf-8")
    a, b = tmp_path / "a.tfac", tmp_path / "b.tfac"
    for dst in (a, b):
        assert squeeze(capsys, tiny[0], src, dst, "--block-len", "32", "--batch-size", "2")[0] == 0
    assert a.read_bytes() == b.read_bytes()
    from twofiles.compression.codec import read_header

    header, s, _ = read_header(a.read_bytes(), str(a))
    assert (s.block_len, s.batch_size, s.threads, s.dtype) == (32, 2, 1, "fp32")
    assert header["original"]["bytes"] == len(TEXTS["long"])
    # the settings given again, the same as recorded, are accepted
    rc, _, err = cli(
        capsys, "decompress", tiny[0], str(a), str(tmp_path / "o"), "--threads", "1",
        "--block-len", "32", "--batch-size", "2", "--dtype", "fp32", "--device", "cpu",
    )  # fmt: skip
    assert rc == 0, err


def test_size_matches_the_models_cross_entropy(tiny):
    """The payload is the model's cross-entropy on the coded tokens (a plain parallel forward
    over each [bos] + block), give or take the coder's overhead: well under 1%."""
    from twofiles.artifact import load_model
    from twofiles.compression.codec import compress, default_settings

    loaded = load_model(tiny[0])
    data = TEXTS["long"].encode()
    ids = loaded.tokenizer.encode(TEXTS["long"])
    model = loaded.model.eval()
    nats = 0.0
    with torch.no_grad():
        for s in range(0, len(ids), 31):
            row = torch.tensor([[loaded.tokenizer.bos_id, *ids[s : s + 31]]])
            nats += float(model(row[:, :-1], row[:, 1:], reduction="sum"))
    bits = nats / math.log(2)
    settings_ = default_settings(model, block_len=32, batch_size=4, threads=1)
    res = compress(loaded, data, settings_)
    payload_bits = 8 * res.header["payload"]["bytes"]
    assert bits > 1000  # a random model: several bits per token, plenty to measure
    assert abs(res.ideal_bits - bits) <= 0.001 * bits  # frequency quantisation
    assert bits - 1 <= payload_bits <= res.ideal_bits + 0.001 * bits + 10  # the coder itself


def refused(capsys, *argv: str, out_path) -> str:
    rc, _, err = cli(capsys, *argv)
    assert rc == 2, err
    assert not out_path.exists()
    leftovers = [p.name for p in out_path.parent.iterdir() if p.name.startswith(".")]
    assert not leftovers
    return err


@pytest.fixture
def packed(tiny, tmp_path, capsys):
    src = tmp_path / "in.txt"
    src.write_text(TEXTS["long"][:400], encoding="utf-8")
    dst = tmp_path / "in.tfac"
    assert squeeze(capsys, tiny[0], src, dst, "--block-len", "24")[0] == 0
    return dst


def test_another_model_is_refused(tiny, packed, tmp_path, capsys):
    out = tmp_path / "restored.txt"
    err = refused(capsys, "decompress", tiny[1], str(packed), str(out), out_path=out)
    assert str(packed) in err and "another model" in err and "weights sha256" in err


@pytest.mark.parametrize(
    "flags, what",
    [
        (("--threads", "2"), "threads = 1, not 2"),
        (("--block-len", "32"), "block_len = 24, not 32"),
        (("--batch-size", "8"), "batch_size = 32, not 8"),
        (("--dtype", "bf16"), "dtype = 'fp32', not 'bf16'"),
    ],
)
def test_changed_settings_are_refused(tiny, packed, tmp_path, capsys, flags, what):
    out = tmp_path / "restored.txt"
    err = refused(capsys, "decompress", tiny[0], str(packed), str(out), *flags, out_path=out)
    assert what in err and str(packed) in err


def rewrite_header(path, change) -> None:
    from twofiles.compression import container

    header, payload = container.unpack(path.read_bytes(), str(path))
    change(header)
    path.write_bytes(container.pack(header, payload))


def test_corrupt_truncated_and_foreign_files_are_refused(tiny, packed, tmp_path, capsys):
    import struct
    import zlib

    from twofiles.compression.container import MAGIC, pack, unpack

    blob = packed.read_bytes()
    out = tmp_path / "restored.txt"
    cases = {
        "flipped": (blob[:-3] + bytes([blob[-3] ^ 0x10]) + blob[-2:], "corrupt"),
        "truncated": (blob[:-5], "truncated"),
        "cut in header": (blob[:30], "truncated"),
        "extra": (blob + b"\0", "unexpected bytes"),
        "not ours": (b"hello world, plain text", "bad magic"),
        "bad json": (blob[:18] + b"{" * 10 + blob[28:], "damaged header"),
    }
    body = b'{"model": {}, "settings": '  # a header cut short, with a right CRC-32
    cases["header not json"] = (
        MAGIC + struct.pack("<HII", 1, len(body), zlib.crc32(body)) + body,
        "damaged header: not JSON",
    )
    header, payload = unpack(blob, "x")
    header["original"]["tokens"] = header["original"]["bytes"] + 1
    cases["more tokens than bytes"] = (pack(header, payload), "more tokens than bytes")
    header["original"]["tokens"] = 1
    cases["future version"] = (
        pack(header, payload)[:8] + b"\x02" + pack(header, payload)[9:],
        "version 2",
    )
    for name, (data, what) in cases.items():
        bad = tmp_path / f"{name}.tfac"
        bad.write_bytes(data)
        err = refused(capsys, "decompress", tiny[0], str(bad), str(out), out_path=out)
        assert what in err and str(bad) in err, (name, err)


def test_a_wrong_result_is_refused_by_the_checksum(tiny, packed, tmp_path, capsys):
    rewrite_header(packed, lambda h: h["original"].update(sha256="0" * 64))
    out = tmp_path / "restored.txt"
    err = refused(capsys, "decompress", tiny[0], str(packed), str(out), out_path=out)
    assert "do not match the original's sha256" in err


def test_another_environment_needs_force(tiny, packed, tmp_path, capsys):
    rewrite_header(packed, lambda h: h["environment"].update(torch="1.0.0"))
    out = tmp_path / "restored.txt"
    err = refused(capsys, "decompress", tiny[0], str(packed), str(out), out_path=out)
    assert "torch '1.0.0' there" in err and "--force" in err
    rc, _, err = cli(capsys, "decompress", tiny[0], str(packed), str(out), "--force")
    assert rc == 0 and "warning" in err
    assert out.read_text(encoding="utf-8") == TEXTS["long"][:400]


def test_input_the_tokenizer_cannot_give_back_is_refused(tiny, tmp_path, capsys):
    src, dst = tmp_path / "latin1.txt", tmp_path / "x.tfac"
    src.write_bytes("café".encode("latin-1"))
    err = refused(capsys, "compress", tiny[0], str(src), str(dst), out_path=dst)
    assert "byte 3 is not UTF-8" in err and str(src) in err
    err = refused(capsys, "compress", tiny[0], str(tmp_path / "nope.txt"), str(dst), out_path=dst)
    assert "no such file" in err

    # a tokenizer that normalises (lower-cases) its input does not give the text back
    from tokenizers import Tokenizer as HF
    from tokenizers import normalizers

    from twofiles.artifact import load_model
    from twofiles.compression.codec import exact_tokens
    from twofiles.errors import BadInputError
    from twofiles.tokenizer import Tokenizer

    tok = load_model(tiny[0]).tokenizer
    hf = HF.from_str(tok.to_json())
    hf.normalizer = normalizers.Lowercase()
    lossy = Tokenizer(hf, bos_id=tok.bos_id)
    assert exact_tokens(lossy, b"plain text", "f") == lossy.encode("plain text")
    with pytest.raises(BadInputError, match="character 0: 'To Be' became 'to be'"):
        exact_tokens(lossy, b"To Be", "f")
