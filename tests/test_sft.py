"""Supervised finetuning: the built-in mix (deterministic, exact checkers, disjoint splits), the
loss mask, packing without cross-attention, LoRA, and the sft loop and verb end to end."""

from __future__ import annotations

import pytest

from twofiles.data import skills
from twofiles.data.skills import MIX_SIZES, SKILL_KINDS, SkillTask, check, skill_tasks

# --- the built-in mix ---


def test_skill_tasks_are_deterministic_and_seeded() -> None:
    for kind in SKILL_KINDS:
        a = skill_tasks(kind, "train", 20, seed=3)
        assert a == skill_tasks(kind, "train", 20, seed=3), kind
        assert len(a) == 20 and all(t.kind == kind for t in a)
    assert skill_tasks("arithmetic", "train", 20, seed=3) != skill_tasks(
        "arithmetic", "train", 20, seed=4
    )


def test_train_and_held_out_tasks_never_overlap_whatever_the_seed() -> None:
    for kind in SKILL_KINDS:
        train = {
            t.prompt
            for s in (0, 1)
            for t in skill_tasks(kind, "train", MIX_SIZES["train"][kind], seed=s)
        }
        val = {
            t.prompt
            for s in (0, 1)
            for t in skill_tasks(kind, "val", MIX_SIZES["val"][kind], seed=s)
        }
        assert train and val and not train & val, kind
    # held-out words are never trained on with the same skill
    for kind, word in (
        ("spelling", lambda t: t.answer.replace("-", "")),
        ("reverse", lambda t: t.answer[::-1]),
    ):
        trained = {word(t) for t in skill_tasks(kind, "train", 200, seed=0)}
        assert not trained & {word(t) for t in skill_tasks(kind, "val", 25, seed=0)}, kind
    d_train = {d.lines[0].lower() for d in skills.chat_dialogs("train")}
    d_val = {d.lines[0].lower() for d in skills.chat_dialogs("val")}
    assert d_train and d_val and not d_train & d_val


def test_every_demonstration_passes_its_own_checker() -> None:
    for split in ("train", "val"):
        for t in skills.builtin_tasks(split, seed=0):
            assert check(t, t.reply), t


def test_arithmetic_answers_are_the_true_values() -> None:
    for t in skill_tasks("arithmetic", "train", 100, seed=0):
        assert set(t.expression) <= set("0123456789+-*() ")
        assert int(t.answer) == eval(t.expression)
        assert t.expression in t.prompt


def test_checkers_on_known_replies() -> None:
    arith = SkillTask("arithmetic", "What is 12 * 7?", "84", expression="12 * 7")
    assert check(arith, "12 * 7 = 84.")
    assert check(arith, "The answer is 84")
    assert not check(arith, "84 is not it, it is 85")  # the last number counts
    assert not check(arith, "I don't know")
    assert check(SkillTask("arithmetic", "", "-37"), "58 - 95 = -37.")
    assert check(SkillTask("arithmetic", "", "1200"), "that makes 1,200.")
    count = SkillTask("count_letters", "", "3")
    assert check(count, "s-t-r-a-w-b-e-r-r-y: the letter r appears 3 times.")
    assert not check(count, "It appears 2 times.")
    spell = SkillTask("spelling", "", "c-a-t")
    assert (
        check(spell, "c-a-t") and check(spell, "It is spelled C, A, T.") and check(spell, "c a t")
    )
    assert not check(spell, "cat") and not check(spell, "c-a-t-s") and not check(spell, "c-a-r")
    rev = SkillTask("reverse", "", "nedrag")
    assert check(rev, "nedrag") and check(rev, "Backwards: nedrag.")
    assert not check(rev, "garden") and not check(rev, "nedrags")
    up = SkillTask("uppercase", "", "GOOD MORNING")
    assert (
        check(up, "GOOD MORNING")
        and not check(up, "good morning")
        and not check(up, "GOOD MORNINGS")
    )
    ident = SkillTask("identity", "", "twofiles")
    assert check(ident, "My name is Twofiles.") and not check(ident, "I am ChatterBot.")


def test_last_number_normalises() -> None:
    assert skills.last_number("a 1,234.50 b") == "1234.5"
    assert skills.last_number("3.0") == "3"
    assert skills.last_number("none") is None


