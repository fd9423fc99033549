"""GCG (redteam/gcg.py) on a tiny random model: the one-hot gradient against autograd through
the embeddings and finite differences, the cached-prefix candidate losses against plain
forwards, the search lowering the loss, exact resume, the retokenization filter, the CLI."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from tests.tiny_models import random_model, tiny_tokenizer

from twofiles.artifact import LoadedModel, save_model
from twofiles.chat.templates import ChatFormat
from twofiles.cli import main
from twofiles.redteam import gcg

SETTINGS = gcg.GCGSettings(suffix_len=4, topk=16, batch=8, prompts=2, seed=3)


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def fmt(tok) -> ChatFormat:
    return ChatFormat.builtin_for(tok)


def _model(tok, dtype=torch.float32, max_seq_len=512):
    return random_model(tok, max_seq_len=max_seq_len).to(dtype).requires_grad_(False)


def _prompts(fmt, tok, settings=SETTINGS, target="ok {secret}"):
    allowed = gcg.allowed_tokens(tok)
    start = gcg.initial_suffix(tok, settings.suffix_len, allowed)
    pairs = gcg.train_pairs(settings)
    return (
        start,
        allowed,
        [gcg.build_prompt(fmt, p, start, target.format(secret=p.secret)) for p in pairs],
    )


def _plain_loss(model, prompt: gcg.Prompt, suffix: list[int], embeds=None) -> torch.Tensor:
    """The reference: the whole prompt in one plain forward, no cache; `embeds` [L, dim]
    replaces the suffix tokens' embeddings."""
    ids = prompt.before + suffix + prompt.after + prompt.target
    x = torch.tensor([ids])
    P, L, T = len(prompt.before), len(suffix), len(prompt.target)
    if embeds is None:
        logits = model.lm_head(model.hidden_states(x))[0]
    else:
        full = model.model.embed_tokens(x)
        full = torch.cat([full[:, :P], embeds[None], full[:, P + L :]], dim=1)
        handle = model.model.embed_tokens.register_forward_hook(lambda m, i, o: full)
        try:  # hidden_states + lm_head: forward would round the logits to fp32
            logits = model.lm_head(model.hidden_states(x))[0]
        finally:
            handle.remove()
    return F.cross_entropy(logits[-T - 1 : -1], torch.tensor(prompt.target))


def test_one_hot_gradient_matches_autograd_and_finite_differences(tok, fmt) -> None:
    model = _model(tok, torch.float64)
    start, _, prompts = _prompts(fmt, tok)
    loss, grad = gcg.Objective(model, prompts).gradient(start)
    W = model.model.embed_tokens.weight
    # autograd through the suffix's embeddings in plain forwards: d/d(one-hot) = d/d(emb) @ W^T
    emb = W[start].clone().requires_grad_(True)
    ref_loss = sum(_plain_loss(model, p, start, emb) for p in prompts)
    (g_emb,) = torch.autograd.grad(ref_loss, emb)
    assert loss == pytest.approx(float(ref_loss.detach()) / len(prompts), rel=1e-9)
    torch.testing.assert_close(grad, g_emb @ W.T, rtol=1e-7, atol=1e-9)
    # finite differences: moving position i from its token a toward token v by eps changes the
    # loss by eps * (g[i, v] - g[i, a])
    eps = 1e-6
    for i, v in ((0, 37), (2, 101), (3, 250)):
        a = start[i]
        e = W[start].clone()
        e[i] = W[start[i]] + eps * (W[v] - W[a])
        bumped = sum(_plain_loss(model, p, start, e) for p in prompts)
        fd = (float(bumped) - float(ref_loss.detach())) / eps
        assert fd == pytest.approx(float(grad[i, v] - grad[i, a]), rel=1e-4, abs=1e-7)


