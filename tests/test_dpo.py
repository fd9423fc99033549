"""DPO (train/dpo.py and `twofiles dpo`): the loss at step 0 through the verb, the objective
against TRL's DPOTrainer on a Hugging Face directory, the LoRA reference as the adapters switched
off, exact resume, learning easy pairs, bad input, and the web UI's feedback as the data."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from tiny_models import random_model, tiny_tokenizer
from twofiles.cli import main


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def bot(text: str) -> dict:
    return {"role": "assistant", "content": text}


WORDS = ["to be", "or not", "that is", "the question", "whether", "nobler", "in the mind", "suffer"]


def easy_pairs(n: int) -> list[dict]:
    """The chosen reply is always the same line; the rejected one varies: easy to learn, and the
    held-out pairs (other prompts, other rejected replies) test whether it was."""
    return [
        {
            "prompt": [user(f"{WORDS[i % 8]} {WORDS[(i * 3) % 8]}?")],
            "chosen": [bot("to be or not to be")],
            "rejected": [bot(f"the question, {WORDS[(i * 5) % 8]}")],
        }
        for i in range(n)
    ]


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def base(tok, tmp_path_factory) -> Path:
    from twofiles.artifact import save_model

    path = tmp_path_factory.mktemp("base") / "base.safetensors"
    save_model(path, random_model(tok), tok, provenance={"stage": "sft"})
    return path


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("pairs") / "pairs.jsonl", easy_pairs(60))


def run_cli(args: list[str], capsys) -> tuple[int, dict | None, str]:
    code = main(["dpo", *args, "--no-progress", "--threads", "1"])
    cap = capsys.readouterr()
    lines = cap.out.strip().splitlines()
    summary = json.loads(lines[-1]) if code == 0 and "--json" in args else None
    return code, summary, cap.err


def records(run: Path) -> list[dict]:
    return [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]


# ---------------------------------------------------------------- step 0 through the verb


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ([], math.log(2)),  # full finetuning: reference log-probs precomputed
        (["--lora-rank", "4"], math.log(2)),  # LoRA: B = 0 at init, the adapters-off base
        (["--lora-rank", "4", "--reference", "precomputed"], math.log(2)),
        (["--loss", "ipo"], (1 / (2 * 0.1)) ** 2),
        (["--loss", "hinge"], 1.0),
        (["--nll-weight", "0.5"], None),  # DPO+NLL: ln 2 + 0.5 x the chosen replies' NLL
    ],
)
def test_the_first_step_is_at_the_reference(base, pairs_file, tmp_path, capsys, flags, expected):
    out = tmp_path / "run"
    args = [str(base), "--data", str(pairs_file), "--out", str(out), "--max-steps", "1", "--json"]
    code, summary, err = run_cli([*args, *flags], capsys)
    assert code == 0, err
    step1 = next(r for r in records(out) if "loss" in r)
    if expected is None:
        expected = math.log(2) + 0.5 * step1["nll_loss"]
        assert step1["nll_loss"] > 0
    assert step1["loss"] == pytest.approx(expected, abs=1e-5)
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins"):
        assert abs(step1[key]) < 1e-6, key
    assert step1["logps/chosen"] < 0 and step1["logps/rejected"] < 0
    lora = "--lora-rank" in flags
    precomputed = not lora or "precomputed" in flags
    assert summary["reference"] == ("precomputed" if precomputed else "adapters-off")
    assert summary["model_path"].endswith("adapters.safetensors" if lora else "model.safetensors")
    assert summary["train_pairs"] == 57 and summary["val_pairs"] == 3 and summary["skipped"] == {}
    if "--loss" not in flags and "--nll-weight" not in flags:  # held-out pairs at step 0 too
        assert summary["before"]["eval_loss"] == pytest.approx(math.log(2), abs=1e-6)
    for name in ("config.json", "report.md", "dpo.png", "run.json"):
        assert (out / name).is_file(), name
    assert (out / "reference_logps.safetensors").is_file() == precomputed
    lr = json.loads((out / "config.json").read_text())["optim"]["lr"]
    assert lr == (1e-4 if lora else 1e-5)  # adapters get their own default LR


# ---------------------------------------------------------------- against TRL


def test_the_objective_equals_trls_dpo_trainer_on_a_hf_directory(tok, tmp_path) -> None:
    """The objective the verb runs (full finetuning, reference log-probs precomputed) on a tiny
    Llama directory loaded as a user's path is, against TRL's DPOTrainer on the same directory
    and the same tokenized batch: the same loss, gradients and metrics. The policy has moved
    away from the reference, so the rewards are not zero."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    from twofiles import runtime
    from twofiles.artifact import LoadedModel
    from twofiles.chat import ChatFormat
    from twofiles.data.preferences import parse_pair, render_pairs
    from twofiles.formats.hf import export_hf
    from twofiles.formats.resolve import resolve_model
    from twofiles.train.dpo import DPOObjective, PairLoader, precomputed_reference

    hf_dir = tmp_path / "hf"
    export_hf(LoadedModel(model=random_model(tok), tokenizer=tok), hf_dir)
    loaded = resolve_model(str(hf_dir))
    model = loaded.model.train().requires_grad_(True)
    fmt = ChatFormat.for_model(loaded)
    pairs, _ = render_pairs([parse_pair(p) for p in easy_pairs(5)], fmt, max_len=128)
    rt = runtime.setup("cpu", "fp32")
    ref = precomputed_reference(tmp_path / "ref.safetensors", model, {"train": pairs}, rt, 2, 0)
    with torch.no_grad():  # a policy some steps away from its reference
        g = torch.Generator().manual_seed(0)
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.02)
    objective = DPOObjective(
        rt, model, PairLoader(pairs, 4, 0, seed=1), [], beta=0.5, loss="sigmoid", reference=ref
    )
    batch = objective.next_batch()
    ours = objective.loss(model, batch) / objective.count(batch)
    ours.backward()
    metrics = objective.step_metrics([batch])

    hf = AutoModelForCausalLM.from_pretrained(hf_dir, attn_implementation="eager")
    hf.load_state_dict(model.state_dict(), strict=True)
    hf_ref = AutoModelForCausalLM.from_pretrained(hf_dir, attn_implementation="eager").eval()
    args = DPOConfig(
        output_dir=str(tmp_path / "trl"),
        beta=0.5,
        report_to=[],
        use_cpu=True,
        bf16=False,  # DPOConfig's default autocasts to bf16; the comparison is in fp32
        max_length=None,
        per_device_train_batch_size=batch.pairs,
    )
    trainer = DPOTrainer(
        model=hf,
        ref_model=hf_ref,
        args=args,
        processing_class=AutoTokenizer.from_pretrained(hf_dir),
        train_dataset=Dataset.from_list([{"prompt": "a", "chosen": "b", "rejected": "c"}]),
    )
    inputs = DataCollatorForPreference(pad_token_id=0)(
        [
            {"prompt_ids": p.prompt_ids, "chosen_ids": p.chosen_ids, "rejected_ids": p.rejected_ids}
            for p in (pairs[i] for i in batch.index.tolist())
        ]
    )
    trainer.model.train()
    theirs = trainer.compute_loss(trainer.model, inputs)
    theirs.backward()
    torch.testing.assert_close(ours, theirs.float(), atol=1e-5, rtol=1e-5)
    hf_params = dict(trainer.model.named_parameters())
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, hf_params[name].grad, atol=1e-5, rtol=1e-4, msg=name)
    logged = trainer._metrics["train"]
    assert abs(metrics["rewards/margins"]) > 1e-3
    for key in (
        "rewards/chosen",
        "rewards/rejected",
        "rewards/margins",
        "rewards/accuracies",
        "logps/chosen",
        "logps/rejected",
    ):
        assert metrics[key] == pytest.approx(logged[key][-1], abs=1e-4), key


