"""The second file: `run.py` (numpy only) against the twofiles engine, tokenizer and safetensors.

run.py runs in a subprocess with `python -S` and only site-packages on PYTHONPATH: numpy imports,
but the editable twofiles install (a .pth file, which only `site` reads) does not.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from twofiles.artifact import save_model
from twofiles.cli import VERBS, main
from twofiles.engine import SamplingParams, encode_prompt, generate
from twofiles.model import ModelConfig, Transformer
from twofiles.standalone.export import export_run, run_py_source
from twofiles.tokenizer import Tokenizer

RUN_PY = Path(__file__).resolve().parents[1] / "src" / "twofiles" / "standalone" / "run.py"
SITE_PACKAGES = str(Path(np.__file__).resolve().parents[1])
PROMPT = "To be, or not to be: that is"

VARIANTS = {
    "mha": {},
    "gqa": {"n_kv_heads": 2},
    "tied": {"tie_embeddings": True},
    "qkv_bias": {"qkv_bias": True, "n_kv_heads": 1},
    # an original context of 32 puts every band of the scaling inside head_dim 16 and 96 positions
    "llama3_rope": {
        "rope_scaling": {
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 16.0,
            "original_max_position_embeddings": 32,
        }
    },
}


def load_run_module():
    spec = importlib.util.spec_from_file_location("twofiles_standalone_run", RUN_PY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


run = load_run_module()


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    from twofiles.data.builtin import shakespeare_documents

    return Tokenizer.train([shakespeare_documents()[0].text[:20000]], 400)


def make_model(tok: Tokenizer, max_seq_len: int = 96, **overrides) -> Transformer:
    """Random but non-trivial: the zero-initialised projections and the unit norms get noise."""
    cfg = ModelConfig(
        **{
            **dict(
                vocab_size=tok.vocab_size,
                dim=64,
                n_layers=2,
                n_heads=4,
                n_kv_heads=4,
                hidden_dim=128,
                max_seq_len=max_seq_len,
            ),
            **overrides,
        }
    )
    model = Transformer(cfg)
    model.init_weights(seed=0)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if any(k in name for k in ("o_proj", "down_proj", "bias", "lm_head")):
                p.normal_(0.0, 0.1, generator=g)
            elif "norm" in name:
                p.add_(torch.randn(p.shape, generator=g) * 0.1)
    return model.eval()


def exported(tmp_path: Path, tok: Tokenizer, model: Transformer) -> Path:
    (tmp_path / "src").mkdir()
    export_run(save_model(tmp_path / "src" / "model.safetensors", model, tok), tmp_path / "out")
    return tmp_path / "out"


def run_py(out: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {
        "PATH": os.environ.get("PATH", ""),
        "PYTHONPATH": SITE_PACKAGES,
        "OMP_NUM_THREADS": "1",
        "PYTHONIOENCODING": "utf-8",
    }
    proc = subprocess.run(
        [sys.executable, "-S", "run.py", *args],
        cwd=out,
        env=env,
        capture_output=True,
        timeout=timeout,
    )
    # decoded by hand: text mode would turn a generated '\r' into '\n'
    return subprocess.CompletedProcess(
        proc.args, proc.returncode, proc.stdout.decode("utf-8"), proc.stderr.decode("utf-8")
    )


def last_json(stdout: str) -> dict:
    return json.loads(stdout.rstrip("\n").splitlines()[-1])


def text_of(tok: Tokenizer, ids: list[int]) -> str:
    """What run.py prints: the bytes of the ids, a special token as its name (as the engine shows it)."""
    names = {i: name.encode() for name, i in tok.special_ids.items()}
    return b"".join(names.get(i) or tok.token_to_bytes(i) for i in ids if i != tok.bos_id).decode(
        "utf-8", errors="replace"
    )


# --------------------------------------------------------------------------------- end to end


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_greedy_tokens_equal_the_engine(tmp_path, tok, variant):
    model = make_model(tok, **VARIANTS[variant])
    out = exported(tmp_path, tok, model)
    proc = run_py(
        out,
        "model.safetensors",
        "--prompt",
        PROMPT,
        "--temperature",
        "0",
        "--max-tokens",
        "40",
        "--json",
    )
    assert proc.returncode == 0, proc.stderr
    summary = last_json(proc.stdout)
    expected = list(
        generate(
            model,
            encode_prompt(tok, PROMPT),
            SamplingParams(temperature=0, max_tokens=40),
            tokenizer=tok,
        )
    )
    assert summary["ids"] == expected
    assert summary["tokens"] == len(expected) and summary["prompt_tokens"] == len(
        encode_prompt(tok, PROMPT)
    )
    assert summary["text"] == text_of(tok, expected)
    assert proc.stdout.startswith(summary["text"])  # the text was streamed before the summary
    assert summary["tokens_per_second"] > 0 and "tok/s" in proc.stderr


def test_export_cli_writes_the_two_files(tmp_path, tok, capsys):
    assert VERBS["export"][0] == "twofiles.cli.export"
    src = save_model(tmp_path / "model.safetensors", make_model(tok), tok)
    rc = main(["export", "run", str(src), str(tmp_path / "out"), "--json"])
    assert rc == 0
    summary = last_json(capsys.readouterr().out)
    assert set(summary) == {"out", "model", "run_py", "bytes"}
    model_out, run_out = Path(summary["model"]), Path(summary["run_py"])
    assert model_out.read_bytes() == src.read_bytes()  # a byte-for-byte copy of the one file
    assert (
        run_out.read_text(encoding="utf-8") == run_py_source() == RUN_PY.read_text(encoding="utf-8")
    )
    assert summary["bytes"] == model_out.stat().st_size + run_out.stat().st_size
    assert sorted(p.name for p in model_out.parent.iterdir()) == [
        "model.safetensors",
        "run.py",
    ]  # no temp files left
    assert (
        main(["export", "run", str(model_out), str(model_out.parent)]) == 0
    )  # into its own directory


def test_export_rejects_what_is_not_a_model(tmp_path, capsys):
    bad = tmp_path / "notes.txt"
    bad.write_text("hello")
    assert main(["export", "run", str(bad), str(tmp_path / "out")]) == 2
    assert (
        main(["export", "run", str(tmp_path / "missing.safetensors"), str(tmp_path / "out")]) == 2
    )
    assert "error" in capsys.readouterr().err


def test_stops_on_bos_and_at_the_context(tmp_path, tok):
    model = make_model(tok, max_seq_len=24)
    out = exported(tmp_path, tok, model)
    proc = run_py(
        out,
        "model.safetensors",
        "--prompt",
        PROMPT,
        "--temperature",
        "0",
        "--max-tokens",
        "500",
        "--json",
    )
    summary = last_json(proc.stdout)
    prompt_len = len(encode_prompt(tok, PROMPT))
    assert summary["ids"] == list(
        generate(
            model,
            encode_prompt(tok, PROMPT),
            SamplingParams(temperature=0, max_tokens=500),
            tokenizer=tok,
        )
    )
    assert (summary["tokens"], summary["finish"]) == (24 - prompt_len, "length")

    proc = run_py(out, "model.safetensors", "--prompt", "word " * 40, "--temperature", "0")
    assert proc.returncode == 2 and "context" in proc.stderr and "Traceback" not in proc.stderr

    with torch.no_grad():
        model.model.norm.weight.zero_()  # every logit 0: argmax is id 0, <|bos|>
    assert tok.bos_id == 0
    (tmp_path / "src" / "model.safetensors").unlink()
    save_model(tmp_path / "out" / "model.safetensors", model, tok)
    summary = last_json(
        run_py(out, "model.safetensors", "--prompt", PROMPT, "--temperature", "0", "--json").stdout
    )
    assert (summary["ids"], summary["text"], summary["finish"]) == ([tok.bos_id], "", "stop")


# --------------------------------------------------------------------------------- pieces


def test_logits_match_torch_and_the_cache_is_exact(tmp_path, tok):
    ids = encode_prompt(tok, "Whether 'tis nobler in the mind to suffer")
    for name, overrides in VARIANTS.items():
        model = make_model(tok, **overrides)
        np_model, _ = run.load(str(save_model(tmp_path / f"{name}.safetensors", model, tok)))
        with torch.no_grad():
            expected = model(torch.tensor([ids]))[0].numpy()
        np_model.reset(len(ids))
        full = np_model.forward(ids, 0, all_logits=True)
        np.testing.assert_allclose(full, expected, atol=1e-4, rtol=0, err_msg=name)
        np_model.reset(len(ids))  # a prefix, then a chunk, then one token at a time
        steps = [
            np_model.forward(ids[:3], 0, all_logits=True),
            np_model.forward(ids[3:6], 3, all_logits=True),
        ]
        steps += [np_model.forward([t], i, all_logits=True) for i, t in enumerate(ids[6:], start=6)]
        np.testing.assert_allclose(np.concatenate(steps), full, atol=1e-5, rtol=0, err_msg=name)


SAMPLES = [
    "Hello   world\n\n\n  x\t\ty  ",
    "I'm can't we'll they've YOU'RE He'S 'tis o'er",
    "1234567 3.14159 1,000,000 x²³ ½ Ⅻ 一二三 ٣٤٥",
    "café naïve résumé Ångström straße ÉCOLE a\u0301 e\u0308",
    "emoji 😀👍🏽 👨‍👩‍👧 ✨ ♥",
    '!!!??? ... --- ***\n\r\n\r (a) [b] {c} "quoted"',
    "\x1c\x1d a\u00a0b\u3000c\u2028d",
    "ſt 'S 'ſ K _under_score__ x_1",
    "<|bos|> is plain text here",
    "   leading and trailing   ",
    "日本語のテキスト、です。 مرحبا بالعالم नमस्ते",
    "",
    "\n",
]


def test_tokenizer_matches_the_reference(tok):
    from twofiles.data.builtin import shakespeare_documents

    mine = run.Tokenizer(json.loads(tok.to_json()))
    assert mine.bos_id == tok.bos_id
    for text in SAMPLES + [shakespeare_documents()[5].text[:20000]]:
        ids = mine.encode(text)
        assert ids == tok.encode(text), repr(text[:60])
        assert b"".join(mine.token_bytes[i] for i in ids) == text.encode("utf-8")


def imported_specs(tok: Tokenizer) -> dict[str, tuple[str, dict]]:
    """Tokenizer JSONs as the GGUF importer builds them (SmolLM2's digits-then-GPT-2 split, Llama 3's
    and Qwen2's regexes, a SentencePiece vocabulary), with the bos/eos metadata a model file holds."""
    from tokenizers import SentencePieceBPETokenizer

    from twofiles.formats.gguf_vocab import bpe_tokenizer_json, spm_tokenizer_json

    spec = json.loads(tok.to_json())
    vocab = sorted(spec["model"]["vocab"].items(), key=lambda kv: kv[1])
    tokens = [t for t, _ in vocab]
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    types = [3 if i in tok.special_ids.values() else 1 for _, i in vocab]
    out = {
        pre: (bpe_tokenizer_json(tokens, merges, types, pre), {"bos_id": 7, "eos_ids": [5, 11]})
        for pre in ("smollm", "llama-bpe", "qwen2", "gpt2")
    }
    trainer = SentencePieceBPETokenizer()
    trainer.train_from_iterator(
        [SAMPLES[1] + " " + SAMPLES[3] + " the quick brown fox"] * 20,
        vocab_size=120,
        show_progress=False,
    )
    pieces = [
        t
        for t, _ in sorted(
            json.loads(trainer.to_str())["model"]["vocab"].items(), key=lambda kv: kv[1]
        )
        if t != "<unk>"
    ]
    sp_tokens = ["<unk>", "<s>", "</s>", *[f"<0x{b:02X}>" for b in range(256)], *pieces]
    scores = [0.0] * 259 + [-float(i) for i in range(len(pieces))]
    out["sentencepiece"] = (
        spm_tokenizer_json(sp_tokens, scores, [2, 3, 3, *[6] * 256, *[1] * len(pieces)], 0),
        {"bos_id": 1, "eos_ids": [2]},
    )
    return out


def test_tokenizer_matches_imported_kinds(tok):
    """run.py encodes as the library does for every kind of vocabulary the importers produce."""
    from twofiles.data.builtin import shakespeare_documents

    text = shakespeare_documents()[5].text[:5000]
    for kind, (spec, special) in imported_specs(tok).items():
        reference = Tokenizer.from_json(spec, bos_id=special["bos_id"], eos_ids=special["eos_ids"])
        mine = run.Tokenizer(json.loads(spec), special)
        assert (mine.bos_id, mine.eos_ids) == (special["bos_id"], special["eos_ids"])
        for sample in SAMPLES + [text]:
            ids = mine.encode(sample)
            assert ids == reference.encode(sample), (kind, sample[:60])
            assert b"".join(mine.token_bytes[i] for i in ids) == b"".join(
                reference.token_to_bytes(i) for i in ids
            ), kind


def test_tokenizer_reads_both_merge_forms(tok):
    spec = json.loads(tok.to_json())
    spec["model"]["merges"] = [
        " ".join(m) if isinstance(m, list) else m for m in spec["model"]["merges"]
    ]
    assert run.Tokenizer(spec).encode(SAMPLES[1]) == tok.encode(SAMPLES[1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_safetensors_reader_matches_the_library(tmp_path, dtype):
    from safetensors.torch import load_file, save_file

    g = torch.Generator().manual_seed(0)
    tensors = {
        "a": torch.randn(3, 5, generator=g) * 1e3,
        "b.weight": torch.randn(7, generator=g),
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 4),
    }
    path = tmp_path / "t.safetensors"
    save_file({k: v.to(dtype) for k, v in tensors.items()}, path, metadata={"config": "{}"})
    mine, meta = run.read_safetensors(str(path))
    theirs = load_file(path)
    assert meta == {"config": "{}"} and set(mine) == set(theirs)
    for k, v in theirs.items():
        assert mine[k].dtype == np.float32 and mine[k].shape == tuple(v.shape)
        np.testing.assert_array_equal(mine[k], v.float().numpy())


def test_bad_files_give_a_clear_error(tmp_path, tok, capsys):
    good = save_model(tmp_path / "good.safetensors", make_model(tok), tok).read_bytes()
    n = int.from_bytes(good[:8], "little")
    header = json.loads(good[8 : 8 + n])
    name = next(k for k in header if k != "__metadata__")
    header[name]["data_offsets"][1] += 4
    cases = {
        "truncated": (good[:-100], "outside"),
        "empty": (b"", "too short"),
        "huge_header": ((10**12).to_bytes(8, "little") + good[8:], "header length"),
        "not_json": (good[:8] + b"{" * n + good[8 + n :], "not valid JSON"),
        "bad_offsets": (
            len(json.dumps(header)).to_bytes(8, "little")
            + json.dumps(header).encode()
            + good[8 + n :],
            "needs",
        ),
        "no_tokenizer": (None, "no 'tokenizer'"),
    }
    for case, (data, message) in cases.items():
        path = tmp_path / f"{case}.safetensors"
        if data is None:
            from safetensors.torch import save_file

            save_file({"x": torch.zeros(2)}, path, metadata={"config": "{}"})
        else:
            path.write_bytes(data)
        assert run.main([str(path), "--prompt", "hi"]) == 2, case
        err = capsys.readouterr().err
        assert err.startswith("run.py: error:") and message in err, (case, err)
    assert run.main([str(tmp_path / "missing.safetensors"), "--prompt", "hi"]) == 2
    assert "cannot read" in capsys.readouterr().err
    (tmp_path / "run.py").write_text(
        run_py_source(), encoding="utf-8"
    )  # end to end, in a subprocess
    proc = run_py(tmp_path, str(tmp_path / "truncated.safetensors"), "--prompt", "hi")
    assert (
        proc.returncode == 2
        and "Traceback" not in proc.stderr
        and proc.stderr.startswith("run.py: error:")
    )


def test_seeded_sampling_is_deterministic(tmp_path, tok, capsys):
    path = str(save_model(tmp_path / "model.safetensors", make_model(tok), tok))

    def sample(seed: int) -> list[int]:
        assert (
            run.main(
                [
                    path,
                    "--prompt",
                    PROMPT,
                    "--temperature",
                    "0.9",
                    "--top-p",
                    "0.9",
                    "--seed",
                    str(seed),
                    "--max-tokens",
                    "20",
                    "--json",
                ]
            )
            == 0
        )
        return last_json(capsys.readouterr().out)["ids"]

    first = sample(7)
    assert sample(7) == first
    assert sample(8) != first


def test_top_p_keeps_the_nucleus():
    rng = np.random.default_rng(0)
    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05]))
    draws = {run.sample(logits, 1.0, 0.7, rng) for _ in range(200)}
    assert draws == {0, 1}  # 0.5 < 0.7 needs the second token; 0.8 >= 0.7 stops there
    assert run.sample(logits, 0.0, 1.0, rng) == 0