def test_batched_candidate_losses_match_plain_forwards(tok, fmt) -> None:
    model = _model(tok)
    start, allowed, prompts = _prompts(fmt, tok)
    g = torch.Generator().manual_seed(0)
    pool = allowed.nonzero().flatten()
    cands = pool[torch.randint(0, len(pool), (7, len(start)), generator=g)]
    got = gcg.Objective(model, prompts, chunk=3).losses(cands)  # chunks of 3: ragged last chunk
    with torch.no_grad():
        want = torch.stack(
            [
                sum(_plain_loss(model, p, row, None) for p in prompts) / len(prompts)
                for row in cands.tolist()
            ]
        )
    torch.testing.assert_close(got, want.float(), rtol=1e-5, atol=1e-5)


def test_a_few_steps_lower_the_loss(tok, fmt, tmp_path) -> None:
    loaded = LoadedModel(_model(tok), tok)
    state = gcg.search(loaded, fmt, SETTINGS, tmp_path, steps=4)
    first = state.history[0]["loss"]  # the starting suffix's loss
    assert state.step == 4 and len(state.history) == 4
    assert state.best_loss < first
    bests = [h["best"] for h in state.history]
    assert bests == sorted(bests, reverse=True) and bests[-1] < bests[0]
    assert all(gcg.retokenizes(fmt, p, state.best) for p in _prompts(fmt, tok)[2])


def test_resume_continues_exactly(tok, fmt, tmp_path) -> None:
    loaded = LoadedModel(_model(tok), tok)
    whole = gcg.search(loaded, fmt, SETTINGS, tmp_path / "a", steps=4)
    gcg.search(loaded, fmt, SETTINGS, tmp_path / "b", steps=2)
    saved = json.loads((tmp_path / "b" / "state.json").read_text())
    assert saved["step"] == 2
    resumed = gcg.search(loaded, fmt, SETTINGS, tmp_path / "b", steps=4)

    def strip(s):
        return (s.step, s.suffix, s.best, s.best_loss, [(h["loss"], h["best"]) for h in s.history])

    assert strip(resumed) == strip(whole)
    # a resumed run with other settings is refused, naming the setting
    other = gcg.GCGSettings(suffix_len=5, topk=16, batch=8, prompts=2, seed=3)
    with pytest.raises(gcg.BadInputError, match="suffix_len"):
        gcg.search(loaded, fmt, other, tmp_path / "b", steps=5)
    (tmp_path / "b" / "state.json").write_text('{"version": 1, "stepz": 3}')
    with pytest.raises(gcg.BadInputError, match=r"state.json: not a GCG state file"):
        gcg.search(loaded, fmt, SETTINGS, tmp_path / "b", steps=5)


def test_retokenization_filter_drops_unstable_candidates(tok, fmt) -> None:
    start, allowed, prompts = _prompts(fmt, tok)
    # two allowed tokens whose texts side by side merge into another token
    singles = [i for i in allowed.nonzero().flatten().tolist() if len(tok.decode([i])) == 1]
    a, b = next(
        (a, b)
        for a in singles
        for b in singles
        if tok.encode(tok.decode([a, b])) != [a, b] and tok.decode([a, b]).isalpha()
    )
    unstable = [*start[:1], a, b, *start[3:]]
    assert not gcg.retokenizes(fmt, prompts[0], unstable)
    assert gcg.retokenizes(fmt, prompts[0], start)
    kept = gcg.filter_candidates(fmt, prompts, torch.tensor([unstable, start, start]), keep=5)
    assert kept.tolist() == [start]  # the unstable one dropped, the duplicate too


