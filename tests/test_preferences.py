"""Preference pairs (data/preferences.py) and the DPO-family losses (train/preference.py):
per-line validation, skip counts, rendering equal to SFT's loss mask, the feedback export read
back, the loss at step 0, and loss + gradients against a naive per-example implementation on a
Hugging Face Llama twin."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tiny_models import random_model, tiny_tokenizer
from twofiles.chat import ChatFormat, Message
from twofiles.data.preferences import read_preferences, render_pairs
from twofiles.errors import BadInputError
from twofiles.train.preference import dpo_loss, sequence_logps


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def fmt(tok):
    return ChatFormat.builtin_for(tok)


def write(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def bot(text: str) -> dict:
    return {"role": "assistant", "content": text}


GOOD = {"prompt": [user("to be?")], "chosen": [bot("or not")], "rejected": [bot("the question")]}


# ---------------------------------------------------------------- reading


@pytest.mark.parametrize(
    ("line", "field"),
    [
        ("{not json", "invalid JSON"),
        ({"prompt": "p", "chosen": "c"}, "rejected: missing"),
        ({"chosen": "c", "rejected": "r"}, "prompt: missing"),
        ({"prompt": "p", "chosen": ["c"], "rejected": "r"}, "chosen: must be a string"),
        ({**GOOD, "chosen": [user("hi")]}, "chosen[0].role: a completion holds assistant"),
        ({**GOOD, "rejected": [{"role": "bot", "content": "x"}]}, "rejected[0].role"),
        ({**GOOD, "prompt": [{"role": "user"}]}, "prompt[0].content: missing"),
        ({**GOOD, "rejected": "r"}, "rejected: must be a list"),
        ([1, 2], "expected an object"),
    ],
)
def test_a_bad_line_is_named_by_file_line_and_field(tmp_path, line, field) -> None:
    path = write(tmp_path / "p.jsonl", [GOOD, "", line])
    with pytest.raises(BadInputError) as e:
        read_preferences(path)
    assert str(e.value).startswith(f"{path}:3: ")
    assert field in str(e.value)


def test_the_three_forms_read(tmp_path) -> None:
    implicit = {
        "chosen": [user("to be?"), bot("or not")],
        "rejected": [user("to be?"), bot("the question")],
    }
    rows = [
        {"prompt": "to be?", "chosen": " or not", "rejected": " the question"},
        GOOD,
        {"messages": GOOD["prompt"], "chosen": GOOD["chosen"], "rejected": GOOD["rejected"]},
        implicit,
    ]
    std, conv, feedback_form, implicit_pair = read_preferences(write(tmp_path / "p.jsonl", rows))
    assert not std.conversational and std.prompt == "to be?"
    assert conv.prompt == [Message("user", "to be?")]
    assert conv.chosen == [Message("assistant", "or not")]
    assert feedback_form == implicit_pair == conv
    assert implicit_pair.where == f"{tmp_path / 'p.jsonl'}:4"


# ---------------------------------------------------------------- rendering


def test_completion_ids_are_the_tokens_sfts_loss_mask_selects(tmp_path, fmt) -> None:
    system = {"role": "system", "content": "be brief"}
    row = {"prompt": [system, user("to be?")], "chosen": [bot("or not")], "rejected": [bot("no")]}
    (pair,) = read_preferences(write(tmp_path / "p.jsonl", [row]))
    (r,), report = render_pairs([pair], fmt, max_len=256)
    assert report.n_skipped == 0 and report.truncated == 0
    for side, completion in (("chosen", r.chosen_ids), ("rejected", r.rejected_ids)):
        ids, mask = fmt.render([system, user("to be?"), *row[side]])
        assert ids[: len(r.prompt_ids)] == r.prompt_ids
        assert [i for i, m in zip(ids, mask, strict=True) if m] == completion
        assert completion[-1] in fmt.stop_token_ids  # the end-of-turn token is learned
    assert r.prompt_ids == fmt.prompt_ids([system, user("to be?")])


def test_a_completion_with_a_tool_call_learns_only_the_models_tokens(tmp_path, fmt) -> None:
    """What `twofiles pairs` writes when the calculator was called: the chosen completion is a
    tool call, its result and the answer. The completion's ids run through all of it, and its
    mask is SFT's loss mask there: the tool's result (and the template text around it) is
    context, never learned; DPO's targets skip it."""
    from twofiles.train.dpo import collate

    call = {
        "role": "assistant",
        "content": "",
        "tool_calls": [{"name": "calculator", "arguments": {"expression": "17 + 25"}}],
    }
    result = {"role": "tool", "content": "42", "name": "calculator"}
    row = {**GOOD, "chosen": [call, result, bot("42")], "rejected": [bot("41")]}
    path = write(tmp_path / "p.jsonl", [row])
    (r,), report = render_pairs(read_preferences(path), fmt, max_len=256)
    assert report.n_skipped == 0 and r.rejected_mask is None
    ids, mask = fmt.render([*GOOD["prompt"], *row["chosen"]])
    n = len(r.prompt_ids)
    assert r.chosen_ids == ids[n:] and r.chosen_mask == [int(m) for m in mask[n:]]
    assert 0 < sum(r.chosen_mask) < len(r.chosen_mask)  # the result is inside, unlearned
    batch = collate([r], [0], pad_id=0)
    learned = batch.targets[0][batch.targets[0] >= 0].tolist()
    assert learned == [i for i, m in zip(r.chosen_ids, r.chosen_mask, strict=True) if m]
    # a completion must start and end with the model's own message
    bad = {**GOOD, "chosen": [call, result]}
    with pytest.raises(BadInputError, match=r"p\.jsonl:1: chosen\[1\]\.role: a completion starts"):
        read_preferences(write(tmp_path / "p.jsonl", [bad]))