def test_identity_follows_the_model_it_describes() -> None:
    who = skills.ModelIdentity(name="smol", trained_on="the web", trained_on_keyword="web")
    tasks = skill_tasks("identity", "train", 60, seed=0, who=who)
    assert {t.answer for t in tasks} == {"smol", "web", "calculator"}
    assert all(check(t, t.reply) for t in tasks)


def test_chatterbot_dialogs_carry_provenance_and_skip_the_bot_persona() -> None:
    dialogs = skills.chatterbot_dialogs()
    assert len(dialogs) > 500
    assert all(d.source.startswith("chatterbot-corpus==") and len(d.lines) >= 2 for d in dialogs)
    files = {d.source.split("/")[-1].split("#")[0] for d in dialogs}
    assert "greetings.yml" in files and not files & set(skills.CHATTERBOT_EXCLUDED)
    assert len({d.lines for d in dialogs}) == len(dialogs)
    assert skills.provenance()["chat"]["version"] == skills.CHATTERBOT_VERSION


def test_builtin_mix_holds_every_kind_as_messages() -> None:
    sizes = {"chat": 5, **{k: 3 for k in SKILL_KINDS}}
    mix = skills.builtin_mix("train", seed=0, sizes=sizes)
    assert len(mix) == 5 + 3 * len(SKILL_KINDS)
    assert mix == skills.builtin_mix("train", seed=0, sizes=sizes)
    for conv in mix:
        assert conv[0].role == "user" and conv[-1].role == "assistant"
    tool_convs = [c for c in mix if any(m.role == "tool" for m in c)]
    assert len(tool_convs) == 3
    call = tool_convs[0][1].tool_calls[0]
    assert call.name == "calculator" and call.id == tool_convs[0][2].tool_call_id
    assert tool_convs[0][2].content == str(eval(call.arguments["expression"]))


# --- LoRA ---


def _tiny(vocab: int = 64, seed: int = 0, tie: bool = False):
    import torch

    from twofiles.model import ModelConfig, Transformer

    cfg = ModelConfig(
        vocab_size=vocab,
        dim=32,
        n_layers=2,
        n_heads=4,
        n_kv_heads=2,
        hidden_dim=64,
        max_seq_len=64,
        tie_embeddings=tie,
    )
    m = Transformer(cfg)
    m.init_weights(seed)
    with torch.no_grad():  # init_weights zeroes o_proj/down_proj: give every layer a real effect
        for p in m.parameters():
            if p.ndim == 2:
                p.add_(
                    torch.randn(p.shape, generator=torch.Generator().manual_seed(seed + p.numel()))
                    * 0.05
                )
    return m


def test_zero_initialised_adapters_leave_outputs_unchanged_and_only_adapters_train() -> None:
    import torch

    from twofiles.lora import (
        ALL_TARGETS,
        LoRAConfig,
        apply_lora,
        lora_layers,
        trainable_parameters,
    )

    m = _tiny()
    x = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(0))
    before = m(x)
    names = apply_lora(m, LoRAConfig(rank=4, alpha=8))
    assert len(names) == 2 * len(ALL_TARGETS)
    assert torch.equal(m(x), before)
    layers = lora_layers(m)
    assert trainable_parameters(m) == sum(
        lin.lora_A.numel() + lin.lora_B.numel() for lin in layers.values()
    )
    m(x, x).backward()
    assert all(p.grad is None for n, p in m.named_parameters() if "lora_" not in n)
    assert all(
        lin.lora_B.grad is not None and lin.lora_B.grad.abs().sum() > 0 for lin in layers.values()
    )


def test_merged_adapters_give_the_same_logits_as_unmerged() -> None:
    import torch

    from twofiles.lora import LoRAConfig, apply_lora, lora_layers, merge_lora

    for tie in (False, True):
        m = _tiny(tie=tie)
        base_keys = set(m.state_dict())
        apply_lora(m, LoRAConfig(rank=4, alpha=8, targets=["q_proj", "v_proj", "down_proj"]))
        with torch.no_grad():
            for layer in lora_layers(m).values():
                layer.lora_B.normal_(0, 0.1)
        x = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(1))
        adapted = m(x)
        assert merge_lora(m) == 6
        assert not lora_layers(m) and set(m.state_dict()) == base_keys
        torch.testing.assert_close(m(x), adapted, rtol=1e-5, atol=1e-5)


