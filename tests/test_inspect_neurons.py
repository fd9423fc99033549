"""`inspect neurons`: the streaming top-k equals a brute-force top-k over the same activations;
the CLI writes a self-contained page and a PNG, and refuses bad input before writing anything."""

from __future__ import annotations

import json

import pytest
import torch
from tests.tiny_models import TEXT, random_model, tiny_tokenizer

from twofiles.artifact import save_model
from twofiles.cli import main
from twofiles.inspect import run_with_cache
from twofiles.inspect.neurons import resolve_hook, scan_neurons, token_windows


@pytest.fixture(scope="module")
def tiny():
    tok = tiny_tokenizer()
    return tok, random_model(tok)


@pytest.fixture
def model_path(tiny, tmp_path):
    tok, model = tiny
    return str(save_model(tmp_path / "m.safetensors", model, tok))


def test_streaming_top_k_equals_brute_force(tiny):
    tok, model = tiny
    g = torch.Generator().manual_seed(0)  # random ids: no repeated text, so no tied values
    ids = torch.randint(1, tok.vocab_size, (400,), generator=g).tolist()
    T, k = 24, 5
    windows = token_windows(ids, T, bos=tok.bos_id)
    assert all(len(w) == T and w[0] == tok.bos_id for w in windows)
    hook = resolve_hook(model, 1)
    assert hook == "blocks.1.mlp.hook_post"
    scan = scan_neurons(
        model, windows, hook, top=64, k=k, batch_size=3, before=6, after=2, skip_first=True
    )
    _, cache = run_with_cache(model, torch.tensor(windows), names=[hook])
    acts = cache[hook]  # [W, T, N]
    flat = acts[:, 1:].reshape(-1, acts.shape[-1])  # the bos positions are not scored
    offsets = (torch.arange(len(windows)).view(-1, 1) * T + torch.arange(1, T)).reshape(-1)
    want_vals, want_idx = flat.topk(k, dim=0)
    assert scan.tokens == flat.shape[0] and len(scan.neurons) == 64
    for n in scan.neurons:
        got = torch.tensor([c.activation for c in n.contexts])
        torch.testing.assert_close(got, want_vals[:, n.index], atol=1e-5, rtol=1e-5)
        assert [c.offset for c in n.contexts] == offsets[want_idx[:, n.index]].tolist()
        for c in n.contexts:
            w, t = divmod(c.offset, T)
            start = max(0, t - 6)
            assert c.ids == windows[w][start : t + 3] and c.ids[c.position] == windows[w][t]
            torch.testing.assert_close(
                torch.tensor(c.values), acts[w, start : t + 3, n.index], atol=1e-5, rtol=1e-5
            )
        assert n.max == pytest.approx(float(flat[:, n.index].max()), abs=1e-5)
        assert n.mean == pytest.approx(float(flat[:, n.index].mean()), abs=1e-4)
        assert sum(n.histogram) == flat.shape[0]
    # --top: the neurons with the largest maxima, in order
    best = flat.max(0).values.topk(4).indices.tolist()
    top = scan_neurons(model, windows, hook, top=4, k=k, skip_first=True)
    assert [n.index for n in top.neurons] == best and "largest maximum" in top.selection


def test_cli_writes_a_self_contained_page(model_path, tmp_path, capsys):
    data = tmp_path / "corpus.txt"
    data.write_text(TEXT)
    out = tmp_path / "out"
    rc = main(
        ["inspect", "neurons", model_path, "--layer", "1", "--neurons", "0,3", "--data",
         str(data), "--tokens", "300", "--window", "32", "--k", "3", "--out", str(out),
         "--json", "--no-progress"]
    )  # fmt: skip
    assert rc == 0
    stdout = capsys.readouterr().out
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert summary["hook"] == "blocks.1.mlp.hook_post" and summary["width"] == 64
    assert [n["neuron"] for n in summary["neurons"]] == [0, 3]
    assert summary["tokens"] == summary["windows"] * 31  # the bos of each window not scored
    page = (out / "neurons.html").read_text()
    assert "Neuron 3" in page and "data:image/png;base64," in page
    assert page.count("outline: 2px solid") == 6  # the activating token of each context
    assert "http://" not in page and "https://" not in page and "<script src" not in page
    assert (out / "neurons.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the residual stream's dimensions are neurons too; the built-in corpus's held-out plays
    rc = main(
        ["inspect", "neurons", model_path, "--layer", "0", "--hook", "resid_post", "--top", "2",
         "--data", "builtin", "--tokens", "200", "--window", "32", "--out", str(out), "--json",
         "--no-progress"]
    )  # fmt: skip
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert rc == 0 and summary["hook"] == "blocks.0.hook_resid_post" and summary["width"] == 32
    assert len(summary["neurons"]) == 2


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--layer", "2"], "out of range"),
        (["--layer", "0", "--neurons", "0,999"], "neuron 999 is out of range"),
        (["--layer", "0", "--neurons", "a,b"], "comma-separated integers"),
        (["--layer", "0", "--hook", "attn.hook_pattern"], "neuron"),
        (["--layer", "0", "--hook", "nonsense"], "no hook point"),
    ],
)
def test_bad_input_exits_2_and_writes_nothing(model_path, tmp_path, capsys, flags, message):
    data = tmp_path / "corpus.txt"
    data.write_text(TEXT)
    out = tmp_path / "out"
    argv = ["inspect", "neurons", model_path, "--data", str(data), "--tokens", "100"]
    rc = main([*argv, "--window", "32", "--out", str(out), "--no-progress", *flags])
    assert rc == 2
    assert message in capsys.readouterr().err
    assert not out.exists()
