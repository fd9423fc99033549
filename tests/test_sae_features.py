"""SAE feature dashboards on a tiny random model and a tiny SAE trained here: the streaming pass
against a brute-force ranking, the pages, the promoted tokens, the identity check."""

from __future__ import annotations

import json
import re

import pytest
import torch
from tests.tiny_models import TEXT, random_model, tiny_tokenizer

from twofiles.cli import main
from twofiles.inspect import run_with_cache
from twofiles.sae.activations import model_id as model_identity
from twofiles.sae.features import (
    TOP_CONTEXTS,
    build_dashboards,
    corpus_windows,
    feature_logits,
)
from twofiles.sae.model import SAEConfig, SparseAutoencoder, save_sae

HOOK = "blocks.1.hook_resid_pre"


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def model(tok):
    m = random_model(tok, seed=5)
    with torch.no_grad():  # a final norm that is not all ones, so folding it in matters
        m.model.norm.weight.uniform_(0.2, 2.0, generator=torch.Generator().manual_seed(0))
    return m


@pytest.fixture(scope="module")
def windows(tok):
    # random tokens: no two contexts alike, so the ranking has no ties; a few bos among them
    w = torch.randint(tok.vocab_size, (12, 24), generator=torch.Generator().manual_seed(1))
    w[:, 0] = tok.bos_id
    w[3, 7] = w[8, 15] = tok.bos_id
    return w