def test_plain_text_pairs_render_as_prompt_then_text_and_eos(tmp_path, fmt, tok) -> None:
    row = {"prompt": "to be", "chosen": " or not", "rejected": " that is"}
    (r,), _ = render_pairs(read_preferences(write(tmp_path / "p.jsonl", [row])), fmt, max_len=64)
    assert r.prompt_ids == [tok.bos_id] * tok.add_bos + tok.encode("to be")
    assert r.chosen_ids == tok.encode(" or not") + tok.eos_ids[:1]
    assert r.rejected_ids == tok.encode(" that is") + tok.eos_ids[:1]


def test_useless_pairs_are_skipped_and_counted_by_reason(tmp_path, fmt) -> None:
    rows = [
        GOOD,
        {**GOOD, "rejected": GOOD["chosen"]},  # identical
        {"prompt": "p", "chosen": "same", "rejected": "same"},  # identical
        {**GOOD, "chosen": [bot("  ")]},  # empty
        {"prompt": "p", "chosen": "", "rejected": "r"},  # empty
        {**GOOD, "prompt": [user("to be or not to be, " * 20)]},  # prompt too long
    ]
    pairs = read_preferences(write(tmp_path / "p.jsonl", rows))
    kept, report = render_pairs(pairs, fmt, max_len=40, max_prompt_len=30)
    assert dict(report.skipped) == {"identical": 2, "empty": 2, "prompt_too_long": 1}
    assert report.truncated == 0
    assert len(kept) == 1 and len(kept[0].prompt_ids) < 30


def test_long_completions_are_cut_to_fit_and_counted(tmp_path, fmt, tok) -> None:
    rows = [
        {"prompt": "to be", "chosen": " or not to be" * 5, "rejected": " the question" * 5},
        # the same first tokens: identical once cut to fit, so skipped
        {"prompt": "to be", "chosen": " or not to be", "rejected": " or not to see"},
    ]
    pairs = read_preferences(write(tmp_path / "p.jsonl", rows))
    prompt_len = len([tok.bos_id] * tok.add_bos + tok.encode("to be"))
    assert tok.encode(" or not to be")[:3] == tok.encode(" or not to see")[:3]
    (r,), report = render_pairs(pairs, fmt, max_len=prompt_len + 3)
    assert report.truncated == 2 and dict(report.skipped) == {"identical": 1}
    assert len(r.chosen_ids) == len(r.rejected_ids) == 3
    assert r.chosen_ids == tok.encode(" or not to be")[:3]