def test_saved_adapters_load_back_onto_the_base(tmp_path) -> None:
    import torch

    from twofiles.artifact import save_model
    from twofiles.formats.resolve import resolve_model
    from twofiles.lora import (
        LoRAConfig,
        apply_lora,
        load_adapters,
        lora_layers,
        save_adapters,
    )
    from twofiles.tokenizer import Tokenizer

    tok = Tokenizer.train(["hello world, a tiny corpus for a tiny tokenizer"] * 4, 300)
    base = _tiny(vocab=tok.vocab_size)
    base_path = save_model(tmp_path / "base.safetensors", base, tok)
    m = resolve_model(str(base_path)).model
    cfg = LoRAConfig(rank=2, alpha=4)
    apply_lora(m, cfg)
    with torch.no_grad():
        for layer in lora_layers(m).values():
            layer.lora_B.normal_(0, 0.1)
    x = torch.randint(0, tok.vocab_size, (1, 10), generator=torch.Generator().manual_seed(2))
    want = m(x)
    path = save_adapters(
        tmp_path / "adapters.safetensors",
        m,
        cfg,
        base=str(base_path),
        chat_template="{{ messages }}",
    )
    assert path.stat().st_size < base_path.stat().st_size / 2
    fresh = resolve_model(str(base_path)).model
    load_adapters(fresh, path)
    torch.testing.assert_close(fresh(x), want)
    loaded = resolve_model(
        str(path)
    )  # any verb can take the adapters file as MODEL: base + adapters, merged
    assert not lora_layers(loaded.model)
    torch.testing.assert_close(loaded.model(x), want, rtol=1e-5, atol=1e-5)
    assert loaded.chat_template == "{{ messages }}"
    other = _tiny(vocab=tok.vocab_size)
    other.model.layers = other.model.layers[
        :1
    ]  # a different architecture: refused, naming the file
    from twofiles.errors import BadInputError

    with pytest.raises(BadInputError, match="adapters.safetensors"):
        load_adapters(other, path)


# --- the loss mask and packing ---


@pytest.fixture(scope="module")
def chat_tok():
    """A real byte-level BPE tokenizer with twofiles' chat tokens, trained on a little Shakespeare."""
    from twofiles.data.builtin import builtin_text
    from twofiles.tokenizer import Tokenizer

    return Tokenizer.train([builtin_text("train")[:200_000]], 400)


def _convs(n: int = 6):
    sizes = {"chat": n, "arithmetic": n, "repeat": n}
    return skills.builtin_mix("train", seed=0, sizes=sizes)


def test_sft_loss_counts_only_assistant_tokens_like_a_naive_masked_cross_entropy(chat_tok) -> None:
    import torch
    import torch.nn.functional as F

    from twofiles.chat import ChatFormat
    from twofiles.data.packing import collate, make_example
    from twofiles.runtime import setup
    from twofiles.train.sft import masked_loss_sum

    fmt = ChatFormat.builtin_for(chat_tok)
    m = _tiny(vocab=chat_tok.vocab_size)
    conv = next(c for c in _convs() if any(x.role == "tool" for x in c))
    ids, mask = fmt.render(conv)
    ids, mask = ids[:64], mask[:64]
    assert 0 < sum(mask) < len(mask)
    ex = make_example(ids, mask, 63)
    got = masked_loss_sum(m, collate([ex], [[0]], 63, 1), setup("cpu", "fp32")) / ex.n_targets
    # naive: full-sequence logits, cross-entropy at every position, keep those whose target is an assistant token
    logits = m(torch.tensor([ids[:-1]]))[0]
    ce = F.cross_entropy(logits, torch.tensor(ids[1:]), reduction="none")
    keep = torch.tensor(mask[1:], dtype=torch.bool)
    torch.testing.assert_close(got, ce[keep].mean())
    assert ex.n_targets == int(keep.sum())
    # the text the loss sees is exactly the assistant's (tool call, end of turn, final answer)
    learned = chat_tok.decode([t for t in ex.targets.tolist() if t >= 0])
    assert (
        "calculator" in learned
        and conv[0].content not in learned
        and conv[2].content + "<|tool_result_end|>" not in learned
    )