def train_tiny_sae(
    model, windows, *, hook=HOOK, d_sae=40, k=4, steps=40, **cfg
) -> SparseAutoencoder:
    """A TopK SAE from a few Adam steps on the model's activations at `hook`."""
    _, cache = run_with_cache(model, windows, names=[hook])
    x = cache[hook].reshape(-1, cache[hook].shape[-1])
    sae = SparseAutoencoder(SAEConfig(d_in=x.shape[-1], d_sae=d_sae, k=k, hook_name=hook, **cfg))
    opt = torch.optim.Adam(sae.parameters(), lr=1e-2)
    for _ in range(steps):
        loss = (sae(x) - x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            sae.W_dec /= sae.W_dec.norm(dim=1, keepdim=True)
    return sae.eval()


@pytest.fixture(scope="module")
def sae(model, windows):
    return train_tiny_sae(model, windows)


def brute_force(model, tok, sae, windows):
    """Every feature activation [n, T, d_sae], bos and each window's first position excluded."""
    _, cache = run_with_cache(model, windows, names=[HOOK])
    with torch.no_grad():
        acts = sae.encode(cache[HOOK])
    acts[:, 0] = 0
    acts[windows == tok.bos_id] = 0
    return acts


def test_top_contexts_and_numbers_equal_a_brute_force_pass(model, tok, sae, windows):
    acts = brute_force(model, tok, sae, windows)
    n, T, d_sae = acts.shape
    dash = build_dashboards(model, tok, sae, windows, top=6, order="max", batch_size=5)
    flat = acts.reshape(-1, d_sae)
    fired = (flat > 0).sum(0)
    counted = int((windows[:, 1:] != tok.bos_id).sum())  # bos never counts, nor position 0
    assert counted < n * (T - 1) and dash.tokens == counted
    torch.testing.assert_close(
        torch.tensor(dash.density, dtype=torch.float64), fired.double() / counted
    )
    # --top 6 by max: the six features with the largest activation anywhere
    assert [f.index for f in dash.features] == flat.max(0).values.argsort(descending=True)[
        :6
    ].tolist()
    for f in dash.features:
        col = flat[:, f.index]
        firing = (col > 0).nonzero().flatten()
        want = sorted(firing.tolist(), key=lambda i: -float(col[i]))[:TOP_CONTEXTS]
        assert [(c.window, c.pos) for c in f.top] == [(i // T, i % T) for i in want]
        torch.testing.assert_close(
            torch.tensor([c.value for c in f.top]), col[want], rtol=1e-5, atol=1e-6
        )
        assert f.firings == int(fired[f.index]) == sum(f.hist)
        assert f.max == pytest.approx(float(col.max()), rel=1e-5)
        assert f.mean == pytest.approx(float(col[firing].mean()), rel=1e-4)
        # each shown context: its tokens, the feature's activation on each, the firing marked
        for c in f.top + [c for b in f.bands for c in b.contexts]:
            lo = c.pos - c.mark
            assert c.tokens == [tok.decode([i]) for i in windows[c.window, lo : lo + len(c.tokens)]]
            torch.testing.assert_close(
                torch.tensor(c.acts),
                acts[c.window, lo : lo + len(c.acts), f.index],
                atol=1e-5,
                rtol=1e-5,
            )
            assert c.acts[c.mark] == pytest.approx(c.value, rel=1e-4)
        # the quantile bands: samples of real firings, each inside its band's range
        assert f.bands
        for b in f.bands:
            for c in b.contexts:
                assert b.lo - 1e-5 <= c.value <= b.hi + 1e-5
                assert float(acts[c.window, c.pos, f.index]) == pytest.approx(c.value, rel=1e-4)


def test_chosen_features_and_streaming_do_not_depend_on_the_batch(model, tok, sae, windows):
    one = build_dashboards(model, tok, sae, windows, features=[3, 0], batch_size=1)
    many = build_dashboards(model, tok, sae, windows, features=[3, 0], batch_size=12)
    assert [f.index for f in one.features] == [3, 0]
    for a, b in zip(one.features, many.features, strict=True):
        assert [(c.window, c.pos) for c in a.top] == [(c.window, c.pos) for c in b.top]
        assert a.hist == b.hist and a.firings == b.firings


def test_promoted_tokens_are_the_top_of_w_dec_through_the_unembedding(model, tok, sae, windows):
    feats = [0, 7, 11]
    # the final norm's weight folded in, as TransformerLens's processed W_U has it
    want = (sae.W_dec[feats] * model.model.norm.weight) @ model.lm_head.weight.T
    got = feature_logits(model, sae, feats)
    torch.testing.assert_close(got, want.detach(), rtol=1e-5, atol=1e-5)
    dash = build_dashboards(model, tok, sae, windows, features=feats)
    for row, f in enumerate(dash.features):
        top = want[row].topk(10)
        bottom = (-want[row]).topk(10)
        assert [t for t, _ in f.promoted] == [tok.decode([i]) for i in top.indices.tolist()]
        assert [t for t, _ in f.suppressed] == [tok.decode([i]) for i in bottom.indices.tolist()]
        assert [v for _, v in f.promoted] == pytest.approx(top.values.tolist(), rel=1e-5)


def test_corpus_windows_cut_the_token_stream(tok):
    texts = ["to be or not to be", "that is the question"]
    w = corpus_windows(tok, texts, n_tokens=6, length=3)
    stream = [tok.bos_id, *tok.encode(texts[0]), tok.bos_id, *tok.encode(texts[1])]
    # each window: bos, then the next two tokens of the stream (as sae train cuts them)
    assert w.tolist() == [[tok.bos_id, *stream[0:2]], [tok.bos_id, *stream[2:4]]]
    from twofiles.errors import BadInputError

    with pytest.raises(BadInputError, match="fewer than one"):
        corpus_windows(tok, ["to"], n_tokens=100, length=64)


@pytest.fixture
def sae_dir(tmp_path, model, tok, windows):
    from twofiles.artifact import save_model

    model_path = save_model(tmp_path / "model.safetensors", model, tok)
    from twofiles.artifact import load_model

    loaded = load_model(model_path)
    sae = train_tiny_sae(
        model,
        windows,
        model_id=model_identity(loaded.model),
        model_name=str(model_path),
    )
    out = tmp_path / "sae"
    out.mkdir()
    save_sae(out / "sae.safetensors", sae)
    (tmp_path / "corpus.txt").write_text(TEXT * 3)
    return out


def _cli(capsys, *argv):
    rc = main(["sae", "features", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.slow  # two runs with their plots: ~5 s
def test_cli_writes_self_contained_pages_linked_from_the_index(sae_dir, capsys):
    corpus = str(sae_dir.parent / "corpus.txt")
    argv = [str(sae_dir), "--data", corpus, "--tokens", "400", "--context", "32"]
    rc, out, err = _cli(capsys, *argv, "--top", "5", "--device", "cpu", "--json")
    assert rc == 0, err
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["identity_matches"] and len(summary["features"]) == 5
    pages = sae_dir / "features"
    index = (pages / "index.html").read_text()
    links = re.findall(r"href='(\d+)\.html'", index)
    assert sorted(map(int, links)) == sorted(summary["features"])
    for i in summary["features"]:
        page = (pages / f"{i}.html").read_text()
        assert "Top activating contexts" in page and "data:image/png;base64," in page
        assert "href='index.html'" in page
    for page in [index, *((pages / f"{i}.html").read_text() for i in summary["features"])]:
        # self-contained: no scripts, styles or images from anywhere else
        assert not re.search(r"(src|href)=['\"]?(https?:|//)", page)
        assert "<script src" not in page and "<link" not in page
    data = json.loads((pages / "features.json").read_text())
    assert sorted(map(int, data["features"])) == sorted(summary["features"])
    assert len(data["density"]) == 40 and data["hook_name"] == HOOK
    # a second run replaces the pages as a whole
    rc, out, _ = _cli(capsys, *argv, "--features", "2", "--device", "cpu")
    assert rc == 0
    assert sorted(p.name for p in pages.iterdir()) == ["2.html", "features.json", "index.html"]
    assert not [p for p in sae_dir.iterdir() if p.name.startswith(".")]


def test_cli_refuses_another_model_unless_forced(sae_dir, tok, capsys, tmp_path):
    from twofiles.artifact import save_model

    other = save_model(tmp_path / "other.safetensors", random_model(tok, seed=9), tok)
    argv = [str(sae_dir), "--model", str(other), "--data", str(sae_dir.parent / "corpus.txt")]
    argv += ["--tokens", "100", "--context", "16", "--features", "1", "--device", "cpu"]
    rc, _, err = _cli(capsys, *argv)
    assert rc == 2
    assert "not the model this SAE was trained on" in err and "--force" in err
    assert not (sae_dir / "features").exists()
    rc, _, err = _cli(capsys, *argv, "--force")
    assert rc == 0 and "warning" in err


def test_cli_refuses_bad_input_with_exit_2(sae_dir, tok, capsys, tmp_path):
    from twofiles.artifact import save_model

    corpus = str(sae_dir.parent / "corpus.txt")
    rc, _, err = _cli(capsys, str(sae_dir), "--features", "0,x", "--data", corpus)
    assert rc == 2 and "--features" in err
    rc, _, err = _cli(capsys, str(sae_dir), "--features", "99", "--data", corpus, "--device", "cpu")
    assert rc == 2 and "features 0..39" in err
    # an SAE for a wider model
    wide = random_model(tok, seed=2)
    wide_path = save_model(tmp_path / "wide.safetensors", wide, tok)
    big = SparseAutoencoder(SAEConfig(d_in=48, d_sae=8, k=2, hook_name=HOOK))
    save_sae(tmp_path / "big.safetensors", big)
    rc, _, err = _cli(
        capsys,
        str(tmp_path / "big.safetensors"),
        "--model",
        str(wide_path),
        "--data",
        corpus,
        "--device",
        "cpu",
    )
    assert rc == 2 and "48-wide" in err
    rc, _, err = _cli(capsys, str(tmp_path / "missing"))
    assert rc == 2 and "no such SAE file" in err
