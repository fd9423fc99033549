"""The reward model (train/reward.py, scoring.py, data/builtin_pairs.py): the built-in pairs and
their checkers, the Bradley–Terry loss and its gradients against TRL's RewardTrainer on a Hugging
Face LlamaForSequenceClassification twin, training through the CLI (full and LoRA), the reward
file and its refusals, and the scorer in `chat --think N --scorer` and `arena battle --judge`."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch

from tiny_models import random_model, tiny_tokenizer
from twofiles.artifact import save_model
from twofiles.chat import ChatFormat, Message
from twofiles.data.builtin_pairs import builtin_pairs, to_dict
from twofiles.errors import BadInputError
from twofiles.scoring import RewardModel, load_reward_scorer, pad_rows
from twofiles.train.reward import RewardConfig, bradley_terry, pair_rows, train_reward


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def model_path(tok, tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("reward") / "model.safetensors"
    return str(save_model(path, random_model(tok, max_seq_len=128), tok))


@pytest.fixture(scope="module")
def reward_run(model_path, tmp_path_factory):
    """A reward model trained briefly on the built-in pairs (full finetuning)."""
    out = tmp_path_factory.mktemp("reward") / "run"
    cfg = RewardConfig(model=model_path, out=str(out), max_steps=6, batch_size=8, progress=False)
    cfg.device = "cpu"
    return train_reward(cfg)


# ------------------------------------------------------------------------------- built-in pairs


def test_builtin_pairs_are_right_against_wrong_and_held_out_by_task() -> None:
    from twofiles.data.preferences import parse_pair
    from twofiles.data.skills import SkillTask, check

    train, val = builtin_pairs("train"), builtin_pairs("val")
    assert len(train) > 1000 and len(val) > 150
    assert builtin_pairs("val") == val  # deterministic
    assert builtin_pairs("val", seed=1) != val
    assert not {p.prompt[0].content for p in train} & {p.prompt[0].content for p in val}
    kinds = {p.where.split("/")[2] for p in val}
    assert kinds == {"arithmetic", "spelling", "count_letters", "repeat", "reverse", "uppercase"}
    # each side through its task's own checker (the same draws builtin_pairs made)
    from twofiles.data.builtin_pairs import SIZES
    from twofiles.data.skills import skill_tasks

    tasks = {t.prompt: t for k in kinds for t in skill_tasks(k, "val", SIZES["val"][k])}
    for p in val:
        task: SkillTask = tasks[p.prompt[0].content]
        assert check(task, p.chosen[0].content), p
        assert not check(task, p.rejected[0].content), p
    # the JSONL form reads back as the same pair
    assert parse_pair(json.loads(json.dumps(to_dict(val[0])))) == val[0]


# ---------------------------------------------------------------------------------------- loss


def _hf_twin(rm: RewardModel, pad_id: int):
    import transformers

    cfg = rm.backbone.config
    hf = transformers.LlamaForSequenceClassification(
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
            num_labels=1,
            pad_token_id=pad_id,
            attn_implementation="eager",
        )
    )
    sd = {k: v for k, v in rm.backbone.state_dict().items() if not k.startswith("lm_head")}
    sd["score.weight"] = rm.score.weight.detach().clone()
    hf.load_state_dict(sd, strict=True)  # the names map 1:1
    return hf


def _rendered_pairs(tok):
    from twofiles.data.preferences import render_pairs

    fmt = ChatFormat.builtin_for(tok)
    return render_pairs(builtin_pairs("val")[::20], fmt, max_len=128)[0]


@pytest.mark.parametrize("center", [0.0, 0.25])
def test_loss_and_gradients_equal_trls_reward_trainer(tmp_path, tok, center) -> None:
    """TRL's RewardTrainer.compute_loss on a LlamaForSequenceClassification with the same
    weights and the same pairs, collated by TRL's own collator (right padding, its last-non-pad
    rule), against ours: one forward of 2B rows, the head at each row's last token."""
    from datasets import Dataset
    from tokenizers import Tokenizer as HFTokenizer
    from transformers import PreTrainedTokenizerFast
    from trl import RewardConfig as TRLRewardConfig
    from trl import RewardTrainer
    from trl.trainer.reward_trainer import DataCollatorForPreference

    pad_id = tok.special_ids["<|pad|>"]
    rm = RewardModel(random_model(tok, max_seq_len=128), seed=3).train()
    with torch.no_grad():  # a head that tells the pairs apart, so the loss is not log 2
        rm.score.weight.normal_(0, 0.5, generator=torch.Generator().manual_seed(4))
    hf = _hf_twin(rm, pad_id).train()
    pairs = _rendered_pairs(tok)
    assert len(pairs) >= 6
    pad = tok.decode([pad_id])
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=HFTokenizer.from_str(tok.to_json()), pad_token=pad, eos_token=pad
    )
    trainer = RewardTrainer(
        model=hf,
        args=TRLRewardConfig(
            output_dir=str(tmp_path / "trl"),
            center_rewards_coefficient=center or None,
            report_to=[],
            use_cpu=True,
            bf16=False,
            max_length=None,
            per_device_train_batch_size=len(pairs),
        ),
        processing_class=hf_tok,
        train_dataset=Dataset.from_list([{"chosen": "a", "rejected": "b"}]),
    )
    inputs = DataCollatorForPreference(pad_token_id=pad_id)(
        [
            {
                "chosen_ids": p.prompt_ids + p.chosen_ids,
                "rejected_ids": p.prompt_ids + p.rejected_ids,
            }
            for p in pairs
        ]
    )
    trainer.model.train()
    theirs = trainer.compute_loss(trainer.model, inputs)
    theirs.backward()

    ids, lengths = pair_rows(pairs, pad_id)
    rc, rr = rm(ids, lengths).chunk(2)
    ours = bradley_terry(rc, rr, center).sum() / len(pairs)  # the loop's (sum, count)
    ours.backward()
    torch.testing.assert_close(ours, theirs.float(), atol=1e-5, rtol=1e-5)
    assert abs(float(ours.detach()) - 0.6931) > 1e-3
    hf_params = dict(trainer.model.named_parameters())
    torch.testing.assert_close(
        rm.score.weight.grad, hf_params["score.weight"].grad, atol=1e-5, rtol=1e-4
    )
    for name, p in rm.backbone.named_parameters():
        if name.startswith("lm_head"):
            assert p.grad is None  # the head replaces it
            continue
        torch.testing.assert_close(p.grad, hf_params[name].grad, atol=1e-5, rtol=1e-4, msg=name)
    logged = trainer._metrics["train"]
    assert float((rc > rr).float().mean()) == pytest.approx(logged["accuracy"][-1])
    assert float((rc - rr).detach().mean()) == pytest.approx(logged["margin"][-1], abs=1e-5)


