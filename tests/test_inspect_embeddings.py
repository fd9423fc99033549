"""`inspect embeddings`: neighbours equal a brute-force cosine ranking, analogies are exact on a
hand-built table, the context trajectory ends at run_with_cache's resid_post, and the CLI writes
a self-contained page and refuses bad input with exit code 2."""

from __future__ import annotations

import json

import pytest
import torch
from tests.tiny_models import random_model, tiny_tokenizer

from twofiles.artifact import LoadedModel, save_model
from twofiles.cli import main
from twofiles.inspect import embeddings as emb
from twofiles.inspect import run_with_cache


@pytest.fixture(scope="module")
def loaded():
    tok = tiny_tokenizer()
    return LoadedModel(random_model(tok), tok)


@pytest.fixture
def model_path(loaded, tmp_path):
    return str(save_model(tmp_path / "m.safetensors", loaded.model, loaded.tokenizer))


def test_neighbours_equal_a_brute_force_cosine_ranking(loaded):
    E = emb.embedding_table(loaded)
    V = E.shape[0]
    for i in (5, 100, 272):
        got = emb.neighbours(E, E[i], k=8)
        sims = [(float(torch.dot(E[i], E[j]) / (E[i].norm() * E[j].norm())), j) for j in range(V)]
        want = sorted(sims, reverse=True)[:8]
        assert [j for j, _ in got] == [j for _, j in want]
        assert [c for _, c in got] == pytest.approx([c for c, _ in want], abs=1e-5)
        assert got[0] == (i, pytest.approx(1.0, abs=1e-5))  # a token is its own nearest
        assert i not in [j for j, _ in emb.neighbours(E, E[i], k=8, exclude=[i])]


def test_words_become_tokens(loaded):
    tok = loaded.tokenizer
    wv = emb.word_vector(loaded, "question")  # stored with its leading space, one token
    assert wv.ids == tok.encode(" question") and len(wv.ids) == 1 and wv.how == "1 token"
    many = emb.word_vector(loaded, "zqxv")
    assert len(many.ids) > 1 and many.how == f"mean of {len(many.ids)} tokens"
    torch.testing.assert_close(many.vector, emb.embedding_table(loaded)[many.ids].mean(0))
    with pytest.raises(ValueError, match="no tokens"):
        emb.word_vector(loaded, "  ")


def test_analogy_on_a_hand_built_table(loaded):
    tok = loaded.tokenizer
    model = random_model(tok, seed=3)
    a, b, c, d = (tok.encode(" " + w)[0] for w in ("to", "be", "or", "question"))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        W = model.model.embed_tokens.weight
        W.copy_(torch.randn(W.shape, generator=g) * 0.1)
        base = torch.randn(3, W.shape[1], generator=g)
        W[a], W[b], W[c] = base[0], base[1], base[2]
        W[d] = base[0] - base[1] + base[2]  # "to - be + or" is exactly "question"
    hand = LoadedModel(model, tok)
    result = emb.analogy(hand, "to - be + or", k=5, expect="question")
    assert result.answers[0] == (d, pytest.approx(1.0, abs=1e-5))
    assert result.expected_rank == 1 and result.expected_cosine == pytest.approx(1.0, abs=1e-5)
    assert not {a, b, c} & {i for i, _ in result.answers}  # the inputs are left out
    assert [s for s, _ in result.terms] == [1, -1, 1]


@pytest.mark.parametrize(
    ("expr", "terms"),
    [
        ("king - man + woman", [(1, "king"), (-1, "man"), (1, "woman")]),
        ("-a+b", [(-1, "a"), (1, "b")]),
        ('"new york" - usa', [(1, "new york"), (-1, "usa")]),
    ],
)
def test_parse_expression(expr, terms):
    assert emb.parse_expression(expr) == terms