def test_run_py_imports_only_stdlib_and_numpy():
    tree = ast.parse(RUN_PY.read_text(encoding="utf-8"))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add((node.module or "").split(".")[0])
    assert "twofiles" not in imported
    assert imported - set(sys.stdlib_module_names) == {"numpy"}
    probe = subprocess.run(
        [sys.executable, "-S", "-c", "import numpy, twofiles"],
        env={"PYTHONPATH": SITE_PACKAGES},
        capture_output=True,
        text=True,
    )
    assert "No module named 'twofiles'" in probe.stderr  # so the subprocess runs above prove it


@pytest.mark.slow
def test_smollm2_run_py_greedy_equals_engine(tmp_path):
    """The real SmolLM2 (GGUF Q4_1, imported): `twofiles export run smollm2 OUT/`, then run.py's
    greedy tokens equal the engine's (byte-level BPE with SmolLM's digit split, its own bos/eos,
    tied embeddings, GQA)."""
    from twofiles.formats import alias_path
    from twofiles.formats.resolve import resolve_model

    if not alias_path("smollm2").is_file():
        pytest.skip("run `twofiles pull smollm2` first")
    assert main(["export", "run", "smollm2", str(tmp_path / "out")]) == 0
    ours = resolve_model("smollm2")
    for prompt in ["The capital of France is", "In 1492, Columbus sailed"]:
        proc = run_py(
            tmp_path / "out",
            "model.safetensors",
            "--prompt",
            prompt,
            "--temperature",
            "0",
            "--max-tokens",
            "16",
            "--json",
            timeout=600,
        )
        assert proc.returncode == 0, proc.stderr
        summary = last_json(proc.stdout)
        prompt_ids = encode_prompt(ours.tokenizer, prompt)
        expected = list(
            generate(
                ours.model,
                prompt_ids,
                SamplingParams(temperature=0, max_tokens=16),
                tokenizer=ours.tokenizer,
            )
        )
        assert summary["prompt_tokens"] == len(prompt_ids) and len(expected) >= 8
        assert summary["ids"] == expected, prompt