def test_feedback_export_and_arena_votes_read_as_preference_pairs(tmp_path, fmt) -> None:
    from twofiles.arena import ArenaStore
    from twofiles.feedback import FeedbackStore, export_feedback

    store = FeedbackStore(tmp_path / "fb.sqlite")
    convo = [user("capital of France?")]
    store.record(model="m", messages=convo, reply=bot("Paris."), rating="up")
    store.record(model="m", messages=convo, reply=bot("Lyon."), rating="down")
    store.record(model="m", messages=[user("2+2?")], reply=bot("5"), correction="4")
    arena = ArenaStore(tmp_path / "arena.sqlite")
    arena.record_battle(
        prompt="3+3?",
        model_a="x",
        model_b="y",
        reply_a="7",
        reply_b="6",
        winner="b",
        meta={"system": "Be brief."},
    )
    export_feedback(tmp_path / "fb.sqlite", tmp_path / "out", arena_db=tmp_path / "arena.sqlite")
    pairs = read_preferences(tmp_path / "out" / "preferences.jsonl")
    got = {
        (p.prompt[-1].content, p.chosen[0].content, p.rejected[0].content)  # type: ignore[index]
        for p in pairs
    }
    assert got == {
        ("capital of France?", "Paris.", "Lyon."),
        ("2+2?", "4", "5"),
        ("3+3?", "6", "7"),
    }
    kept, report = render_pairs(pairs, fmt, max_len=128)
    assert len(kept) == 3 and report.n_skipped == 0
    system = next(p for p in pairs if len(p.prompt) == 2).prompt[0]  # type: ignore[index]
    assert system == Message("system", "Be brief.")


# ---------------------------------------------------------------- the loss


def _pairs(fmt):
    convs = [
        ([user("to be?")], [bot("or not")], [bot("that is the question")]),
        ([user("whether 'tis nobler")], [bot("in the mind")], [bot("to suffer")]),
        ([user("to be or not to be?")], [bot("that")], [bot("the question, whether")]),
    ]
    out = []
    for prompt, chosen, rejected in convs:
        p = fmt.prompt_ids(prompt)
        ids_c, mask_c = fmt.render(prompt + chosen)
        ids_r, mask_r = fmt.render(prompt + rejected)
        out.append(
            (
                p,
                [i for i, m in zip(ids_c, mask_c, strict=True) if m],
                [i for i, m in zip(ids_r, mask_r, strict=True) if m],
            )
        )
    return out


def _batch_logps(model, pairs):
    prompts = [p for p, _, _ in pairs] * 2
    completions = [c for _, c, _ in pairs] + [r for _, _, r in pairs]
    logps, n = sequence_logps(model, prompts, completions)
    B = len(pairs)
    return logps[:B], logps[B:], n[:B], n[B:]


@pytest.mark.parametrize("kind", ["sigmoid", "ipo", "hinge", "robust"])
def test_at_step_0_the_policy_is_the_reference(fmt, tok, kind) -> None:
    model = random_model(tok)
    pairs = _pairs(fmt)
    pc, pr, nc, nr = _batch_logps(model, pairs)
    with torch.no_grad():
        rc, rr, _, _ = _batch_logps(model, pairs)
    loss, m = dpo_loss(pc, pr, rc, rr, beta=0.1, kind=kind, chosen_tokens=nc, rejected_tokens=nr)
    expected = {"sigmoid": math.log(2), "ipo": (1 / 0.2) ** 2, "hinge": 1.0, "robust": math.log(2)}
    assert loss.item() == pytest.approx(expected[kind], abs=1e-6)
    for k in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"):
        assert m[k] == 0.0
    assert m["logps/chosen"] == pytest.approx(pc.mean().item())
    assert m["logps/rejected"] < 0