def test_padding_does_not_change_a_rows_reward(tok) -> None:
    rm = RewardModel(random_model(tok), seed=0).eval()
    a, b = tok.encode("to be or not"), tok.encode("to be or not to be, that is")
    with torch.no_grad():
        alone = rm(*pad_rows([a], 1))
        both = rm(*pad_rows([a, b], 1))
    torch.testing.assert_close(both[:1], alone, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------ training


def test_training_writes_a_reward_file_the_scorer_reproduces(reward_run, model_path) -> None:
    """The scorer renders (prompt, reply) as training rendered the pairs: its held-out accuracy
    is the run's own number."""
    res = reward_run
    out = Path(res.out)
    assert {"reward.safetensors", "metrics.jsonl", "loss.png", "report.md", "config.json"} <= {
        p.name for p in out.iterdir()
    }
    assert res.steps == 6 and res.pairs > 1000 and res.skipped == {}
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in recs if "loss" in r]
    assert len(steps) == 6 and {"accuracy", "margin", "rewards/chosen", "rewards/rejected"} <= set(
        steps[0]
    )
    assert "held-out pair accuracy" in (out / "report.md").read_text()
    scorer = load_reward_scorer(res.model_path, device="cpu")
    val = builtin_pairs("val")
    prompts = [p.prompt for p in val]
    chosen = scorer.score_batch(prompts, [p.chosen[0].content for p in val])
    rejected = scorer.score_batch(prompts, [p.rejected[0].content for p in val])
    acc = sum(c > r for c, r in zip(chosen, rejected)) / len(val)
    assert acc == pytest.approx(res.after["val_accuracy"], abs=1e-6)
    # a text prompt is one user message; one at a time equals the batch
    assert scorer.score(val[0].prompt[0].content, val[0].chosen[0].content) == pytest.approx(
        chosen[0], abs=1e-5
    )