def test_packed_rows_give_each_conversation_the_same_per_token_loss_as_alone(chat_tok) -> None:
    import torch

    from twofiles.chat import ChatFormat
    from twofiles.data.packing import collate, make_example, pack

    fmt = ChatFormat.builtin_for(chat_tok)
    m = _tiny(vocab=chat_tok.vocab_size)
    examples = [make_example(*fmt.render(c), 60) for c in _convs()]
    examples = [e for e in examples if e is not None]
    rows = pack([len(e) for e in examples], range(len(examples)), 64)
    assert any(len(r) >= 2 for r in rows), "nothing was packed"
    batch = collate(examples, rows, 64, 1)
    assert int(((batch.positions == 0) & (batch.segments >= 0)).sum()) == len(
        examples
    )  # positions restart per conversation
    packed = m(
        batch.inputs,
        batch.targets,
        positions=batch.positions,
        attn_mask=batch.attn_mask(),
        reduction="none",
    )
    unmasked = m(
        batch.inputs, batch.targets, reduction="none"
    )  # plain causal attention leaks across conversations
    leaked = False
    for r, row in enumerate(rows):
        at = 0
        for i in row:
            e = examples[i]
            alone = m(
                torch.from_numpy(e.inputs)[None],
                torch.from_numpy(e.targets)[None],
                reduction="none",
            )[0]
            torch.testing.assert_close(packed[r, at : at + len(e)], alone, rtol=1e-4, atol=1e-5)
            leaked |= at > 0 and not torch.allclose(
                unmasked[r, at : at + len(e)], alone, rtol=1e-4, atol=1e-5
            )
            at += len(e)
    assert leaked  # the comparison can fail: without the mask the numbers differ


def test_packed_loader_covers_each_example_once_per_epoch_and_resumes_exactly() -> None:
    import json

    import numpy as np

    from twofiles.data.packing import Example, PackedLoader

    rng = np.random.default_rng(0)
    examples = [
        Example(np.full(n, i), np.full(n, i)) for i, n in enumerate(rng.integers(3, 30, 40))
    ]
    a = PackedLoader(examples, 3, 32, pad_id=-7, seed=1)
    rows = a.rows_per_epoch()
    seen = []
    for _ in range(math_ceil(rows, 3)):
        b = a.next_batch()
        assert b.inputs.shape[1] <= 32
        for r in range(b.inputs.shape[0]):
            for s in b.segments[r].unique().tolist():
                if s >= 0:
                    seen.append(int(b.inputs[r][b.segments[r] == s][0]))
    assert sorted(seen) == list(range(40))
    b2 = PackedLoader(examples, 3, 32, pad_id=-7, seed=1)
    b2.load_state_dict(json.loads(json.dumps(a.state_dict())))
    for _ in range(5):  # across the epoch boundary too
        x, y = a.next_batch(), b2.next_batch()
        assert all(
            np.array_equal(getattr(x, k).numpy(), getattr(y, k).numpy())
            for k in ("inputs", "targets", "positions", "segments")
        )


def math_ceil(a: int, b: int) -> int:
    return -(-a // b)


# --- the loop and the verb, end to end ---


@pytest.fixture(scope="module")
def base_model(chat_tok, tmp_path_factory):
    """A tiny base model file that says it was pretrained on the built-in Shakespeare."""
    from twofiles.artifact import save_model

    path = tmp_path_factory.mktemp("base") / "base.safetensors"
    save_model(
        path,
        _tiny(vocab=chat_tok.vocab_size),
        chat_tok,
        provenance={"stage": "pretrain", "corpus": "builtin:shakespeare"},
    )
    return path


@pytest.fixture(scope="module")
def convs_jsonl(tmp_path_factory):
    import json

    from twofiles import chat

    sizes = {"chat": 30, "arithmetic": 30, "repeat": 20, "identity": 20}
    path = tmp_path_factory.mktemp("convs") / "convs.jsonl"
    path.write_text(
        "".join(
            json.dumps({"messages": chat.messages_to_dicts(c)}) + "\n"
            for c in skills.builtin_mix("train", 0, sizes=sizes)
        )
    )
    return path


def _metrics(run) -> list[dict]:
    import json

    timing = {"time", "tok_s", "eval_seconds"}
    return [
        {k: v for k, v in json.loads(ln).items() if k not in timing}
        for ln in (run / "metrics.jsonl").read_text().splitlines()
    ]


def test_a_tiny_sft_run_lowers_held_out_loss_and_resumes_exactly(
    base_model, convs_jsonl, tmp_path
) -> None:
    import shutil

    from safetensors.torch import load_file

    from twofiles.train.sft import SFTConfig, sft

    def cfg(out, resume=False):
        c = SFTConfig(
            model=str(base_model),
            data=str(convs_jsonl),
            out=str(out),
            max_steps=8,
            checkpoint_interval=4,
            batch_size=4,
            seq_len=128,
            skill_tasks=1,
            skill_max_tokens=4,
            progress=False,
            resume=resume,
        )
        c.optim.lr, c.optim.warmup_steps = 1e-2, 2
        return c

    ref = tmp_path / "ref"
    res = sft(cfg(ref))
    assert res.val_loss < res.val_loss_before - 0.5
    assert res.steps == 8 and res.skills_before is not None and res.skills_after is not None
    # one report writer: rebuilt from the run's own records, it keeps every section the run wrote
    from twofiles.eval.report import write_report

    report = (ref / "report.md").read_text()
    assert "## Held-out skills" in report and "## Replies after finetuning" in report
    (ref / "report.md").unlink()
    write_report(ref)
    assert (ref / "report.md").read_text() == report
    # an interrupted run: its step-8 checkpoint and model never written, metrics logged past step 4
    run = tmp_path / "run"
    shutil.copytree(ref, run)
    (run / "checkpoints" / "step_0000008.safetensors").unlink()
    (run / "model.safetensors").unlink()
    with pytest.raises(Exception, match="--resume"):
        sft(cfg(run))
    again = sft(cfg(run, resume=True))
    assert _metrics(run) == _metrics(ref)  # every loss and evaluation, once, bit for bit
    assert again.val_loss == res.val_loss
    a, b = load_file(ref / "model.safetensors"), load_file(run / "model.safetensors")
    assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)


