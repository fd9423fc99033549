"""`twofiles inspect lens|attention|attribute|patch`: the pictures from the command line, on a tiny
random model saved as a model.safetensors and run through the real CLI, and the numbers under
them (direct logit attribution adds up to the logit; patching everything recovers 1, nothing 0;
the lens's last row is the model's own argmax)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from tiny_models import random_model, tiny_tokenizer
from twofiles.artifact import load_model, save_model
from twofiles.cli import main
from twofiles.engine import encode_prompt
from twofiles.inspect.attention import attention_patterns
from twofiles.inspect.attribution import direct_logit_attribution
from twofiles.inspect.hooks import run_with_cache, run_with_hooks
from twofiles.inspect.lens import logit_lens
from twofiles.inspect.patching import activation_patching, recovered

PROMPT = "to be or not to be, that is the"
CLEAN = "to be or not to be, that"
CORRUPT = "to be or not to be, the"  # one token swapped: same length


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> str:
    tok = tiny_tokenizer()
    path = tmp_path_factory.mktemp("inspect") / "model.safetensors"
    save_model(path, random_model(tok, max_seq_len=64), tok)
    return str(path)


@pytest.fixture(scope="module")
def loaded(model_file):
    return load_model(model_file)


def _cli(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(["inspect", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


def _self_contained(path: Path) -> None:
    page = path.read_text()
    assert page.startswith("<!doctype html>") and page.rstrip().endswith("</html>")
    # nothing fetched from elsewhere: no src= or href= pointing at the network
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page, re.I)


def test_lens_cli_writes_the_pictures_and_its_last_row_is_the_argmax(
    capsys, tmp_path, model_file, loaded
) -> None:
    out = tmp_path / "lens"
    rc, stdout, err = _cli(
        capsys, "lens", model_file, "--prompt", PROMPT, "--out", str(out), "--json"
    )
    assert rc == 0, err
    summary = json.loads(stdout.splitlines()[-1])
    ids = encode_prompt(loaded.tokenizer, PROMPT)
    assert summary["shape"] == [3, len(ids), 5] and summary["png"] == str(out / "lens.png")
    assert (out / "lens.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    _self_contained(out / "lens.html")
    assert "block 1" in stdout  # the terminal table: one row per layer

    result = logit_lens(loaded.model, ids, k=3)
    with torch.no_grad():
        argmax = loaded.model(torch.tensor([ids]))[0].argmax(-1)
    assert torch.equal(result.top_ids[-1, :, 0], argmax)
    assert summary["prediction"] == loaded.tokenizer.decode([int(argmax[-1])])


def test_lens_figure_draws_the_last_positions_of_a_long_prompt(loaded) -> None:
    import matplotlib.pyplot as plt

    from twofiles.inspect.lens import lens_figure
    from twofiles.inspect.render import plot_label

    ids = encode_prompt(loaded.tokenizer, PROMPT)
    result = logit_lens(loaded.model, ids, k=1)
    tokens = [loaded.tokenizer.decode([i]) for i in ids]
    tops = [[loaded.tokenizer.decode([int(i)]) for i in row[:, 0]] for row in result.top_ids]
    fig = lens_figure(result, tokens, tops, max_positions=4)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == [plot_label(t) for t in tokens[-4:]]
    assert "the last 4 of" in ax.get_xlabel()
    plt.close(fig)


def test_attention_cli_with_induction_scores(capsys, tmp_path, model_file, loaded) -> None:
    out = tmp_path / "att"
    rc, stdout, err = _cli(
        capsys,
        "attention",
        model_file,
        "--prompt",
        PROMPT,
        "--induction",
        "--heads",
        "0,2",
        "--out",
        str(out),
        "--json",
    )
    assert rc == 0, err
    summary = json.loads(stdout.splitlines()[-1])
    ids = encode_prompt(loaded.tokenizer, PROMPT)
    assert summary["shape"] == [2, 4, len(ids), len(ids)] and summary["ranked_by"] == "induction"
    assert {"layer", "head", "prev_token", "first_token", "induction"} <= set(
        summary["top_heads"][0]
    )
    for name in ("attention.png", "heads.png"):
        assert (out / name).stat().st_size > 1000
    _self_contained(out / "attention.html")
    assert "id='patterns'" in (out / "attention.html").read_text()

    # the summaries are what they say, read off the patterns themselves
    result = attention_patterns(loaded.model, ids)
    pats = result.patterns
    assert torch.allclose(pats.sum(-1), torch.ones(pats.shape[:-1]), atol=1e-5)
    assert torch.allclose(pats.triu(1), torch.zeros_like(pats))  # causal
    T = len(ids)
    prev = torch.stack([pats[:, :, t, t - 1] for t in range(1, T)], -1).mean(-1)
    assert torch.allclose(result.prev_token, prev) and torch.allclose(
        result.first_token, pats[..., 0].mean(-1)
    )


@pytest.mark.parametrize("against", [None, " to"])
def test_attribution_adds_up_to_the_logit(loaded, against) -> None:
    tok = loaded.tokenizer
    ids = encode_prompt(tok, PROMPT)
    target = tok.encode(" the")[0]
    other = None if against is None else tok.encode(against)[0]
    result = direct_logit_attribution(loaded.model, ids, target, other)
    with torch.no_grad():
        logits = loaded.model(torch.tensor([ids]))[0, -1]
    want = logits[target] - (0 if other is None else logits[other])
    assert result.total == pytest.approx(float(want), abs=1e-4)
    assert result.logit == pytest.approx(float(want), abs=1e-4)
    # a layer's heads add up to that layer's whole attention output
    _, cache = run_with_cache(loaded.model, ids, names=[("attn_out", 1), ("resid_post", 1)])
    m = loaded.model
    x = cache["resid_post", 1][0, -1]
    with torch.no_grad():
        direction = m.lm_head.weight[target] - (0 if other is None else m.lm_head.weight[other])
        d = direction * m.model.norm.weight * torch.rsqrt(x.pow(2).mean() + m.model.norm.eps)
    assert float(result.heads[1].sum()) == pytest.approx(
        float(cache["attn_out", 1][0, -1] @ d), abs=1e-5
    )


def test_attribute_cli(capsys, tmp_path, model_file) -> None:
    out = tmp_path / "dla"
    rc, stdout, err = _cli(
        capsys,
        "attribute",
        model_file,
        "--prompt",
        PROMPT,
        "--target",
        " the",
        "--against",
        " to",
        "--out",
        str(out),
        "--json",
    )
    assert rc == 0, err
    summary = json.loads(stdout.splitlines()[-1])
    assert summary["shape"] == [2, 4] and summary["target"] == " the"
    assert summary["sum"] == pytest.approx(summary["logit"], abs=1e-4)
    parts = summary["embed"] + summary["heads_total"] + summary["mlps_total"]
    assert parts == pytest.approx(summary["logit"], abs=1e-4)
    assert (out / "attribution.png").stat().st_size > 1000
    _self_contained(out / "attribution.html")


def test_patching_everything_recovers_one_and_nothing_zero(loaded) -> None:
    tok = loaded.tokenizer
    clean, corrupt = encode_prompt(tok, CLEAN), encode_prompt(tok, CORRUPT)
    target, against = tok.encode(" the")[0], tok.encode(" to")[0]
    n = loaded.model.config.n_layers
    # every block's input patched at every position: the clean run; no patch: the corrupted one
    resid = [f"blocks.{i}.hook_resid_pre" for i in range(n)]
    assert recovered(loaded.model, clean, corrupt, target, against, resid) == pytest.approx(
        1.0, abs=1e-5
    )
    assert recovered(loaded.model, clean, corrupt, target, against, []) == 0.0
    # every write into the residual stream (embedding, attention, MLP) patched: the clean run
    every = [f"blocks.{i}.hook_{k}" for i in range(n) for k in ("attn_out", "mlp_out")]
    every.append("hook_embed")
    assert recovered(loaded.model, clean, corrupt, target, against, every) == pytest.approx(
        1.0, abs=1e-5
    )


def test_patching_sweep_matches_single_patched_runs(loaded) -> None:
    tok = loaded.tokenizer
    clean, corrupt = encode_prompt(tok, CLEAN), encode_prompt(tok, CORRUPT)
    target, against = tok.encode(" the")[0], tok.encode(" to")[0]
    differ = [p for p, (a, b) in enumerate(zip(clean, corrupt, strict=True)) if a != b]
    assert len(differ) == 1
    res = activation_patching(loaded.model, clean, corrupt, target, against, batch_size=3)
    # block 0's input is the embedding: the swapped position restores everything, the others
    # (the same tokens in both prompts) nothing
    assert res.scores[0, differ[0]] == pytest.approx(1.0, abs=1e-5)
    same = [p for p in range(len(clean)) if p != differ[0]]
    assert torch.allclose(res.scores[0, same], torch.zeros(len(same)), atol=1e-6)
    # every cell of the batched sweep is the single patched run it stands for
    for layer, pos in [(1, differ[0]), (1, 2), (0, len(clean) - 1)]:
        name = f"blocks.{layer}.hook_resid_pre"
        assert float(res.scores[layer, pos]) == pytest.approx(
            recovered(loaded.model, clean, corrupt, target, against, [name], [pos]), abs=1e-5
        )
    heads = activation_patching(loaded.model, clean, corrupt, target, against, "heads")
    assert heads.scores.shape == (2, 4)
    z = ["blocks.1.attn.hook_z"]
    cache = run_with_cache(loaded.model, clean, names=z)[1]

    def one_head(x, hook):
        x = x.clone()
        x[:, :, 2] = cache[hook.name][:, :, 2]
        return x

    with torch.no_grad():
        logits = run_with_hooks(loaded.model, corrupt, [(z[0], one_head)])
    diff = float(logits[0, -1, target] - logits[0, -1, against])
    want = (diff - heads.corrupt_diff) / (heads.clean_diff - heads.corrupt_diff)
    assert float(heads.scores[1, 2]) == pytest.approx(want, abs=1e-5)


def test_patch_cli(capsys, tmp_path, model_file) -> None:
    out = tmp_path / "patch"
    rc, stdout, err = _cli(
        capsys,
        "patch",
        model_file,
        "--clean",
        CLEAN,
        "--corrupt",
        CORRUPT,
        "--target",
        " the",
        "--against",
        " to",
        "--out",
        str(out),
        "--no-progress",
        "--json",
    )
    assert rc == 0, err
    summary = json.loads(stdout.splitlines()[-1])
    assert summary["shape"] == [2, summary["tokens"]] and summary["max_recovered"] == 1.0
    assert (out / "patch.png").stat().st_size > 1000
    _self_contained(out / "patch.html")


def test_bad_input_exits_2_with_a_clear_message(capsys, tmp_path, model_file) -> None:
    out = tmp_path / "bad"
    args = ["--out", str(out), "--no-progress"]
    rc, _, err = _cli(
        capsys, "patch", model_file, "--clean", CLEAN, "--corrupt", "to be", "--target", " the",
        "--against", " to", *args,
    )  # fmt: skip
    assert rc == 2 and re.search(r"clean prompt is \d+ tokens and the corrupted prompt \d+", err)
    # a target of several tokens: refused, its pieces named (scores are for one next token)
    rc, _, err = _cli(
        capsys, "patch", model_file, "--clean", CLEAN, "--corrupt", CORRUPT, "--target",
        " questionable", "--against", " to", *args,
    )  # fmt: skip
    assert rc == 2 and "--target ' questionable' is" in err and "not one" in err
    rc, _, err = _cli(capsys, "attribute", model_file, "--prompt", "to be " * 40, "--out", str(out))
    assert rc == 2 and "longer than the model's context of 64" in err
    rc, _, err = _cli(capsys, "attention", model_file, "--prompt", PROMPT, "--layers", "7")
    assert rc == 2 and "--layers '7': choose among 0..1" in err
    assert not out.exists()  # nothing written on bad input


@pytest.mark.slow
def test_ioi_patching_on_smollm2(capsys, tmp_path) -> None:
    """The README's indirect-object demo, on two of its 30 layers (to stay short)."""
    from peers import require_smollm2

    require_smollm2()
    out = tmp_path / "ioi"
    rc, stdout, err = _cli(
        capsys,
        "patch",
        "smollm2",
        "--clean",
        "When Mary and John went to the store, John gave a drink to",
        "--corrupt",
        "When John and Mary went to the store, Mary gave a drink to",
        "--target",
        " Mary",
        "--against",
        " John",
        "--layers",
        "0,29",
        "--out",
        str(out),
        "--no-progress",
        "--json",
    )
    assert rc == 0, err
    summary = json.loads(stdout.splitlines()[-1])
    assert summary["clean_diff"] > 3 and summary["corrupt_diff"] < -3  # it gets the indirect object
    assert summary["shape"] == [2, 14] and summary["layers"] == [0, 29]
    # late, the answer sits at the last position; early, at the second mention of the subject
    assert summary["best"][0] == {
        "layer": 29,
        "position": 13,
        "recovered": pytest.approx(0.94, abs=0.03),
    }
    assert {"layer": 0, "position": 9} in [
        {k: b[k] for k in ("layer", "position")} for b in summary["best"]
    ]
    _self_contained(out / "patch.html")
