"""`generate --steer DIR:FEATURE=SCALE` on a tiny saved model with SAEs built for the test."""

from __future__ import annotations

import json

import pytest
import torch
from tests.tiny_models import random_model, tiny_tokenizer

from twofiles.cli import main
from twofiles.sae.model import SAEConfig, SparseAutoencoder, save_sae
from twofiles.sae.steering import parse_steer

TARGET = 42  # the token the built feature pushes toward


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def files(tmp_path_factory, tok):
    from twofiles.artifact import save_model

    root = tmp_path_factory.mktemp("steer")
    model = random_model(tok, seed=4)
    save_model(root / "model.safetensors", model, tok)
    last = model.config.n_layers - 1
    # feature 1's direction is TARGET's unembedding (over the final norm's weight): added to
    # the last residual stream, it raises that token's logit above all others
    sae = SparseAutoencoder(
        SAEConfig(d_in=model.config.dim, d_sae=4, k=1, hook_name=f"blocks.{last}.hook_resid_post")
    )
    with torch.no_grad():
        d = model.lm_head.weight[TARGET] / model.model.norm.weight
        sae.W_dec[1] = d / d.norm()
    save_sae(root / "sae.safetensors", sae)
    wide = SparseAutoencoder(SAEConfig(d_in=48, d_sae=4, k=1, hook_name="blocks.0.hook_resid_post"))
    save_sae(root / "wide.safetensors", wide)
    inner = SparseAutoencoder(
        SAEConfig(d_in=model.config.dim, d_sae=4, k=1, hook_name="blocks.0.hook_resid_mid")
    )
    save_sae(root / "inner.safetensors", inner)
    return root


def _generate(capsys, files, *extra: str) -> tuple[int, dict | None, str]:
    argv = ["generate", str(files / "model.safetensors"), "--prompt", "to be or not"]
    argv += ["--temperature", "0", "--max-tokens", "8", "--device", "cpu", "--json", *extra]
    rc = main(argv)
    out, err = capsys.readouterr()
    return rc, (json.loads(out.strip().splitlines()[-1]) if rc == 0 else None), err


def test_scale_zero_gives_exactly_the_unsteered_tokens(files, capsys):
    rc, plain, _ = _generate(capsys, files)
    assert rc == 0 and plain["steer"] == []
    rc, zero, err = _generate(capsys, files, "--steer", f"{files / 'sae.safetensors'}:1=0")
    assert rc == 0
    assert zero["text"] == plain["text"] and zero["tokens"] == plain["tokens"]
    assert zero["steer"][0]["added_norm"] == 0.0 and "steering: feature 1" in err


def test_a_large_scale_on_a_tokens_direction_makes_the_model_say_it(files, tok, capsys):
    target = tok.decode([TARGET])
    rc, plain, _ = _generate(capsys, files)
    assert plain["text"] != target * 8
    rc, steered, err = _generate(capsys, files, "--steer", f"{files / 'sae.safetensors'}:1=20")
    assert rc == 0, err
    assert steered["text"] == target * 8
    (s,) = steered["steer"]
    assert s["feature"] == 1 and s["scale"] == 20.0 and s["units"] == "norm"
    assert s["hook_name"] == "blocks.1.hook_resid_post"
    assert s["added_norm"] == pytest.approx(20 * s["typical_norm"], rel=1e-3)
    assert f"norm {s['added_norm']:.3g}" in err
    # absolute units: the added vector's norm is the scale itself
    rc, steered, _ = _generate(
        capsys, files, "--steer", f"{files / 'sae.safetensors'}:1=500", "--steer-units", "abs"
    )
    assert steered["steer"][0]["added_norm"] == 500.0 and steered["text"] == target * 8


def test_steering_goes_in_both_directions_and_adds_up(files, tok, capsys):
    path = files / "sae.safetensors"
    rc, away, _ = _generate(capsys, files, "--steer", f"{path}:1=-20")
    assert rc == 0 and tok.decode([TARGET]) not in away["text"]
    rc, both, _ = _generate(capsys, files, "--steer", f"{path}:1=20", "--steer", f"{path}:1=-20")
    rc, plain, _ = _generate(capsys, files)
    assert both["text"] == plain["text"] and len(both["steer"]) == 2


@pytest.mark.parametrize(
    ("which", "message"),
    [
        ("wide.safetensors:0=1", "48 wide"),
        ("inner.safetensors:0=1", "not a module boundary"),
        ("sae.safetensors:9=1", "features 0..3"),
        ("missing:0=1", "no SAE there"),
        ("sae.safetensors:one=1", "FEATURE must be an integer"),
        ("sae.safetensors=1", "DIR:FEATURE=SCALE"),
    ],
)
def test_a_steer_that_does_not_fit_is_refused_with_exit_2(files, capsys, which, message):
    rc, _, err = _generate(capsys, files, "--steer", str(files / which))
    assert rc == 2
    assert message in err


def test_steering_runs_the_eager_model(files, capsys):
    """Hooks run in eager blocks only: --compile with --steer is refused, and a quantized model,
    which compiles by default, is left uncompiled when steered."""
    steer = f"{files / 'sae.safetensors'}:1=2"
    rc, _, err = _generate(capsys, files, "--steer", steer, "--compile")
    assert rc == 2 and "drop --compile" in err
    rc, summary, _ = _generate(capsys, files, "--steer", steer, "--quantize", "int8")
    assert rc == 0 and summary["steer"] and not summary["compiled"]
    assert not summary["inference"]["compiled"]


def test_parse_steer_keeps_colons_in_the_path():
    s = parse_steer("C:/runs/sae:12=-0.5")
    assert (s.path, s.feature, s.scale) == ("C:/runs/sae", 12, -0.5)


def test_chat_steers_every_reply_of_the_session(files, tok, capsys, monkeypatch):
    import io

    def chat(*extra: str) -> dict:
        monkeypatch.setattr("sys.stdin", io.StringIO("hello\nto be\n"))
        argv = ["chat", str(files / "model.safetensors"), "--temperature", "0"]
        rc = main([*argv, "--max-tokens", "4", "--device", "cpu", "--json", *extra])
        out, err = capsys.readouterr()
        assert rc == 0, err
        return json.loads(out.strip().splitlines()[-1])

    plain = chat()
    assert chat("--steer", f"{files / 'sae.safetensors'}:1=0")["replies"] == plain["replies"]
    steered = chat("--steer", f"{files / 'sae.safetensors'}:1=20")
    assert steered["replies"] == [tok.decode([TARGET]) * 4] * 2 != plain["replies"]
    assert steered["steer"][0]["feature"] == 1 and steered["steer"][0]["added_norm"] > 0
