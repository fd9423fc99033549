"""Scaling laws: the plan's grid, running points through the real CLI (skip, resume, printed
commands), the Chinchilla fit on data drawn from a known law, isoFLOP minima, the held-out
prediction, the report, and bad input."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from twofiles.cli import main
from twofiles.errors import BadInputError
from twofiles.presets import get_preset
from twofiles.scaling import fit as sf
from twofiles.scaling import plan as pl
from twofiles.scaling.runner import point_state, read_results, write_results

TRUE = {"E": 1.9, "A": 300.0, "B": 900.0, "alpha": 0.36, "beta": 0.31}
THETA = [math.log(TRUE["A"]), math.log(TRUE["B"]), math.log(TRUE["E"]), TRUE["alpha"], TRUE["beta"]]


def _recipe() -> dict:
    return pl.recipe_from_preset(get_preset("cpu-5min"))


def test_plan_grid_counts_and_span() -> None:
    recipe = _recipe()
    sweep = pl.make_plan(recipe, "data")
    grid = [p for p in sweep.points if not p.heldout]
    held = [p for p in sweep.points if p.heldout]
    depths = sorted({p.depth for p in grid})
    assert len(depths) >= 6 and len(held) == 1
    for d in depths:
        assert len({p.tokens for p in grid if p.depth == d}) >= 4
    n = [p.n_nonembed for p in grid]
    assert max(n) / min(n) >= 30
    assert held[0].n_all > max(p.n_all for p in grid)  # larger than anything the fit sees
    for p in sweep.points:
        cfg = pl.model_config(recipe, p.depth)
        assert p.n_all == cfg.num_params()
        assert p.n_matmul == cfg.num_params(embeddings=False)
        assert p.n_nonembed == cfg.num_params(embeddings=False) - cfg.vocab_size * cfg.dim
        assert p.tokens == p.steps * recipe["batch_size"] * recipe["seq_len"]
        assert p.flops == pytest.approx(6 * p.n_matmul * p.tokens)
        assert p.run_dir == f"points/{p.name}"
    # the recipe is the preset's, not a copy of its numbers
    assert recipe["optim"] == get_preset("cpu-5min").optim


def test_plan_isoflop() -> None:
    recipe = _recipe()
    budgets = (1e12, 4e12)
    sweep = pl.make_plan(recipe, "data", isoflop=budgets)
    iso = [p for p in sweep.points if not p.heldout]
    assert {p.isoflop for p in iso} == set(budgets)
    tps = recipe["batch_size"] * recipe["seq_len"]
    for p in iso:  # D = C / 6N up to rounding to whole steps
        assert abs(6 * p.n_matmul * p.tokens - p.isoflop) <= 6 * p.n_matmul * tps / 2 + 1


def test_plan_cli_and_bad_sweeps(tmp_path, tiny_data, capsys) -> None:
    out = tmp_path / "sw"
    assert main(["scaling", "plan", "--out", str(out), "--data", str(tiny_data), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert doc["points"] == 24 and doc["span_nonembed"] >= 30
    assert pl.read_sweep(out).recipe["vocab_size"] == 512  # the data's vocabulary
    # a second plan into the same directory is refused
    assert main(["scaling", "plan", "--out", str(out), "--data", str(tiny_data)]) == 2
    # missing and corrupt sweep.json: a clear error naming the file, exit 2
    with pytest.raises(BadInputError, match="no sweep.json"):
        pl.read_sweep(tmp_path / "nowhere")
    (out / "sweep.json").write_text('{"recipe": {}, "points": [')
    with pytest.raises(BadInputError, match="sweep.json: not valid JSON"):
        pl.read_sweep(out)
    (out / "sweep.json").write_text('{"recipe": {}, "points": [{"name": 1}]}')
    with pytest.raises(BadInputError, match="not a sweep plan"):
        pl.read_sweep(out)
    assert main(["scaling", "run", str(out)]) == 2
    assert "not a sweep plan" in capsys.readouterr().err


def _wait_for(cond, timeout: float = 120.0) -> None:
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout:
            raise AssertionError("timed out")
        time.sleep(0.05)


@pytest.mark.slow
def test_run_points_skip_resume_and_commands(tmp_path, tiny_data, capsys) -> None:
    """Three tiny points through the real CLI: one run from its printed command, one killed
    mid-run and resumed, and a re-run that skips them all."""
    sw = tmp_path / "sw"
    argv = ["scaling", "plan", "--out", str(sw), "--data", str(tiny_data), "--preset", "tiny"]
    # tiny: 8 x 128 tokens per step; the held-out point is long enough to be killed mid-run
    argv += ["--sizes", "1", "--tokens", "2048,3072", "--heldout", "2:153600"]
    assert main(argv) == 0
    capsys.readouterr()
    sweep = pl.read_sweep(sw)
    assert [p.name for p in sweep.points] == ["d1-s2", "d1-s3", "d2-s150"]

    assert main(["scaling", "run", str(sw), "--print-commands", "--threads", "1"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3
    subprocess.run(lines[0], shell=True, check=True)  # as a scheduler would run it
    assert point_state(sw, sweep.points[0]).state == "done"

    # kill the runner while the long point trains: its child checkpoints and the point resumes
    cmd = [sys.executable, "-m", "twofiles", "scaling", "run", str(sw), "--threads", "1"]
    runner = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    metrics = sw / "points" / "d2-s150" / "metrics.jsonl"
    _wait_for(lambda: metrics.is_file() and metrics.read_text().count('"step"') >= 2)
    runner.send_signal(signal.SIGTERM)
    runner.wait(timeout=120)
    assert point_state(sw, sweep.points[2]).state == "killed"
    assert point_state(sw, sweep.points[1]).state == "done"

    assert main(["scaling", "run", str(sw), "--threads", "1", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["done"] == 3 and summary["ran"] == 1 and not summary["failed"]
    assert "resumed from" in (sw / "points" / "d2-s150" / "pretrain.log").read_text()
    rows = read_results(sw)
    assert [r["name"] for r in rows] == ["d1-s2", "d1-s3", "d2-s150"]
    for r in rows:
        assert r["val_loss"] > 0 and r["val_bpb"] > 0 and r["tokens_per_s"] > 0
    assert rows[2]["heldout"] and rows[2]["steps"] == 150

    assert main(["scaling", "run", str(sw), "--json"]) == 0  # everything done: nothing runs
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["skipped"] == 3 and summary["ran"] == 0
    assert main(["scaling", "run", str(sw), "--print-commands"]) == 0
    assert capsys.readouterr().out.strip() == ""


def _synthetic(noise: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    n = np.repeat(np.geomspace(1e4, 3e6, 6), 5)
    d = np.tile(np.geomspace(4e4, 1.2e6, 5), 6)
    loss = sf.law(THETA, n, d) * np.exp(rng.normal(0, noise, n.size))
    return n, d, loss


@pytest.mark.slow
def test_fit_recovers_a_known_law_and_its_intervals_cover_it() -> None:
    n, d, loss = _synthetic(0.002)
    theta, _ = sf.fit_law(n, d, loss)
    c = sf.constants(theta)
    assert c["alpha"] == pytest.approx(TRUE["alpha"], abs=0.03)
    assert c["beta"] == pytest.approx(TRUE["beta"], abs=0.03)
    assert c["E"] == pytest.approx(TRUE["E"], rel=0.05)
    assert c["A"] == pytest.approx(TRUE["A"], rel=0.6)  # A, B trade off against the exponents
    assert c["B"] == pytest.approx(TRUE["B"], rel=0.6)
    boots = sf.bootstrap(n, d, loss, theta, 40, seed=1)
    iv = sf.intervals(boots)
    for k in ("E", "alpha", "beta"):
        assert iv[k][0] <= TRUE[k] <= iv[k][1], (k, iv[k])
    # exact data: the fit finds the law itself
    theta0, _ = sf.fit_law(n, d, sf.law(THETA, n, d))
    assert sf.constants(theta0)["alpha"] == pytest.approx(TRUE["alpha"], abs=1e-3)


def test_isoflop_minimum_on_a_known_law() -> None:
    """The parabola's minimum lands near the law's own compute-optimal N."""
    n = np.geomspace(2e4, 2e7, 10)
    d = np.geomspace(1e4, 1e8, 12)
    rows = [
        {"n_all": int(a), "tokens": float(b), "val_loss": float(sf.law(THETA, a, b))}
        for a in n
        for b in d
    ]
    c = 6 * 3e5 * 3e6
    (curve,) = sf.isoflop_curves(rows, "n_all", budgets=[c])
    n_opt, _ = sf.optimal_allocation(TRUE, c)
    assert curve["inside"]
    assert curve["n_opt"] == pytest.approx(n_opt, rel=0.25)
    # several budgets: the power law of N_opt(C) has the law's exponent beta / (alpha + beta)
    curves = sf.isoflop_curves(rows, "n_all", budgets=[c / 10, c, c * 10])
    s = sf.isoflop_summary(curves)
    assert s["n_opt"]["p"] == pytest.approx(TRUE["beta"] / (TRUE["alpha"] + TRUE["beta"]), abs=0.08)


def _fake_sweep(tmp_path: Path, *, with_results: bool = True) -> Path:
    """A real plan whose results are drawn from the known law (no training)."""
    sw = tmp_path / "fake"
    recipe = _recipe()
    sweep = pl.make_plan(recipe, "data")
    pl.write_sweep(sw, sweep)
    if with_results:
        rng = np.random.default_rng(3)
        rows = []
        for p in sweep.points:
            loss = float(sf.law(THETA, p.n_nonembed, p.tokens)) * math.exp(rng.normal(0, 0.002))
            fpt = pl.model_config(recipe, p.depth).flops_per_token(recipe["seq_len"])
            rows.append({"name": p.name, "depth": p.depth, "steps": p.steps, "tokens": p.tokens,
                         "n_all": p.n_all, "n_matmul": p.n_matmul, "n_nonembed": p.n_nonembed,
                         "flops": p.flops, "heldout": p.heldout, "isoflop": None,
                         "val_loss": loss, "val_bpb": loss * 0.45, "tokens_per_s": 1 / (2e-5 + fpt / 3e10),
                         "train_s": 1.0, "wall_s": 2.0})  # fmt: skip
        write_results(sw, rows)
    return sw


@pytest.mark.slow
def test_fit_cli_predicts_the_heldout_point_and_reports(tmp_path, capsys) -> None:
    sw = _fake_sweep(tmp_path)
    argv = ["scaling", "fit", str(sw), "--bootstrap", "10", "--budget-s", "290", "--json"]
    assert main(argv) == 0
    doc = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert abs(doc["heldout"]["rel_err"]) < 0.01
    assert doc["law"]["alpha"] == pytest.approx(TRUE["alpha"], abs=0.05)
    best = doc["budget"]["best"]
    assert best["loss"] == min(r["loss"] for r in sf.read_fit(sw)["budget"]["table"])
    assert main(["scaling", "report", str(sw), "--json"]) == 0
    rep = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert len(rep["plots"]) == 4 and all(Path(p).stat().st_size > 1000 for p in rep["plots"])
    text = (sw / "report.md").read_text()
    assert "Chinchilla" in text and "Besiroglu" in text and "Kaplan" in text and "held-out" in text


def test_fit_bad_input(tmp_path, capsys) -> None:
    sw = _fake_sweep(tmp_path, with_results=False)
    assert main(["scaling", "fit", str(sw)]) == 2
    assert "no results yet" in capsys.readouterr().err
    write_results(sw, [{"name": "d9-s1", "val_loss": 5.0, "tokens": 1, "n_all": 1}])
    with pytest.raises(BadInputError, match="a point the plan does not have"):
        sf.fit_sweep(sw, bootstrap_rounds=0)
    (sw / "results.jsonl").write_text('{"name": "d1-s20"}\n')
    with pytest.raises(BadInputError, match=r"results.jsonl:1: not a sweep result"):
        sf.fit_sweep(sw, bootstrap_rounds=0)
    assert main(["scaling", "report", str(sw)]) == 2
    assert "no fit.json" in capsys.readouterr().err