# ---------------------------------------------------------------- the LoRA reference


def test_the_lora_reference_is_the_base_with_adapters_off(tok) -> None:
    from twofiles import runtime
    from twofiles.chat import ChatFormat
    from twofiles.data.preferences import parse_pair, render_pairs
    from twofiles.lora import LoRAConfig, apply_lora, lora_layers
    from twofiles.train.dpo import DPOObjective, PairLoader, batch_logps
    from twofiles.train.preference import sequence_logps

    base = random_model(tok)
    model = random_model(tok)
    apply_lora(model, LoRAConfig(rank=4, alpha=8))
    with torch.no_grad():  # trained adapters: the policy is not the base
        for layer in lora_layers(model).values():
            layer.lora_B.normal_(0, 0.1, generator=torch.Generator().manual_seed(0))
    pairs, _ = render_pairs(
        [parse_pair(p) for p in easy_pairs(6)], ChatFormat.builtin_for(tok), max_len=128
    )
    rt = runtime.setup("cpu", "fp32")
    objective = DPOObjective(rt, model, PairLoader(pairs, 3, 0, seed=0), [], beta=0.1, loss="ipo")
    batch = objective.next_batch()
    ref_c, ref_r = objective._reference(model, batch, "train")
    with torch.no_grad():
        base_logps, n = batch_logps(base, batch, rt)
        policy_logps, _ = batch_logps(model, batch, rt)
        # and the same numbers as the full-vocabulary reference implementation
        rows = [pairs[i] for i in batch.index.tolist()]
        naive, naive_n = sequence_logps(
            base,
            [p.prompt_ids for p in rows] * 2,
            [p.chosen_ids for p in rows] + [p.rejected_ids for p in rows],
        )
    assert torch.equal(torch.cat([ref_c, ref_r]), base_logps)
    assert not torch.allclose(policy_logps, base_logps, atol=1e-3)
    torch.testing.assert_close(base_logps, naive, atol=1e-5, rtol=1e-5)
    assert torch.equal(n, naive_n)
    assert all(layer.enabled for layer in lora_layers(model).values())  # switched back on