def test_a_learnable_preference_is_learned_with_lora_and_plain_text(tmp_path, model_path) -> None:
    """Plain-text pairs where the chosen reply always says "yes": LoRA (+ the head) learns it, and
    the merged file scores it."""
    from twofiles.cli import main

    words = [
        "to",
        "be",
        "or",
        "not",
        "that",
        "is",
        "the",
        "question",
        "whether",
        "tis",
        "nobler",
        "in",
        "mind",
        "suffer",
    ]
    n = len(words)
    rows = [
        {"prompt": f"{words[i % n]} {words[(i * 5) % n]}?", "chosen": " yes", "rejected": " no"}
        for i in range(60)
    ]
    data = tmp_path / "prefs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "run"
    rc = main(
        [
            "reward",
            model_path,
            "--data",
            str(data),
            "--out",
            str(out),
            "--lora-rank",
            "4",
            "--lr",
            "1e-2",
            "--max-steps",
            "30",
            "--batch-size",
            "4",
            "--device",
            "cpu",
            "--no-progress",
        ]
    )
    assert rc == 0
    info = json.loads((out / "run.json").read_text())
    assert "100.0%" in info["numbers"]["held-out pair accuracy"].split("->")[1]
    scorer = load_reward_scorer(out / "reward.safetensors", device="cpu")
    assert scorer.form == "plain"
    assert scorer.score("mind suffer?", " yes") > scorer.score("mind suffer?", " no")
    with pytest.raises(BadInputError, match="plain-text pairs"):
        scorer.score([Message("user", "hi")], " yes")


def test_bad_inputs_are_refused_by_name(tmp_path, model_path, reward_run, capsys) -> None:
    from twofiles.cli import main
    from twofiles.formats.resolve import resolve_model

    with pytest.raises(BadInputError, match="not a reward model"):
        load_reward_scorer(model_path)
    with pytest.raises(BadInputError, match="a reward model: it scores replies"):
        resolve_model(reward_run.model_path)
    with pytest.raises(BadInputError, match="no such reward model"):
        load_reward_scorer(tmp_path / "none.safetensors")
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text(
        json.dumps({"prompt": "a", "chosen": "b", "rejected": "c"})
        + "\n"
        + json.dumps(
            {
                "prompt": [{"role": "user", "content": "a"}],
                "chosen": [{"role": "assistant", "content": "b"}],
                "rejected": [{"role": "assistant", "content": "c"}],
            }
        )
        + "\n"
    )
    args = ["--out", str(tmp_path / "r"), "--device", "cpu", "--no-progress", "--val-data"]
    assert main(["reward", model_path, "--data", str(mixed), *args, str(mixed)]) == 2
    assert "mix plain text and conversations" in capsys.readouterr().err
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": "a"}\n')
    assert main(["reward", model_path, "--data", str(broken), *args[:-1]]) == 2
    assert "broken.jsonl:2" in capsys.readouterr().err
    assert not (tmp_path / "r" / "reward.safetensors").exists()


def test_resume_refuses_flags_that_would_change_the_run(tmp_path, capsys) -> None:
    from twofiles.cli import main

    run = tmp_path / "run"
    run.mkdir()
    saved = RewardConfig(model="base.safetensors", out=str(run), max_steps=10, lora_rank=4)
    (run / "config.json").write_text(json.dumps(saved.to_dict()))
    args = ["reward", "base.safetensors", "--out", str(run), "--resume", "--no-progress"]
    assert main([*args, "--lora-targets", "q_proj", "--center-rewards", "0.1"]) == 2
    err = capsys.readouterr().err
    assert "--lora-targets (the run has ['q_proj', " in err and "given ['q_proj'])" in err
    assert "--center-rewards (the run has 0.0, given 0.1)" in err
    # the run's own values and a longer run are taken: the refusal is then the missing checkpoint
    assert main([*args, "--lora-rank", "4", "--data", "builtin", "--max-steps", "20"]) == 2
    err = capsys.readouterr().err
    assert "no checkpoint" in err and "would change" not in err


# --------------------------------------------------------------------------------- integration


