"""The speedrun end to end on the `tiny` preset: every stage runs, the JSON contract holds, the
model file is self-contained and the report is written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from twofiles.presets import PRESETS


def test_presets_are_consistent() -> None:
    for name, p in PRESETS.items():
        cfg = p.model_config()  # validates head/dim divisibility
        assert cfg.vocab_size == p.vocab_size
        assert p.train["seq_len"] <= cfg.max_seq_len, name
        p.optim_config()
        assert p.description
        if p.sft:  # the SFT stage's rows fit the model's context
            assert p.sft_config("base.safetensors", "out").seq_len < cfg.max_seq_len, name


def test_tiny_speedrun_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TWOFILES_CACHE": str(tmp_path / "cache")}
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "twofiles",
            "speedrun",
            "--preset",
            "tiny",
            "--out",
            str(out),
            "--no-progress",
            "--json",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    summary = json.loads(p.stdout.strip().splitlines()[-1])
    for key in ("val_bpb", "wall_seconds", "model_path"):
        assert key in summary
    # uniform guessing over 1024 tokens costs log2(1024)/~2.7 bytes per token ≈ 3.7 bits/byte: 30 steps must beat it
    assert 1.0 < summary["val_bpb"] < 3.7
    assert Path(summary["model_path"]).is_file()
    # the base model's precision, measured by the probe on this CPU, and the evidence for it
    precision = summary["precision"]
    assert precision["dtype"] in ("fp32", "bf16 autocast")
    assert precision["reason"].startswith(precision["dtype"] + ": bf16 matmul ")
    assert "GFLOP/s" in precision["reason"] and str(tmp_path / "cache") in precision["reason"]
    report = (out / "report.md").read_text()
    assert precision["reason"] in report
    assert "bits per byte" in report and "ROMEO" in report
    # the SFT stage: a chat model carrying its template, with held-out skills scored before and after
    sft = summary["sft"]
    assert sft["steps"] == 6 and sft["skills_before"]["tasks"] == sft["skills_after"]["tasks"] > 0
    assert "SFT" in report and "held-out skill" in report
    # the RL stage ran on the SFT assistant, and the report puts every stage side by side
    rl = summary["rl"]
    assert rl["steps"] == 2 and rl["rollouts"] == 2 * 2 * 2
    assert rl["skills_after"]["tasks"] == sft["skills_after"]["tasks"]
    assert "| held-out skill | tasks | base | SFT | SFT + RL |" in report
    assert (out / "loss.png").is_file() and (out / "data" / "manifest.json").is_file()
    assert (
        "## Benchmarks" in report and "| quotes | accuracy |" in report
    )  # the cheap built-in benchmarks ran
    from twofiles.eval.report import write_report

    write_report(out)  # the report card rebuilds the same report from the run directory alone
    assert (out / "report.md").read_text() == report

    from twofiles.artifact import load_model

    loaded = load_model(summary["model_path"])
    assert loaded.provenance["speedrun"] == "tiny"
    chat_model = load_model(summary["chat_model_path"])
    assert (
        chat_model.chat_template
        and chat_model.provenance["stage"] == "rl"
        and chat_model.provenance["speedrun"] == "tiny"
        and chat_model.provenance["base_provenance"]["stage"] == "sft"
    )
    # the file is self-contained: the tokenizer inside it round-trips text
    assert (
        loaded.tokenizer.decode(loaded.tokenizer.encode("Wherefore art thou"))
        == "Wherefore art thou"
    )
    # the model file drives `generate`
    g = subprocess.run(
        [
            sys.executable,
            "-m",
            "twofiles",
            "generate",
            summary["model_path"],
            "--prompt",
            "ROMEO.",
            "--max-tokens",
            "8",
            "--seed",
            "1",
            "--json",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert g.returncode == 0, g.stderr
    gen = json.loads(g.stdout.strip().splitlines()[-1])
    assert 1 <= gen["tokens"] <= 8 and gen["text"] in g.stdout


def test_a_second_speedrun_replaces_the_first_and_keeps_other_files(tmp_path: Path) -> None:
    from twofiles.presets import get_preset
    from twofiles.speedrun import run_speedrun

    out = tmp_path / "run"
    first = run_speedrun(get_preset("tiny"), out, progress=False, overrides={"max_steps": 3})
    assert (out / "sft" / "model.safetensors").is_file()
    (out / "notes.txt").write_text("mine")
    second = run_speedrun(
        get_preset("tiny"), out, progress=False, overrides={"max_steps": 4}, sft_stage=False
    )
    assert (first.steps, second.steps) == (3, 4)
    assert (out / "notes.txt").read_text() == "mine"
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step_0000004.safetensors"]
    assert (
        not (out / "sft").exists() and second.sft is None
    )  # the first run's SFT stage went with it


def test_speedrun_refuses_a_directory_holding_another_run(tmp_path: Path) -> None:
    from twofiles.errors import TwofilesError
    from twofiles.presets import get_preset
    from twofiles.speedrun import run_speedrun

    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / "step_0000100.safetensors").write_bytes(b"an hour of pretraining")
    (out / "config.json").write_text('{"data": "mine"}')
    with pytest.raises(TwofilesError, match="not a speedrun's"):
        run_speedrun(get_preset("tiny"), out, progress=False, overrides={"max_steps": 2})
    assert (
        out / "checkpoints" / "step_0000100.safetensors"
    ).read_bytes() == b"an hour of pretraining"
    assert (out / "config.json").read_text() == '{"data": "mine"}'
    assert sorted(p.name for p in out.iterdir()) == ["checkpoints", "config.json"]