# ---------------------------------------------------------------- a run: learning and resume


def _cfg(base: Path, pairs_file: Path, out: Path, **kw):
    from twofiles.train.dpo import DPOConfig

    cfg = DPOConfig(
        model=str(base),
        data=str(pairs_file),
        out=str(out),
        max_steps=kw.pop("max_steps", 12),
        checkpoint_interval=kw.pop("checkpoint_interval", 0),
        threads=1,
        progress=False,
        **kw,
    )
    # the tiny random model needs a large step to move in a dozen steps
    cfg.optim.lr, cfg.optim.warmup_steps = 1e-3, 2
    return cfg


@pytest.mark.parametrize("lora", [0, 4])
def test_a_few_steps_on_easy_pairs_prefer_the_chosen_replies(base, pairs_file, tmp_path, lora):
    from twofiles.train.dpo import dpo

    res = dpo(_cfg(base, pairs_file, tmp_path / "run", lora_rank=lora))
    assert res.before["eval_rewards/accuracies"] == 0.0 and res.before["eval_loss"] == (
        pytest.approx(math.log(2), abs=1e-6)
    )
    assert res.after["eval_rewards/accuracies"] > 0.5
    assert res.after["eval_rewards/margins"] > 0
    assert res.after["eval_loss"] < math.log(2) - 0.05
    report = (tmp_path / "run" / "report.md").read_text()
    assert "Held-out preference pairs" in report and "rewards/accuracies" in report
    from twofiles.eval.report import write_report

    (tmp_path / "run" / "report.md").unlink()  # `twofiles report` rebuilds it from the run
    write_report(tmp_path / "run")
    assert (tmp_path / "run" / "report.md").read_text() == report


def _timeless(run: Path) -> list[dict]:
    timing = {"time", "tok_s", "eval_seconds"}
    return [{k: v for k, v in r.items() if k not in timing} for r in records(run)]


def test_a_resumed_run_ends_exactly_as_an_uninterrupted_one(base, pairs_file, tmp_path) -> None:
    from safetensors.torch import load_file

    from twofiles.train.dpo import REFERENCE_FILE, dpo

    ref = tmp_path / "ref"
    res = dpo(_cfg(base, pairs_file, ref, max_steps=8, checkpoint_interval=4, batch_size=3))
    # an interrupted run: its step-8 checkpoint and model never written, metrics logged past 4
    run = tmp_path / "run"
    shutil.copytree(ref, run)
    (run / "checkpoints" / "step_0000008.safetensors").unlink()
    (run / "model.safetensors").unlink()
    # the reference log-probs are read back, not recomputed
    stamp = (run / REFERENCE_FILE).stat().st_mtime_ns
    again = dpo(_cfg(base, pairs_file, run, max_steps=8, batch_size=3, resume=True))
    assert (run / REFERENCE_FILE).stat().st_mtime_ns == stamp
    assert _timeless(run) == _timeless(ref)
    assert again.after == res.after and again.before == res.before
    a, b = load_file(ref / "model.safetensors"), load_file(run / "model.safetensors")
    assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)