@pytest.mark.parametrize("expr", ["", "king -", "king + + man", "king man", '"open', "+"])
def test_parse_expression_refuses_bad_syntax(expr):
    with pytest.raises(ValueError, match="expected"):
        emb.parse_expression(expr)


def test_the_trajectory_ends_at_resid_post(loaded):
    tok, model = loaded.tokenizer, loaded.model
    traj = emb.context_trajectory(loaded, ["that is to", "whether to"], "to")
    n = model.config.n_layers
    assert traj.layers == ["embed", "block 0", "block 1"] and traj.states.shape[:2] == (2, n + 1)
    assert traj.tokens[1] == [tok.bos_id, *tok.encode("whether to")]
    assert traj.tokens[0] == [tok.bos_id, *tok.encode("that is to")]
    for c, ids in enumerate(traj.tokens):
        _, cache = run_with_cache(model, ids, names=[("resid_post", n - 1), "embed"])
        torch.testing.assert_close(traj.states[c, -1], cache["resid_post", n - 1][0, -1])
        torch.testing.assert_close(traj.states[c, 0], cache["embed"][0, -1])
    cos = torch.nn.functional.cosine_similarity(traj.states[0], traj.states[1], dim=-1)
    torch.testing.assert_close(torch.tensor(traj.cosine[(0, 1)]), cos)
    assert traj.cosine[(0, 1)][0] == pytest.approx(1.0, abs=1e-5)  # same token, same embedding
    assert traj.xy.shape == (2, n + 1, 2)
    # one word per context: the baseline of two different words in the same slot
    pair = emb.context_trajectory(loaded, ["that is to", "that is be"], ["to", "be"])
    assert pair.word == "to / be" and pair.tokens[1][-1] == tok.encode(" be")[-1]
    assert pair.cosine[(0, 1)][0] < 0.99  # different tokens, different embeddings


def test_cli_all_four_at_once(model_path, tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(
        ["inspect", "embeddings", model_path, "--neighbours", "question", "--k", "4",
         "--analogy", "to - be + or", "--expect", "not", "--analogy", "be + or = to", "--map", "to,be,or,not,question",
         "--context", "that is to", "--context", "whether to", "--word", "to",
         "--out", str(out), "--json"]
    )  # fmt: skip
    assert rc == 0
    stdout = capsys.readouterr().out
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert summary["neighbours"][0]["nearest"][0]["token"] == " question"
    assert len(summary["analogies"][0]["answers"]) == 4
    first, second = summary["analogies"]
    assert first["expected"] == "not" and 1 <= first["expected_rank"] <= 315
    assert second["expression"] == "be + or" and second["expected"] == "to"
    assert summary["map"]["words"] == ["to", "be", "or", "not", "question"]
    assert len(summary["context"]["cosine"]["0-1"]) == 3
    assert "block 1" in stdout  # the terminal table
    page = (out / "embeddings.html").read_text()
    assert page.count("data:image/png;base64,") == 2
    assert "http://" not in page and "https://" not in page and "<script src" not in page
    for name in ("map.png", "context.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    rc = main(["inspect", "embeddings", model_path, "--map-top", "5", "--out", str(out), "--json"])
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert rc == 0 and len(summary["map"]["words"]) == 5


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--neighbours", " "], "no tokens"),
        (["--analogy", "to + - be"], "expected a word"),
        (["--analogy", "to be"], "expected '+' or '-'"),
        (["--analogy", "to + be ="], "nothing after '='"),
        (["--context", "to be", "--context", "or not", "--word", "question"], "does not occur"),
        (["--context", "to be", "--word", "to"], "two or more"),
        (["--context", "to be", "--context", "or not", "--word", "be,or,to"], "3 words for 2"),
        ([], "nothing to show"),
    ],
)
def test_bad_input_exits_2_and_writes_nothing(model_path, tmp_path, capsys, flags, message):
    out = tmp_path / "out"
    assert main(["inspect", "embeddings", model_path, "--out", str(out), *flags]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()
