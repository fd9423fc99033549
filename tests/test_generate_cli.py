"""`twofiles generate` end to end on a tiny saved model (random weights, real tokenizer)."""

from __future__ import annotations

import io
import json

import pytest
import torch

from twofiles.cli import main


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    from twofiles.artifact import save_model
    from twofiles.model import ModelConfig, Transformer
    from twofiles.tokenizer import Tokenizer

    tok = Tokenizer.train(["to be or not to be, that is the question. " * 40], 300)
    model = Transformer(
        ModelConfig(
            vocab_size=tok.vocab_size,
            dim=32,
            n_layers=2,
            n_heads=4,
            n_kv_heads=4,
            hidden_dim=64,
            max_seq_len=64,
        )
    )
    model.init_weights(seed=0)
    with torch.no_grad():  # a readable spread of probabilities instead of the near-uniform init
        model.lm_head.weight.normal_(0.0, 0.3, generator=torch.Generator().manual_seed(1))
    return str(save_model(tmp_path_factory.mktemp("m") / "model.safetensors", model, tok))


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(["generate", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_streams_the_continuation(model_path, capsys):
    from twofiles.artifact import load_model
    from twofiles.engine import SamplingParams, generate_text

    rc, out, err = run_cli(
        capsys,
        model_path,
        "--prompt",
        "to be",
        "--temperature",
        "0",
        "--max-tokens",
        "12",
        "--device",
        "cpu",
    )
    assert rc == 0
    loaded = load_model(model_path)
    expected = "".join(
        generate_text(
            loaded.model, loaded.tokenizer, "to be", SamplingParams(temperature=0, max_tokens=12)
        )
    )
    assert out == expected + "\n"
    assert "tok/s" in err and "model" in err  # info goes to stderr, not into the text


def test_json_summary_is_the_last_line(model_path, capsys):
    rc, out, _ = run_cli(
        capsys, model_path, "--prompt", "to be", "--seed", "3", "--max-tokens", "8", "--json"
    )
    assert rc == 0
    summary = json.loads(out.rstrip("\n").splitlines()[-1])
    assert {
        "text",
        "tokens",
        "prompt_tokens",
        "seconds",
        "tokens_per_second",
        "model",
    } <= summary.keys()
    from twofiles.artifact import load_model
    from twofiles.engine import SamplingParams, encode_prompt, generate

    loaded = load_model(model_path)
    prompt = encode_prompt(loaded.tokenizer, "to be")
    sampled = list(
        generate(
            loaded.model,
            prompt,
            SamplingParams(temperature=1.0, seed=3, max_tokens=8),
            tokenizer=loaded.tokenizer,
        )
    )  # the verb's defaults with --seed 3: the same draws
    assert (summary["tokens"], summary["prompt_tokens"]) == (len(sampled), len(prompt))
    assert len(sampled) >= 1 and summary["model"] == model_path
    assert out.startswith(summary["text"])
    rc, again, _ = run_cli(
        capsys, model_path, "--prompt", "to be", "--seed", "3", "--max-tokens", "8", "--json"
    )
    assert json.loads(again.splitlines()[-1])["text"] == summary["text"]  # same seed, same sample


def test_show_probs_prints_each_roll(model_path, capsys):
    rc, out, _ = run_cli(
        capsys,
        model_path,
        "--prompt",
        "to be",
        "--seed",
        "0",
        "--max-tokens",
        "5",
        "--show-probs",
        "3",
        "--stop",
        "zzz",
    )
    assert rc == 0
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["step", "token", "prob"]
    rows = [line for line in lines[1:] if line[:4].strip().isdigit()]
    assert 1 <= len(rows) <= 5
    for row in rows:
        assert row.count("%") == 4  # the chosen token's probability, then 3 candidates


def test_prompt_from_stdin(model_path, capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO("to be"))
    rc, out, _ = run_cli(
        capsys, model_path, "--prompt", "-", "--temperature", "0", "--max-tokens", "4", "--json"
    )
    assert rc == 0 and json.loads(out.splitlines()[-1])["prompt_tokens"] > 1


@pytest.mark.parametrize(
    "argv, message",
    [
        (["/nonexistent/model.safetensors", "--prompt", "hi"], "no such model"),
        (["MODEL", "--prompt", ""], "empty prompt"),
        (["MODEL", "--prompt", "hi", "--temperature", "-1"], "temperature"),
        (["MODEL", "--prompt", "hi", "--top-p", "0"], "top_p"),
        (["MODEL", "--prompt", "hi", "--top-k", "-3"], "top_k"),
        (["MODEL", "--prompt", "hi", "--max-tokens", "0"], "max_tokens"),
    ],
)
def test_user_errors_exit_2(model_path, capsys, argv, message):
    argv = [model_path if a == "MODEL" else a for a in argv]
    rc, _out, err = run_cli(capsys, *argv)
    assert rc == 2 and message in err and "Traceback" not in err


def test_the_inference_flags_force_the_layout_and_json_reports_it(model_path, capsys):
    """What the user types decides: --dtype, --layout and --no-compile override the probe, and
    --json says what ran and that it was forced."""
    base = [model_path, "--prompt", "to be", "--temperature", "0", "--max-tokens", "6", "--json"]
    rc, out, err = run_cli(capsys, *base)
    assert rc == 0, err
    auto = json.loads(out.splitlines()[-1])["inference"]
    assert auto["forced"] == [] and auto["layout"] == "fused" and auto["reasons"]
    rc, out, err = run_cli(capsys, *base, "--dtype", "fp32", "--layout", "plain")
    assert rc == 0, err
    plain = json.loads(out.splitlines()[-1])
    inf = plain["inference"]
    assert (inf["format"], inf["layout"], inf["dtype"]) == ("fp32", "plain", "float32")
    assert inf["forced"] == ["dtype", "layout"]
    rc, out, err = run_cli(capsys, *base, "--quantize", "int8", "--no-compile")
    assert rc == 0, err
    inf = json.loads(out.splitlines()[-1])["inference"]
    assert inf["format"] == "int8" and not inf["compiled"] and inf["forced"] == ["compile"]
    with pytest.raises(SystemExit) as bad:  # argparse refuses it before anything loads
        run_cli(capsys, *base, "--layout", "sideways")
    assert bad.value.code == 2