def test_the_verb_resumes_a_lora_run_given_its_own_flags_again(base, pairs_file, tmp_path, capsys):
    """`twofiles dpo --resume` with the run's own flags typed again (model, data, LoRA targets,
    --merge) continues it from its checkpoint and ends with the uninterrupted run's weights."""
    from safetensors.torch import load_file

    flags = [str(base), "--data", str(pairs_file), "--lora-rank", "4", "--merge"]
    flags += ["--lora-targets", "q_proj,v_proj", "--max-steps", "6", "--checkpoint-interval", "3"]
    ref, run = tmp_path / "ref", tmp_path / "run"
    assert run_cli([*flags, "--out", str(ref)], capsys)[0] == 0
    shutil.copytree(ref, run)
    (run / "checkpoints" / "step_0000006.safetensors").unlink()
    (run / "model.safetensors").unlink()
    code, _, err = run_cli([*flags, "--out", str(run), "--resume"], capsys)
    assert code == 0, err
    assert "resumed from step_0000003.safetensors" in err
    assert _timeless(run) == _timeless(ref)
    a, b = load_file(ref / "model.safetensors"), load_file(run / "model.safetensors")
    assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)


def test_resume_refuses_flags_that_would_change_the_run(tmp_path, capsys) -> None:
    from twofiles.train.dpo import DPOConfig

    run = tmp_path / "run"
    run.mkdir()
    saved = DPOConfig(model="base.safetensors", data="pairs.jsonl", out=str(run), max_steps=10)
    (run / "config.json").write_text(json.dumps(saved.to_dict()))
    args = ["base.safetensors", "--out", str(run), "--resume"]
    code, _, err = run_cli([*args, "--beta", "0.5", "--loss", "ipo"], capsys)
    assert code == 2
    assert "--beta (the run has 0.1, given 0.5)" in err and "--loss" in err
    code, _, err = run_cli([*args, "--max-steps", "20"], capsys)
    assert code == 2 and "no checkpoint" in err and "would change" not in err


# ---------------------------------------------------------------- bad input


def test_a_malformed_pair_is_named_and_nothing_is_written(base, tmp_path, capsys) -> None:
    bad = write_jsonl(
        tmp_path / "bad.jsonl", [*easy_pairs(2), {**easy_pairs(1)[0], "chosen": [user("hi")]}]
    )
    out = tmp_path / "run"
    code, _, err = run_cli([str(base), "--data", str(bad), "--out", str(out)], capsys)
    assert code == 2 and "Traceback" not in err
    assert f"{bad}:3" in err and "chosen[0].role" in err
    assert not (out / "checkpoints").exists() and not (out / "model.safetensors").exists()
    code, _, err = run_cli([str(base), "--data", str(bad), "--loss", "nope"], capsys)
    assert code == 2 and "--loss 'nope'" in err


def test_too_few_usable_pairs_are_refused_with_the_skip_counts(base, tmp_path, capsys) -> None:
    same = {"prompt": "p", "chosen": "same", "rejected": "same"}
    path = write_jsonl(tmp_path / "p.jsonl", [easy_pairs(1)[0], same, same])
    code, _, err = run_cli([str(base), "--data", str(path), "--out", str(tmp_path / "r")], capsys)
    assert code == 2 and "no usable training pair" in err and "identical" in err


# ---------------------------------------------------------------- the loop closes


def test_feedback_from_the_web_ui_becomes_a_dpo_run(base, tmp_path, capsys) -> None:
    from twofiles.arena import ArenaStore
    from twofiles.feedback import FeedbackStore

    fb, arena = tmp_path / "feedback.sqlite", tmp_path / "arena.sqlite"
    empty = [str(base), "--data", "feedback", "--feedback-db", str(fb), "--arena-db", str(arena)]
    code, _, err = run_cli([*empty, "--out", str(tmp_path / "none")], capsys)
    assert code == 2 and "no preference pairs yet" in err and "twofiles arena" in err

    store = FeedbackStore(fb)
    convo = [user("to be?")]
    store.record(model="m", messages=convo, reply=bot("or not"), rating="up")
    store.record(model="m", messages=convo, reply=bot("the question"), rating="down")
    store.record(model="m", messages=[user("whether?")], reply=bot("nobler"), correction="to be")
    ArenaStore(arena).record_battle(
        prompt="in the mind?", model_a="x", model_b="y", reply_a="suffer", reply_b="to be",
        winner="b",
    )  # fmt: skip
    out = tmp_path / "run"
    code, summary, err = run_cli([*empty, "--out", str(out), "--max-steps", "2", "--json"], capsys)
    assert code == 0, err
    assert summary["train_pairs"] + summary["val_pairs"] == 3
    lines = (out / "pairs.jsonl").read_text().splitlines()
    assert {json.loads(ln)["chosen"][0]["content"] for ln in lines} == {"or not", "to be"}
    assert "1 from arena votes" in err
    from twofiles.formats.resolve import resolve_model

    prov = resolve_model(summary["model_path"]).provenance
    assert prov["stage"] == "dpo" and prov["data"] == "feedback" and prov["arena_pairs"] == 1