def test_ctrl_c_stops_sft_with_a_checkpoint_and_resume_finishes_exactly(
    base_model, convs_jsonl, tmp_path
) -> None:
    import os
    import signal
    import threading
    import time

    from safetensors.torch import load_file

    from twofiles.train.runctl import RunInterrupted
    from twofiles.train.sft import SFTConfig, sft

    def cfg(out, resume=False):
        return SFTConfig(
            model=str(base_model),
            data=str(convs_jsonl),
            out=str(out),
            max_steps=60,
            batch_size=2,
            seq_len=64,
            skill_tasks=0,
            max_val=4,
            threads=1,
            progress=False,
            resume=resume,
        )

    sft(cfg(tmp_path / "ref"))
    run = tmp_path / "run"

    def interrupt() -> None:  # Ctrl-C once training has begun
        metrics, deadline = run / "metrics.jsonl", time.time() + 60
        while time.time() < deadline and not (
            metrics.exists() and metrics.read_text().count('"loss"') >= 2
        ):
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGINT)

    t = threading.Thread(target=interrupt)
    t.start()
    with pytest.raises(RunInterrupted) as e:
        sft(cfg(run))
    t.join()
    assert e.value.exit_code == 130 and 0 < e.value.step < 60
    assert [p.name for p in (run / "checkpoints").iterdir()] == [
        f"step_{e.value.step:07d}.safetensors"
    ]
    assert not (run / "model.safetensors").exists()
    sft(cfg(run, resume=True))
    assert _metrics(run) == _metrics(tmp_path / "ref")
    a, b = load_file(tmp_path / "ref" / "model.safetensors"), load_file(run / "model.safetensors")
    assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)