def _hf_twin(model):
    import transformers

    cfg = model.config
    hf = transformers.LlamaForCausalLM(
        transformers.LlamaConfig(
            vocab_size=cfg.vocab_size,
            hidden_size=cfg.dim,
            intermediate_size=cfg.hidden_dim,
            num_hidden_layers=cfg.n_layers,
            num_attention_heads=cfg.n_heads,
            num_key_value_heads=cfg.n_kv_heads,
            max_position_embeddings=cfg.max_seq_len,
            rms_norm_eps=cfg.norm_eps,
            rope_theta=cfg.rope_theta,
            tie_word_embeddings=cfg.tie_embeddings,
            attention_bias=False,
            mlp_bias=False,
            attn_implementation="eager",
        )
    )
    hf.load_state_dict(model.state_dict(), strict=True)
    return hf


def _naive_loss(hf, ref, pairs, beta, kind, ls, nll_weight):
    """One example at a time, no padding, TRL's formulas written out per pair."""

    def logp(m, prompt, completion):
        ids = torch.tensor([prompt + completion])
        logprobs = m(input_ids=ids).logits[0].float().log_softmax(-1)
        return sum(logprobs[len(prompt) - 1 + t, c] for t, c in enumerate(completion))

    losses, nll_sum, nll_n = [], 0.0, 0
    for prompt, chosen, rejected in pairs:
        pc, pr = logp(hf, prompt, chosen), logp(hf, prompt, rejected)
        with torch.no_grad():
            rc, rr = logp(ref, prompt, chosen), logp(ref, prompt, rejected)
        d = (pc - rc) - (pr - rr)
        if kind == "sigmoid":
            loss = -(1 - ls) * F.logsigmoid(beta * d) - ls * F.logsigmoid(-beta * d)
        elif kind == "ipo":
            h = (pc - rc) / len(chosen) - (pr - rr) / len(rejected)
            loss = (h - 1 / (2 * beta)) ** 2
        else:
            loss = torch.relu(1 - beta * d)
        losses.append(loss)
        nll_sum = nll_sum - pc
        nll_n += len(chosen)
    return sum(losses) / len(losses) + nll_weight * nll_sum / nll_n


@pytest.mark.parametrize(
    ("kind", "ls", "nll_weight"),
    [
        ("sigmoid", 0.0, 0.0),
        ("sigmoid", 0.1, 0.0),
        ("ipo", 0.0, 0.0),
        ("hinge", 0.0, 0.0),
        ("sigmoid", 0.0, 1.0),
    ],
)
def test_loss_and_gradients_match_a_naive_dpo_on_a_hf_llama(fmt, tok, kind, ls, nll_weight) -> None:
    """Our batched, padded log-probs on our Transformer against one-pair-at-a-time log-probs on a
    Hugging Face Llama with the same weights; the policy differs from the frozen reference."""
    policy, ref = random_model(tok, seed=0).train(), random_model(tok, seed=1)
    hf, hf_ref = _hf_twin(policy).train(), _hf_twin(ref).eval()
    pairs = _pairs(fmt)
    pc, pr, nc, nr = _batch_logps(policy, pairs)
    with torch.no_grad():
        rc, rr, _, _ = _batch_logps(ref, pairs)
    loss, m = dpo_loss(
        pc,
        pr,
        rc,
        rr,
        beta=0.5,
        kind=kind,
        label_smoothing=ls,
        chosen_tokens=nc,
        rejected_tokens=nr,
        nll_weight=nll_weight,
    )
    assert abs(m["rewards/margins"]) > 1e-3  # the policy is not the reference
    loss.backward()
    naive = _naive_loss(hf, hf_ref, pairs, 0.5, kind, ls, nll_weight)
    naive.backward()
    torch.testing.assert_close(loss, naive, atol=1e-5, rtol=1e-5)
    theirs = dict(hf.named_parameters())
    for name, p in policy.named_parameters():
        torch.testing.assert_close(p.grad, theirs[name].grad, atol=1e-5, rtol=1e-4, msg=name)


