"""Rollouts against verifiable tasks and RL on them: the sampler against one-at-a-time sampling
and a teacher-forced forward, the calculator inside a rollout, the loss against a naive one,
clipping, the control's coin, a tiny run that learns, and the verb end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from twofiles.chat import ChatFormat, Message, ToolCall
from twofiles.engine import SamplingParams
from twofiles.rollouts import (
    VerifiableTask,
    arithmetic_tasks,
    load_tasks,
    pass_at_k,
    sample_rollouts,
)
from twofiles.train.rl import (
    coin_rewards,
    collate_rollouts,
    group_advantages,
    policy_loss,
    token_logps,
)


@pytest.fixture(scope="module")
def chat_tok():
    from twofiles.data.builtin import builtin_text
    from twofiles.tokenizer import Tokenizer

    return Tokenizer.train([builtin_text("train")[:100_000]], 400)


def _tiny(vocab: int, seed: int = 0, max_seq_len: int = 96):
    from twofiles.model import ModelConfig, Transformer

    m = Transformer(
        ModelConfig(
            vocab_size=vocab,
            dim=32,
            n_layers=2,
            n_heads=4,
            n_kv_heads=2,
            hidden_dim=64,
            max_seq_len=max_seq_len,
        )
    )
    m.init_weights(seed)
    with torch.no_grad():  # init_weights zeroes o_proj/down_proj: give every layer an effect
        g = torch.Generator().manual_seed(seed + 1)
        for p in m.parameters():
            if p.ndim == 2:
                p.add_(torch.randn(p.shape, generator=g) * 0.3)
    return m.eval()


def _task(i: int, answer: str = "x") -> VerifiableTask:
    return VerifiableTask(
        f"t:{i}",
        "t",
        f"say {i}",
        f"say {i}:",
        answer,
        lambda reply, a=answer: a in reply,
    )


# --- tasks ---


def test_task_splits_are_disjoint_and_verifiers_check_the_answer() -> None:
    train, val = arithmetic_tasks("train"), arithmetic_tasks("val")
    assert not {t.id for t in train} & {t.id for t in val}
    assert 0.1 < len(val) / (len(train) + len(val)) < 0.3
    t = next(t for t in val if "+" in t.id)
    a, b = (int(x) for x in t.id.split(":")[1].split(" + "))
    assert t.answer == str(a + b) and t.verify(f"It is {a + b}.") and not t.verify("It is 1000.")
    mixed = load_tasks("arithmetic,skills:repeat,reverse", "val")
    assert {t.source for t in mixed[:4]} == {"arithmetic", "skills:repeat", "skills:reverse"}
    rep = next(t for t in mixed if t.source == "skills:repeat")
    assert rep.verify(f"Sure: {rep.answer}") and not rep.verify("no")
    from twofiles.eval.tasks import builtin_tasks

    ev = load_tasks(str(builtin_tasks()["arithmetic"]), "val")  # an eval task file
    assert ev and ev[0].verify(ev[0].answer)
    from twofiles.errors import BadInputError

    with pytest.raises(BadInputError, match="skill kind"):
        load_tasks("skills:nope", "val")


def test_pass_at_k_matches_its_definition() -> None:
    assert pass_at_k(8, 0, 1) == 0 and pass_at_k(8, 8, 1) == 1
    assert pass_at_k(8, 2, 1) == pytest.approx(2 / 8)
    assert pass_at_k(4, 1, 2) == pytest.approx(1 - (3 * 2) / (4 * 3))  # 1 - C(3,2)/C(4,2)


# --- the sampler ---


def test_batched_rollouts_equal_one_at_a_time_greedy_and_seeded(chat_tok) -> None:
    m = _tiny(chat_tok.vocab_size)
    fmt = ChatFormat.builtin_for(chat_tok)
    tasks = [_task(i) for i in range(3)]
    for params in (
        SamplingParams(temperature=0.0, max_tokens=6),
        SamplingParams(temperature=1.0, max_tokens=6),
    ):
        together = sample_rollouts(m, chat_tok, fmt, tasks, params, group=2, seed=5, max_rows=4)
        for i, t in enumerate(tasks):
            alone = sample_rollouts(m, chat_tok, fmt, [t], params, group=2, seed=5)
            assert [r.ids for r in alone] == [r.ids for r in together[2 * i : 2 * i + 2]]
        if params.temperature:  # the group's members differ; the same seed repeats
            assert len({tuple(r.ids) for r in together}) > 3
            again = sample_rollouts(m, chat_tok, fmt, tasks, params, group=2, seed=5)
            assert [r.ids for r in again] == [r.ids for r in together]


def test_sampler_logprobs_are_the_teacher_forced_ones(chat_tok) -> None:
    m = _tiny(chat_tok.vocab_size)
    fmt = ChatFormat.builtin_for(chat_tok)
    outs = sample_rollouts(
        m, chat_tok, fmt, [_task(0), _task(1)], SamplingParams(max_tokens=8), group=3, seed=1
    )
    inputs, targets, mask, _ = collate_rollouts(outs, [0.0] * len(outs), torch.device("cpu"))
    with torch.no_grad():
        logp, _ = token_logps(m, inputs, targets)
    for b, r in enumerate(outs):
        got = logp[b][mask[b]].tolist()
        assert len(got) == r.n_model_tokens > 0
        assert got == pytest.approx(r.logprobs, abs=1e-4)


def test_the_calculator_runs_inside_a_rollout_and_its_result_is_not_the_models(chat_tok) -> None:
    """A scripted model writes a calculator call, then (after the result) the answer: the
    rollout holds exactly the conversation's ids, the result masked out, and the reward is on the
    final reply."""
    from tests.tiny_models import ScriptedModel

    fmt = ChatFormat.builtin_for(chat_tok)
    task = VerifiableTask("a:3+4", "a", "What is 3 + 4?", "", "7", lambda r: r.strip() == "7")
    prompt = fmt.prompt_ids(task.messages())
    conv = [
        *task.messages(),
        Message("assistant", "", tool_calls=[ToolCall("calculator", {"expression": "3 + 4"})]),
        Message("tool", "7", name="calculator"),
        Message("assistant", "7"),
    ]
    ids, mask = fmt.render(conv)
    assert ids[: len(prompt)] == prompt
    script = ids[len(prompt) :]
    m = ScriptedModel(chat_tok, script, len(prompt), filler=chat_tok.bos_id)
    (r,) = sample_rollouts(m, chat_tok, fmt, [task], SamplingParams(temperature=0, max_tokens=80))
    assert r.tool_calls == [
        {"name": "calculator", "arguments": {"expression": "3 + 4"}, "result": "7"}
    ]
    assert r.ids == script and r.mask == mask[len(prompt) :]
    assert 0 in r.mask and r.reply == "7" and r.correct and r.reward == 1.0
    assert [x.role for x in r.messages] == ["assistant", "tool", "assistant"]
    # a call the token limit cuts before its end-of-turn token still runs; the template's
    # end-of-turn token is inserted (not the model's), and the ids are the same
    n_call = mask[len(prompt) :].index(0)  # the call through its end-of-turn token
    params = SamplingParams(temperature=0, max_tokens=n_call - 1)
    (cut,) = sample_rollouts(m, chat_tok, fmt, [task], params)
    assert cut.ids == script and cut.correct and cut.finish == "stop"
    assert cut.mask[n_call - 1] == 0 and cut.mask[: n_call - 1] == [1] * (n_call - 1)


# --- the loss ---


def test_advantages_and_loss_equal_a_naive_token_loop() -> None:
    assert group_advantages([1, 0, 0, 1, 1, 1], 3) == pytest.approx(
        [2 / 3, -1 / 3, -1 / 3, 0, 0, 0]
    )
    g = torch.Generator().manual_seed(0)
    B, T, eps = 3, 5, 0.2
    logp = (torch.randn(B, T, generator=g) - 2).requires_grad_(True)
    old = logp.detach() + torch.randn(B, T, generator=g) * 0.3
    ref = logp.detach() + torch.randn(B, T, generator=g) * 0.1
    adv = torch.tensor([0.5, -1.0, 0.25])
    mask = torch.rand(B, T, generator=g) > 0.3
    loss, n_clipped, kl = policy_loss(logp, old, adv, mask, eps, ref, kl_coef=0.1)
    want, want_kl, clipped = 0.0, 0.0, 0
    for b in range(B):
        for t in range(T):
            if not mask[b, t]:
                continue
            rho = float(torch.exp(logp[b, t] - old[b, t]).detach())
            a = float(adv[b])
            want -= min(rho * a, min(max(rho, 1 - eps), 1 + eps) * a)
            d = float(ref[b, t] - logp[b, t].detach())
            k3 = torch.exp(torch.tensor(d)).item() - d - 1
            want += 0.1 * k3
            want_kl += k3
            clipped += not (1 - eps <= rho <= 1 + eps)
    assert float(loss.detach()) == pytest.approx(want, rel=1e-5)
    assert float(kl) == pytest.approx(want_kl, rel=1e-5) and int(n_clipped) == clipped


def test_one_epoch_is_reinforce_and_clipping_stops_the_gradient() -> None:
    logp = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    adv, mask = torch.tensor([2.0]), torch.ones(1, 2, dtype=torch.bool)
    loss, _, _ = policy_loss(logp, logp.detach(), adv, mask, 0.2)  # ratio 1: -A * grad logp
    loss.backward()
    assert logp.grad.tolist() == [[-2.0, -2.0]]
    # ratio 1.5 with A > 0 and ratio 0.5 with A < 0: clipped, no gradient; inside: gradient
    logp = torch.tensor([[0.0, 0.0, 0.0]], requires_grad=True)
    old = torch.log(torch.tensor([[1 / 1.5, 1 / 1.1, 1.0]]))
    for a, want in ((1.0, [0.0, -1.1, -1.0]), (-1.0, [1.5, 1.1, 1.0])):
        logp.grad = None
        policy_loss(logp, old, torch.tensor([a]), torch.ones(1, 3, dtype=torch.bool), 0.2)[
            0
        ].backward()
        assert logp.grad[0].tolist() == pytest.approx(want)
    old = torch.log(torch.tensor([[2.0, 1.0, 1.0]]))  # ratio 0.5, A < 0: clipped at 0.8
    logp.grad = None
    policy_loss(logp, old, torch.tensor([-1.0]), torch.ones(1, 3, dtype=torch.bool), 0.2)[
        0
    ].backward()
    assert logp.grad[0].tolist() == pytest.approx([0.0, 1.0, 1.0])


def test_the_random_reward_is_a_seeded_fair_coin() -> None:
    a = coin_rewards(3, 7, 400)
    assert a == coin_rewards(3, 7, 400) and a != coin_rewards(3, 8, 400)
    assert set(a) == {0.0, 1.0} and 0.4 < sum(a) / len(a) < 0.6


# --- runs ---


@pytest.fixture(scope="module")
def base_model(chat_tok, tmp_path_factory):
    from twofiles.artifact import save_model

    path = tmp_path_factory.mktemp("base") / "base.safetensors"
    save_model(path, _tiny(chat_tok.vocab_size, max_seq_len=128), chat_tok)
    return path


def _e_tasks(n: int, split: str) -> list[VerifiableTask]:
    # right when the one-token reply has an "e" in it: about a quarter of the tiny model's
    # vocabulary does, so groups carry signal from the start and the model can learn it at once
    return [
        VerifiableTask(f"e:{split}:{i}", "e", f"line {i}", "", "e", lambda r: "e" in r, split)
        for i in range(n)
    ]


def _cfg(base, out, **kw):
    from twofiles.optim import OptimConfig
    from twofiles.train.rl import RLConfig

    opts = dict(
        model=str(base),
        out=str(out),
        prompts=4,
        group=8,
        max_tokens=1,
        max_rounds=1,
        eval_tasks=8,
        grad_accum=2,
        max_steps=12,
        checkpoint_seconds=0,
        progress=False,
        threads=1,
        optim=OptimConfig(
            optimizer="adamw",
            lr=3e-2,
            embed_lr=None,
            weight_decay=0.0,
            schedule="constant",
            warmup_steps=0,
            grad_clip=1.0,
        ),
    )
    opts.update(kw)
    return RLConfig(**opts)


@pytest.mark.slow
def test_rl_raises_the_reward_on_a_learnable_task_and_the_coin_does_not(
    base_model, tmp_path
) -> None:
    from twofiles.train.rl import rl

    tasks = (_e_tasks(16, "train"), _e_tasks(8, "val"))
    res = rl(_cfg(base_model, tmp_path / "v"), tasks)
    recs = [json.loads(x) for x in (tmp_path / "v" / "metrics.jsonl").read_text().splitlines()]
    rewards = [r["reward"] for r in recs if "reward" in r]
    assert sum(rewards[-3:]) / 3 > sum(rewards[:3]) / 3 + 0.3, rewards
    assert res.pass1_after >= res.pass1_before
    ctrl = rl(_cfg(base_model, tmp_path / "c", reward="random", max_steps=6), tasks)
    crecs = [json.loads(x) for x in (tmp_path / "c" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["accuracy"] < 0.8 for r in crecs if "accuracy" in r)
    assert ctrl.reward == "random" and (tmp_path / "v" / "rl.png").stat().st_size > 0
    for r in recs:
        if "reward" in r:
            assert 0 <= r["frac_zero_std"] <= 1 and r["completion_len"] == 1
            assert r["entropy"] is None or r["entropy"] > 0  # None: no group carried signal


def test_rl_resumes_exactly_while_a_batch_is_reused(base_model, tmp_path) -> None:
    from safetensors.torch import load_file

    from twofiles.train.rl import rl

    tasks = (_e_tasks(16, "train"), _e_tasks(4, "val"))
    kw = dict(ppo_epochs=2, lora_rank=2, kl_coef=0.05, max_steps=3, prompts=2, group=4)
    rl(_cfg(base_model, tmp_path / "a", **kw), tasks)
    rl(_cfg(base_model, tmp_path / "b", **{**kw, "max_steps": 1}), tasks)  # stops mid-batch
    rl(_cfg(base_model, tmp_path / "b", **kw, resume=True), tasks)
    a = load_file(tmp_path / "a" / "adapters.safetensors")
    b = load_file(tmp_path / "b" / "adapters.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    recs = [json.loads(x) for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in recs if "reward" in r]
    assert steps[1]["clip_frac"] is not None and steps[1]["kl"] is not None
    assert steps[0]["reward"] == steps[1]["reward"]  # step 2 reuses step 1's batch


def test_rl_verb_end_to_end_with_json(base_model, tmp_path) -> None:
    out = tmp_path / "run"
    cmd = [
        sys.executable, "-m", "twofiles", "rl", str(base_model), "--tasks", "arithmetic",
        "--out", str(out), "--max-steps", "2", "--prompts", "2", "--group", "2",
        "--max-tokens", "3", "--eval-tasks", "3", "--grad-accum", "1", "--lora-rank", "2",
        "--no-progress", "--json",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    summary = json.loads(p.stdout.strip().splitlines()[-1])
    assert summary["steps"] == 2 and summary["rollouts"] == 8 and summary["eval_tasks"] == 3
    for f in ("adapters.safetensors", "metrics.jsonl", "rl.png", "report.md", "config.json"):
        assert (out / f).is_file(), f
    assert "held-out pass@1" in p.stdout
    bad = subprocess.run(
        cmd[:5] + ["--out", str(tmp_path / "x"), "--reward", "coin", "--no-progress"],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert bad.returncode == 2 and "reward='coin'" in bad.stderr