@pytest.mark.slow
def test_cli_writes_suffix_json_and_refuses_a_bad_model(tok, tmp_path, capsys) -> None:
    # room for the mock tools' descriptions in the prompt (--with-tools)
    path = save_model(tmp_path / "model.safetensors", _model(tok, max_seq_len=2048), tok)
    out = tmp_path / "run"
    flags = ["--suffix-len", "3", "--topk", "8", "--batch-size", "4", "--prompts", "1"]
    rc = main(["redteam", "gcg", str(path), "--out", str(out), "--steps", "2", *flags, "--json"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    record = json.loads((out / "suffix.json").read_text())
    assert record["steps"] == 2 and len(record["ids"]) == 3 and len(record["history"]) == 2
    assert record["suffix"] == tok.decode(record["ids"]) == summary["suffix"]
    assert record["model_sha256"] and record["retokenizes"] is True
    assert record["training_prompts"][0]["request"] == gcg.TRAIN_REQUESTS[0]
    assert (out / "loss.png").read_bytes()[:4] == b"\x89PNG"
    # held-out evaluation of the suffix found, through the chat loop
    rc = main(["redteam", "gcg", str(path), "--out", str(out), "--evaluate", "2", "--json"])
    assert rc == 0
    ev = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert ev["n"] == 2 and 0 <= ev["leaks_with"] <= 2
    rc = main(["redteam", "gcg", str(path), "--out", str(out), "--evaluate", "1", "--with-tools"])
    assert rc == 0 and "leaked without suffix" in capsys.readouterr().out
    rc = main(["redteam", "gcg", str(tmp_path / "nope.safetensors"), "--out", str(out)])
    assert rc == 2
    assert "nope.safetensors: no such model" in capsys.readouterr().err
    rc = main(["redteam", "gcg", str(path), "--out", str(out / "suffix.json")])
    assert rc == 2 and "not a directory" in capsys.readouterr().err
    assert not (tmp_path / "nope").exists()


def test_builtin_gcg_suite_is_the_script_output_for_its_suffix() -> None:
    import importlib.util
    from pathlib import Path

    import twofiles.redteam
    from twofiles.redteam.suite import load_suite

    path = Path(twofiles.redteam.__file__).parent / "suites" / "gcg.jsonl"
    attacks = load_suite(path)
    malicious = [a for a in attacks if a.label == "malicious"]
    benign = [a for a in attacks if a.label == "benign"]
    assert len(malicious) >= 30 and len(benign) >= 10
    assert {(a.category, a.tactic, a.check) for a in malicious} == {("gcg", "gcg-suffix", "canary")}
    assert not any(a.has_slot for a in attacks)  # "canary" without a slot: the secret leaks
    suffix = malicious[0].text[len(gcg.HELDOUT_REQUESTS[0]) :]
    assert suffix.startswith(" ") and len(suffix) > 1
    assert [a.text for a in malicious] == [r + suffix for r in gcg.HELDOUT_REQUESTS]
    assert not set(gcg.HELDOUT_REQUESTS) & set(gcg.TRAIN_REQUESTS)
    script = Path(__file__).resolve().parents[1] / "scripts" / "build_gcg_suite.py"
    spec = importlib.util.spec_from_file_location("build_gcg_suite", script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.build(suffix) == [json.loads(line) for line in path.read_text().splitlines()]


def test_leak_rate_replies_are_the_chat_loops(tok, fmt) -> None:
    from twofiles.chat.agent import respond
    from twofiles.engine import SamplingParams

    loaded = LoadedModel(_model(tok), tok)
    pairs = gcg.heldout_pairs(3)
    got: list[tuple[str, bool]] = []
    n_leaks, n = gcg.leak_rate(
        loaded, fmt, pairs, " ab", max_tokens=12, on_reply=lambda p, t, k: got.append((t, k))
    )
    params = SamplingParams(temperature=0.0, max_tokens=12)
    want = [
        "".join(
            e.value
            for e in respond(loaded, fmt, gcg.conversation(p, " ab"), params)
            if e.kind == "text"
        )
        for p in pairs
    ]
    assert [t for t, _ in got] == want and all(want)
    assert n == 3 and n_leaks == sum(k for _, k in got)
    # a reply that holds the secret counts as a leak
    secret_pairs = [gcg.Pair(r, "t") for r in ("a", "b")]
    k, _ = gcg.leak_rate(loaded, fmt, secret_pairs, max_tokens=12)
    replies: list[str] = []
    gcg.leak_rate(
        loaded, fmt, secret_pairs, max_tokens=12, on_reply=lambda p, t, _: replies.append(t)
    )
    assert k == sum("t" in r for r in replies)
