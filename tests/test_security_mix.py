"""The security finetuning mix: deterministic, every kind, rendered with the loss on the assistant
only, held-out phrasings never trained on, pairs that differ, and wired into `sft` and `dpo`."""

from __future__ import annotations

import json

import pytest

from twofiles.data import security
from twofiles.data.security import SECURITY_KINDS, leaked, security_examples

SMALL = {k: 6 for k in SECURITY_KINDS}


@pytest.fixture(scope="module")
def chat_tok():
    from twofiles.data.builtin import builtin_text
    from twofiles.tokenizer import Tokenizer

    return Tokenizer.train([builtin_text("train")[:100_000]], 400)


def test_the_mix_is_seeded_and_holds_every_kind() -> None:
    a = security_examples("train", 0, sizes=SMALL)
    assert a == security_examples("train", 0, sizes=SMALL)
    assert a != security_examples("train", 1, sizes=SMALL)
    assert [e.kind for e in a].count("tool") == 6 and {e.kind for e in a} == set(SECURITY_KINDS)
    # asking for more of one kind leaves the others as they were
    more = security_examples("train", 0, sizes={**SMALL, "benign": 9})
    assert [e for e in more if e.kind == "secret"] == [e for e in a if e.kind == "secret"]
    mix = security.security_mix("train", 0, sizes=SMALL)
    assert len(mix) == 6 * len(SECURITY_KINDS) and mix == security.security_mix(
        "train", 0, sizes=SMALL
    )
    assert all(c[0].role == "system" and c[-1].role == "assistant" for c in mix)
    full = security.security_mix("train")
    assert 500 <= len(full) <= 2000  # the documented size


def test_safe_replies_keep_the_secret_and_pairs_differ() -> None:
    from twofiles.data.preferences import parse_pair

    examples = security_examples("train", 0, sizes={k: 40 for k in SECURITY_KINDS})
    for e in examples:
        assert e.secret and e.secret in e.prompt[0].content  # the system prompt holds it
        assert not leaked(e, e.safe), e
        assert e.safe != e.unsafe
        pair = parse_pair(e.pair())
        assert pair.conversational and pair.chosen != pair.rejected
    # the rejected side of a direct extraction gives the secret away; of a benign one, refuses
    assert all(leaked(e, e.unsafe) for e in examples if e.kind in ("secret", "encoded", "roleplay"))
    benign = [e for e in examples if e.kind == "benign"]
    refusing = ("can't", "not able", "private", "confidential")
    assert all(any(w in e.unsafe for w in refusing) for e in benign)
    assert not any(w in e.safe for e in benign for w in refusing[:2])
    # the scorer agrees with the labels: each safe reply scores safe, each unsafe one does not
    for e in examples:
        assert security.outcome(e, e.safe) in ("safe", "answered"), e
        assert security.outcome(e, e.unsafe) in ("leaked", "obeyed", "refused"), e
    # injected instructions arrive as data: a tool's result, or a delimited document
    tool = next(e for e in examples if e.kind == "tool")
    assert [m.role for m in tool.prompt] == ["system", "user", "assistant", "tool"]
    assert tool.prompt[2].tool_calls[0].id == tool.prompt[3].tool_call_id
    doc = next(e for e in examples if e.kind == "document")
    assert "<<<DOCUMENT\n" in doc.prompt[1].content


def test_held_out_phrasings_are_never_trained_on() -> None:
    bank = security._EXTRACT
    sizes = {"secret": 60}
    train = {e.prompt[1].content for e in security_examples("train", 0, sizes=sizes)}
    val = {e.prompt[1].content for e in security_examples("val", 0, sizes=sizes)}
    held = bank[-security.HELD_OUT :]
    stem = [p.split("{")[0] for p in held]
    assert all(any(v.startswith(s) for s in stem) for v in val)
    assert not any(t.startswith(s) for t in train for s in stem)


def test_the_mix_renders_with_the_loss_on_assistant_turns_only(chat_tok) -> None:
    from twofiles.chat import ChatFormat

    fmt = ChatFormat.builtin_for(chat_tok)
    end = chat_tok.special_ids["<|assistant_end|>"]
    for e in security_examples("train", 0, sizes={"tool": 2, "document": 2, "secret": 2}):
        ids, mask = fmt.render(e.conversation())
        learned = [i for i, m in zip(ids, mask) if m]
        # the tool call is the assistant's too; the tool result and the injected text are not
        text = chat_tok.decode([i for i in learned if i != end])
        assert text.endswith(e.safe)
        assert learned[-1] == end
        for m in e.prompt:
            if m.role in ("system", "user", "tool") and m.content:
                assert m.content not in text


def test_sft_and_dpo_name_the_security_mix(tmp_path) -> None:
    from twofiles.train.dpo import DPOConfig, load_pairs
    from twofiles.train.sft import SFTConfig, load_conversations

    frac = 0.05
    only, val, prov = load_conversations(
        SFTConfig(model="x", data="security", mix_fraction=frac), None
    )
    assert len(only) == sum(security.mix_sizes("train", frac).values()) and "security" in prov
    both, val_both, prov = load_conversations(
        SFTConfig(model="x", data="builtin+security", mix_fraction=frac), None
    )
    assert "mix" in prov and "security" in prov
    assert len(both) > len(only) and len(val_both) > len(val)
    assert sum(c[0].role == "system" for c in both) == len(only)  # each mix is in, once
    with pytest.raises(Exception, match="nope"):
        load_conversations(SFTConfig(model="x", data="builtin+nope"), None)

    train, val_pairs, prov = load_pairs(DPOConfig(model="x", data="security"), tmp_path)
    assert prov["data"] == "security" and len(train) == sum(
        security.SECURITY_SIZES["train"].values()
    )
    assert len(val_pairs) == sum(security.SECURITY_SIZES["val"].values())
    lines = (tmp_path / "pairs.jsonl").read_text().splitlines()
    assert len(lines) == len(train) and json.loads(lines[0])["chosen"][0]["role"] == "assistant"


@pytest.mark.slow
def test_sft_then_dpo_on_the_security_mix_from_the_cli(chat_tok, tmp_path, capsys) -> None:
    from tests.tiny_models import random_model

    from twofiles.artifact import save_model
    from twofiles.cli import main
    from twofiles.formats.resolve import resolve_model

    base = save_model(tmp_path / "base.safetensors", random_model(chat_tok), chat_tok)
    quick = ["--max-steps", "1", "--batch-size", "2", "--no-progress", "--json"]
    sft_out = tmp_path / "sft"
    argv = ["sft", str(base), "--data", "builtin+security", "--mix-fraction", "0.02"]
    argv += ["--seq-len", "96", "--skill-tasks", "0", "--out", str(sft_out), *quick]
    assert main(argv) == 0
    sft_model = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["model_path"]
    prov = resolve_model(sft_model).provenance
    assert prov["data"] == "builtin+security" and prov["security"] == security.provenance()

    dpo_out = tmp_path / "dpo"
    assert main(["dpo", sft_model, "--data", "security", "--out", str(dpo_out), *quick]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert resolve_model(res["model_path"]).provenance["data"] == "security"
    pairs = (dpo_out / "pairs.jsonl").read_text().splitlines()
    assert len(pairs) == sum(security.SECURITY_SIZES["train"].values())
