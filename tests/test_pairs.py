"""`twofiles pairs`: K samples per prompt labelled by the task's verifier into TRL-form preference
pairs; every prompt without a pair counted by reason."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from twofiles.chat import Message
from twofiles.rollouts import PAIR_SKIP_REASONS, Rollout, VerifiableTask, label_pairs


def _rollout(task: VerifiableTask, reply: str) -> Rollout:
    r = Rollout(task, [1, 2], ids=[3] * (len(reply) + 1), mask=[1] * (len(reply) + 1))
    r.messages, r.reply = [Message("assistant", reply)], reply
    r.correct = task.verify(reply)
    r.reward = float(r.correct)
    return r


def test_pairs_put_a_right_reply_against_a_wrong_one_and_count_every_skip() -> None:
    tasks = [
        VerifiableTask(f"t{i}", "t", f"q{i}", "", "7", lambda r: r.strip() == "7") for i in range(5)
    ]
    groups = [
        ["7", "8", "7 ", "9"],  # mixed: pairs
        ["7", "7", "7", "7"],  # all right
        ["1", "2", "3", "4"],  # all wrong
        ["", "", "", "7"],  # one non-empty reply: nothing to pair it with
        ["7", "7", "1", "1"],  # mixed, but only one distinct reply per side
    ]
    rollouts = [_rollout(t, reply) for t, g in zip(tasks, groups) for reply in g]
    scores = [r.reward for r in rollouts]
    pairs, skipped = label_pairs(rollouts, 4, scores, pairs_per_prompt=3)
    assert set(skipped) == set(PAIR_SKIP_REASONS)
    assert skipped["all_correct"] == 1 and skipped["all_wrong"] == 1 and skipped["empty"] == 1
    by_task: dict[str, list[dict]] = {}
    for p in pairs:
        by_task.setdefault(p["task"], []).append(p)
        assert p["prompt"] == [{"role": "user", "content": f"q{p['task'][1:]}"}]
        assert p["chosen"][0]["content"].strip() == "7" != p["rejected"][0]["content"].strip()
        assert p["score_chosen"] == 1.0 and p["score_rejected"] == 0.0
    # three pairs where there are 2 distinct right and 2 distinct wrong replies, each new; one
    # where there is one of each (duplicates are not paired again)
    assert len(by_task["t0"]) == 2 and len(by_task["t4"]) == 1
    assert {p["rejected"][0]["content"] for p in by_task["t0"]} == {"8", "9"}
    # a reward model's real-valued scores: best against worst; all equal is "tied"
    pairs, skipped = label_pairs(rollouts[:8], 4, [0.1, 0.9, 0.5, 0.2, 1, 1, 1, 1], verifier=False)
    assert [p["chosen"][0]["content"] for p in pairs] == ["8"] and skipped["tied"] == 1
    assert pairs[0]["rejected"][0]["content"] == "7"


@pytest.fixture(scope="module")
def digit_model(tmp_path_factory):
    """A tiny chat model that answers with one digit or another: its output layer reads only
    the digit tokens, so a one-token reply is some digit, different per prompt and sample."""
    from twofiles.artifact import save_model
    from twofiles.data.builtin import builtin_text
    from twofiles.model import ModelConfig, Transformer
    from twofiles.tokenizer import Tokenizer

    tok = Tokenizer.train([builtin_text("train")[:100_000]], 400)
    m = Transformer(
        ModelConfig(
            vocab_size=tok.vocab_size,
            dim=32,
            n_layers=1,
            n_heads=4,
            n_kv_heads=2,
            hidden_dim=64,
            max_seq_len=64,
        )
    )
    m.init_weights(0)
    digits = [tok.encode(str(d))[0] for d in range(10)]
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in m.parameters():
            if p.ndim == 2:
                p.add_(torch.randn(p.shape, generator=g) * 0.3)
        w = torch.zeros_like(m.lm_head.weight)
        w[digits] = torch.randn(10, w.shape[1], generator=g) * 0.3
        m.lm_head.weight.copy_(w)
    d = tmp_path_factory.mktemp("pairs")
    path = d / "digits.safetensors"
    save_model(path, m, tok)
    (d / "digits.jsonl").write_text(
        "".join(
            json.dumps({"question": f"Pick a digit, #{i}", "answer": "3"}) + "\n" for i in range(40)
        )
    )
    (d / "digits.toml").write_text(
        'type = "generate"\ndata = "digits.jsonl"\nprompt = "{question}"\nextract = "number"\n'
    )
    return path, d / "digits.toml"


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "twofiles", "pairs", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.slow
def test_pairs_verb_writes_trl_pairs_that_read_and_render(digit_model, tmp_path) -> None:
    from twofiles.chat import ChatFormat
    from twofiles.data.preferences import read_preferences, render_pairs
    from twofiles.formats.resolve import resolve_model

    model, task = digit_model
    out = tmp_path / "pairs.jsonl"
    p = _run(
        str(model), "--tasks", str(task), "--samples", "6", "--max-tokens", "1",
        "--out", str(out), "--json", "--seed", "3",
    )  # fmt: skip
    assert p.returncode == 0, p.stderr[-3000:]
    summary = json.loads(p.stdout.strip().splitlines()[-1])
    pairs = read_preferences(out)
    assert summary["pairs"] == len(pairs) > 0
    assert summary["pairs"] + sum(summary["skipped"].values()) == summary["prompts"]
    assert summary["skipped"]["all_wrong"] > 0 and 0 < summary["pass@1"] < summary["pass@6"]
    for pair in pairs:
        assert pair.conversational and pair.chosen[0].content == "3" != pair.rejected[0].content
    fmt = ChatFormat.for_model(resolve_model(str(model)))
    rendered, report = render_pairs(pairs, fmt, max_len=64)
    assert len(rendered) == len(pairs) and not report.n_skipped
    # the same seed, the same file; a bad judge: exit 2 and nothing written
    again = tmp_path / "again.jsonl"
    _run(str(model), "--tasks", str(task), "--samples", "6", "--max-tokens", "1",
         "--out", str(again), "--seed", "3")  # fmt: skip
    assert again.read_text() == out.read_text()
    bad = _run(str(model), "--tasks", str(task), "--judge", "oracle", "--out", str(tmp_path / "x"))
    assert bad.returncode == 2 and "--judge" in bad.stderr and not (tmp_path / "x").exists()
    long = _run(
        str(model), "--tasks", str(task), "--samples", "2", "--max-tokens", "1", "--limit", "3",
        "--max-prompt-len", "4", "--out", str(tmp_path / "l.jsonl"), "--json",
    )  # fmt: skip
    assert json.loads(long.stdout.strip().splitlines()[-1])["skipped"]["prompt_too_long"] == 3


@pytest.mark.slow
def test_pairs_judged_by_a_reward_model_put_its_higher_score_first(digit_model, tmp_path) -> None:
    """`--judge reward:PATH`: the reward model (twofiles reward) scores every sample; each pair's
    chosen reply is one it scored highest in its group, the rejected one it scored lowest, and the
    scores written with the pair are the scorer's own."""
    from twofiles.chat import Message
    from twofiles.data.preferences import read_preferences
    from twofiles.scoring import load_reward_scorer
    from twofiles.train.reward import RewardConfig, train_reward

    model, task = digit_model
    rm = train_reward(
        RewardConfig(
            model=str(model), out=str(tmp_path / "rm"), max_steps=2, batch_size=4,
            progress=False, device="cpu", checkpoint_seconds=0,
        )
    )  # fmt: skip
    rm_path = rm.model_path
    out = tmp_path / "pairs.jsonl"
    p = _run(
        str(model), "--tasks", str(task), "--samples", "4", "--max-tokens", "1", "--limit", "8",
        "--judge", f"reward:{rm_path}", "--out", str(out), "--json", "--seed", "3",
    )  # fmt: skip
    assert p.returncode == 0, p.stderr[-3000:]
    rows = [json.loads(ln) for ln in out.read_text().splitlines()]
    assert rows and len(rows) == len(read_preferences(out))
    scorer = load_reward_scorer(rm_path)
    for row in rows:
        prompt = [Message(**m) for m in row["prompt"]]
        chosen, rejected = row["chosen"][0]["content"], row["rejected"][0]["content"]
        assert row["score_chosen"] > row["score_rejected"]
        s_c, s_r = scorer.score_batch([prompt, prompt], [chosen, rejected])
        assert s_c == pytest.approx(row["score_chosen"], abs=1e-4)
        assert s_r == pytest.approx(row["score_rejected"], abs=1e-4)