@pytest.mark.slow
def test_sft_verb_end_to_end_full_and_lora(base_model, convs_jsonl, tmp_path) -> None:
    import json
    import os
    import subprocess
    import sys

    from twofiles import chat
    from twofiles.formats.resolve import resolve_model

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = tmp_path / "full"
    cmd = [
        sys.executable,
        "-m",
        "twofiles",
        "sft",
        str(base_model),
        "--out",
        str(out),
        "--max-steps",
        "3",
        "--batch-size",
        "2",
        "--seq-len",
        "96",
        "--skill-tasks",
        "1",
        "--no-progress",
        "--json",
    ]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    summary = json.loads(p.stdout.strip().splitlines()[-1])
    assert summary["steps"] == 3 and summary["skills_after"]["tasks"] == len(SKILL_KINDS)
    for name in (
        "config.json",
        "metrics.jsonl",
        "loss.png",
        "report.md",
        "skills.jsonl",
        "model.safetensors",
    ):
        assert (out / name).is_file(), name
    assert (out / "loss.png").read_bytes()[:4] == b"\x89PNG"
    loaded = resolve_model(summary["model_path"])
    assert (
        loaded.chat_template == chat.BUILTIN_TEMPLATE
    )  # the model file carries the template it learned
    assert loaded.provenance["stage"] == "sft" and loaded.provenance["data"] == "builtin"
    assert (
        loaded.provenance["tools_in_prompt"] is False
    )  # chat prompts it as it was trained: no tool list
    report = (out / "report.md").read_text()
    assert "held-out skill" in report
    p = subprocess.run(
        [sys.executable, "-m", "twofiles", "report", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert p.returncode == 0, p.stderr
    assert (out / "report.md").read_text() == report  # `twofiles report` destroys nothing

    lora = tmp_path / "lora"
    cmd = [
        sys.executable,
        "-m",
        "twofiles",
        "sft",
        str(base_model),
        "--data",
        str(convs_jsonl),
        "--out",
        str(lora),
        "--lora-rank",
        "2",
        "--max-steps",
        "2",
        "--batch-size",
        "2",
        "--seq-len",
        "96",
        "--skill-tasks",
        "0",
        "--no-progress",
        "--json",
    ]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    summary = json.loads(p.stdout.strip().splitlines()[-1])
    assert (
        summary["model_path"].endswith("adapters.safetensors")
        and summary["trainable_params"] < summary["params"] / 5
    )
    assert resolve_model(summary["model_path"]).chat_template == chat.BUILTIN_TEMPLATE

    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n{"messages": [{"role": "wizard"}]}\n'
    )
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "twofiles",
            "sft",
            str(base_model),
            "--data",
            str(bad),
            "--out",
            str(tmp_path / "bad"),
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert p.returncode == 2 and "bad.jsonl:2" in p.stderr and "Traceback" not in p.stderr


# The SFT loop's numbers, pinned: full finetuning of the tiny base model, 6 steps, fp32, 1 thread
# (tolerance as for pretraining's golden losses in test_train.py).
GOLDEN_SFT = {1: 6.002963, 3: 5.996953, 6: 5.965948}
GOLDEN_SFT_VAL = (6.025442, 5.980660)  # held-out loss before, after


def test_golden_sft_losses(base_model, convs_jsonl, tmp_path) -> None:
    import json

    from twofiles.train.sft import SFTConfig, sft

    cfg = SFTConfig(
        model=str(base_model),
        data=str(convs_jsonl),
        out=str(tmp_path / "run"),
        max_steps=6,
        batch_size=4,
        seq_len=64,
        skill_tasks=0,
        max_val=8,
        threads=1,
        device="cpu",
        dtype="fp32",
        progress=False,
    )
    res = sft(cfg)
    got = {
        r["step"]: r["loss"]
        for r in map(json.loads, (tmp_path / "run" / "metrics.jsonl").read_text().splitlines())
        if "loss" in r
    }
    assert res.steps == 6 and sorted(got) == list(range(1, 7))
    for step, want in GOLDEN_SFT.items():
        assert got[step] == pytest.approx(want, rel=1e-4), step
    assert (res.val_loss_before, res.val_loss) == pytest.approx(GOLDEN_SFT_VAL, rel=1e-4)


def test_resume_refuses_flags_that_would_change_the_run(tmp_path, capsys) -> None:
    import json

    from twofiles.cli import main
    from twofiles.train.sft import SFTConfig

    run = tmp_path / "run"
    run.mkdir()
    saved = SFTConfig(model="base.safetensors", data="convs.jsonl", out=str(run), max_steps=10)
    (run / "config.json").write_text(json.dumps(saved.to_dict()))
    args = ["sft", "base.safetensors", "--out", str(run), "--resume", "--no-progress"]
    assert main([*args, "--lr", "0.5", "--lora-rank", "4", "--data", "other.jsonl"]) == 2
    err = capsys.readouterr().err
    assert "--lr (the run has 0.001, given 0.5)" in err
    assert "--lora-rank (the run has 0, given 4)" in err and "other.jsonl" in err
    # the same values, and run-control flags (a longer run, threads), are not conflicts: the
    # resume goes on, here to find that the run has no checkpoint yet
    assert main([*args, "--data", "convs.jsonl", "--max-steps", "20", "--threads", "1"]) == 2
    err = capsys.readouterr().err
    assert "no checkpoint" in err and "would change" not in err