def test_chat_best_of_n_picks_the_highest_reward(
    reward_run, model_path, monkeypatch, capsys
) -> None:
    from twofiles.cli import main

    spec = f"reward:{reward_run.model_path}"
    monkeypatch.setattr("sys.stdin", io.StringIO("What is 2 + 3?\n"))
    rc = main(
        [
            "chat",
            model_path,
            "--think",
            "4",
            "--scorer",
            spec,
            "--seed",
            "3",
            "--max-tokens",
            "8",
            "--device",
            "cpu",
            "--json",
        ]
    )
    out, err = capsys.readouterr()
    assert rc == 0, err
    summary = json.loads(out.splitlines()[-1])
    (pick,) = summary["best_of_n"]
    assert "reward scores" in err and len(pick["samples"]) == 4
    assert len(set(pick["samples"])) > 1
    scorer = load_reward_scorer(reward_run.model_path, device="cpu")
    scores = scorer.score_batch([[Message("user", "What is 2 + 3?")]] * 4, pick["samples"])
    assert pick["scores"] == pytest.approx(scores, abs=1e-5)
    best = max(range(4), key=lambda i: (scores[i], -i))
    assert pick["chosen"] == best and summary["replies"] == [pick["samples"][best]]
    # --scorer needs samples to choose from, and names a reward model
    monkeypatch.setattr("sys.stdin", io.StringIO("hi\n"))
    assert main(["chat", model_path, "--scorer", spec]) == 2
    assert main(["chat", model_path, "--think", "2", "--scorer", reward_run.model_path]) == 2
    assert "expected reward:PATH" in capsys.readouterr().err


def test_arena_reward_judge_votes_for_the_higher_score(
    tmp_path, tok, reward_run, model_path, capsys
) -> None:
    from twofiles.arena import ArenaStore
    from twofiles.cli import main

    other = str(save_model(tmp_path / "other.safetensors", random_model(tok, seed=5), tok))
    prompts = tmp_path / "p.txt"
    prompts.write_text("to be?\nwhether tis nobler?\nthe question is\n")
    db = tmp_path / "arena.db"
    spec = f"reward:{reward_run.model_path}"
    rc = main(
        [
            "arena",
            "battle",
            "--models",
            f"one={model_path}",
            f"two={other}",
            "--prompts",
            str(prompts),
            "--judge",
            spec,
            "--db",
            str(db),
            "--max-tokens",
            "6",
            "--device",
            "cpu",
            "--no-progress",
        ]
    )
    assert rc == 0, capsys.readouterr().err
    battles = ArenaStore(db).battles()
    assert len(battles) == 3 and {b.judge for b in battles} == {spec}
    scorer = load_reward_scorer(reward_run.model_path, device="cpu")
    for b in battles:
        sa, sb = scorer.score(b.prompt, b.reply_a), scorer.score(b.prompt, b.reply_b)
        assert b.meta["judge_detail"]["score_a"] == pytest.approx(sa, abs=1e-5)
        assert b.winner == ("a" if sa > sb else "b" if sb > sa else "tie")


def test_resume_from_a_checkpoint_ends_where_the_straight_run_ends(tmp_path, model_path) -> None:
    """Stopped after step 2 (its later checkpoint and files removed) and resumed: the same
    reward file as the run that went straight through (the pairs' order, the head, the "before"
    numbers all come back from the checkpoint)."""
    from safetensors.torch import load_file

    from twofiles.train.checkpoint import list_checkpoints

    def cfg(resume: bool = False) -> RewardConfig:
        c = RewardConfig(
            model=model_path,
            out=str(tmp_path / "run"),
            max_steps=4,
            batch_size=4,
            checkpoint_interval=2,
            checkpoint_seconds=0,
            max_val=16,
            resume=resume,
            progress=False,
        )
        c.device = "cpu"
        return c

    straight = train_reward(cfg())
    want = load_file(straight.model_path)
    ckpts = list_checkpoints(tmp_path / "run" / "checkpoints")
    assert len(ckpts) == 2
    ckpts[-1].unlink()
    Path(straight.model_path).unlink()
    resumed = train_reward(cfg(resume=True))
    assert resumed.before == straight.before and resumed.after == straight.after
    got = load_file(resumed.model_path)
    assert set(got) == set(want)
    for k in want:
        torch.testing.assert_close(got[k], want[k], atol=0, rtol=0, msg=k)