def test_bad_arguments_are_refused() -> None:
    x = torch.zeros(2)
    with pytest.raises(ValueError, match="not one of"):
        dpo_loss(x, x, x, x, kind="nope")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="IPO loss needs"):
        dpo_loss(x, x, x, x, kind="ipo")
    with pytest.raises(ValueError, match="0 <= label_smoothing < 0.5"):
        dpo_loss(x, x, x, x, kind="robust", label_smoothing=0.5)


@pytest.mark.parametrize(
    ("kind", "ls", "nll_weight"),
    [
        ("sigmoid", 0.0, 0.0),
        ("ipo", 0.0, 0.0),
        ("hinge", 0.0, 0.0),
        ("robust", 0.2, 0.0),
        ("sigmoid", 0.0, 0.7),
    ],
)
def test_loss_gradients_and_metrics_equal_trls_dpo_trainer(
    tmp_path, fmt, tok, kind, ls, nll_weight
) -> None:
    """TRL's DPOTrainer.compute_loss on a Hugging Face Llama twin and the same pairs, collated by
    TRL's own DataCollatorForPreference. DPO+NLL is TRL's loss_type ["sigmoid", "sft"]."""
    from datasets import Dataset
    from tokenizers import Tokenizer as HFTokenizer
    from transformers import PreTrainedTokenizerFast
    from trl import DPOConfig, DPOTrainer
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    policy, ref = random_model(tok, seed=0).train(), random_model(tok, seed=1)
    hf, hf_ref = _hf_twin(policy).train(), _hf_twin(ref).eval()
    pairs = _pairs(fmt)
    eos = tok.decode([tok.eos_ids[0]])
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=HFTokenizer.from_str(tok.to_json()), eos_token=eos, pad_token=eos
    )
    losses = ["sigmoid", "sft"] if nll_weight else [kind]
    args = DPOConfig(
        output_dir=str(tmp_path / "trl"),
        beta=0.5,
        loss_type=losses,
        loss_weights=[1.0, nll_weight] if nll_weight else None,
        label_smoothing=ls,
        report_to=[],
        use_cpu=True,
        bf16=False,  # DPOConfig's default autocasts to bf16; the comparison is in fp32
        max_length=None,
        per_device_train_batch_size=len(pairs),
    )
    trainer = DPOTrainer(
        model=hf,
        ref_model=hf_ref,
        args=args,
        processing_class=hf_tok,
        train_dataset=Dataset.from_list([{"prompt": "a", "chosen": "b", "rejected": "c"}]),
    )
    inputs = DataCollatorForPreference(pad_token_id=0)(
        [{"prompt_ids": p, "chosen_ids": c, "rejected_ids": r} for p, c, r in pairs]
    )
    trainer.model.train()
    theirs = trainer.compute_loss(trainer.model, inputs)
    theirs.backward()

    pc, pr, nc, nr = _batch_logps(policy, pairs)
    with torch.no_grad():
        rc, rr, _, _ = _batch_logps(ref, pairs)
    loss, metrics = dpo_loss(
        pc,
        pr,
        rc,
        rr,
        beta=0.5,
        kind=kind,
        label_smoothing=ls,
        chosen_tokens=nc,
        rejected_tokens=nr,
        nll_weight=nll_weight,
    )
    loss.backward()
    torch.testing.assert_close(loss, theirs.float(), atol=1e-5, rtol=1e-5)
    hf_params = dict(trainer.model.named_parameters())
    for name, p in policy.named_parameters():
        torch.testing.assert_close(p.grad, hf_params[name].grad, atol=1e-5, rtol=1e-4, msg=name)
    logged = trainer._metrics["train"]
    for key in (
        "rewards/chosen",
        "rewards/rejected",
        "rewards/margins",
        "rewards/accuracies",
        "logps/chosen",
        "logps/rejected",
    ):
        assert metrics[key] == pytest.approx(logged[key][-1], abs=1e-4), key
