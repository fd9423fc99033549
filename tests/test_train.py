"""Pretraining: schedules, Muon, the loader, bits per byte, checkpoints, exact resume after a
kill, and DDP equivalence (2 gloo processes == 1 process at the same global batch)."""

from __future__ import annotations

import itertools
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from twofiles.data.shards import BatchLoader, TokenStream, eval_windows
from twofiles.model import ModelConfig, Transformer
from twofiles.optim import OptimConfig, build_optimizers, lr_factor, zeropower_newton_schulz
from twofiles.train.checkpoint import list_checkpoints, load_checkpoint, save_checkpoint

PY = sys.executable


def tiny_model(vocab: int = 64, seed: int = 0, tie: bool = False) -> Transformer:
    cfg = ModelConfig(
        vocab_size=vocab,
        dim=32,
        n_layers=2,
        n_heads=4,
        n_kv_heads=2,
        hidden_dim=64,
        max_seq_len=32,
        tie_embeddings=tie,
    )
    m = Transformer(cfg)
    m.init_weights(seed)
    return m


def records(run: Path) -> list[tuple]:
    """Every metrics record without its timings: what a resumed run must reproduce exactly."""
    timing = {"time", "tok_s", "eval_seconds"}
    return [
        tuple(sorted((k, v) for k, v in json.loads(ln).items() if k not in timing))
        for ln in (run / "metrics.jsonl").read_text().splitlines()
    ]


def losses(run: Path) -> dict[int, float]:
    out = {}
    for line in (run / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if "loss" in rec:
            out[rec["step"]] = rec["loss"]
    return out


# --- schedules and optimizers ---


def test_wsd_and_cosine_schedules_known_values() -> None:
    wsd = OptimConfig(schedule="wsd", warmup_steps=10, decay_frac=0.5, min_lr_frac=0.0)
    assert lr_factor(0, 100, wsd) == pytest.approx(0.1)
    assert lr_factor(9, 100, wsd) == pytest.approx(1.0)
    assert lr_factor(49, 100, wsd) == 1.0
    assert lr_factor(75, 100, wsd) == pytest.approx(0.5)
    assert lr_factor(100, 100, wsd) == 0.0
    cos = OptimConfig(schedule="cosine", warmup_steps=0, min_lr_frac=0.1)
    assert lr_factor(0, 100, cos) == pytest.approx(1.0)
    assert lr_factor(50, 100, cos) == pytest.approx(0.55)
    assert lr_factor(100, 100, cos) == pytest.approx(0.1)


def test_newton_schulz_orthogonalises() -> None:
    g = torch.randn(48, 96, generator=torch.Generator().manual_seed(0))
    x = zeropower_newton_schulz(g)
    s = torch.linalg.svdvals(x)
    # the quintic iteration trades exactness for speed: singular values land in ~[0.7, 1.2]
    assert s.min() > 0.5 and s.max() < 1.3
    assert (
        torch.linalg.svdvals(g).max() / torch.linalg.svdvals(g).min() > 3
    )  # the input was far from orthogonal
    assert zeropower_newton_schulz(g.T).shape == (96, 48)


def test_parameter_groups_cover_every_parameter_once() -> None:
    for tie in (False, True):
        m = tiny_model(tie=tie)
        for name in ("muon", "adamw"):
            opts = build_optimizers(m, OptimConfig(optimizer=name))
            ids = [id(p) for o in opts for g in o.param_groups for p in g["params"]]
            assert len(ids) == len(set(ids))
            assert set(ids) == {id(p) for p in m.parameters()}
            if name == "muon":  # Muon only ever sees hidden 2-D matrices
                assert all(p.ndim == 2 for g in opts[1].param_groups for p in g["params"])


def test_muon_and_adamw_both_learn() -> None:
    x = torch.randint(0, 64, (8, 16), generator=torch.Generator().manual_seed(1))
    for name in ("muon", "adamw"):
        m = tiny_model()
        opts = build_optimizers(m, OptimConfig(optimizer=name, lr=1e-2, matrix_lr=0.05))
        first = None
        for _ in range(30):
            loss = m(x[:, :-1], x[:, 1:])
            loss.backward()
            for o in opts:
                o.step()
                o.zero_grad()
            first = first if first is not None else loss.item()
        assert loss.item() < first - 1.0, name


# --- data loader ---


def test_loader_ranks_partition_the_global_batch(tiny_data: Path) -> None:
    stream = TokenStream(tiny_data, "train")
    one = BatchLoader(stream, 4, 16, seed=3, rank=0, world_size=1)
    r0 = BatchLoader(stream, 2, 16, seed=3, rank=0, world_size=2)
    r1 = BatchLoader(stream, 2, 16, seed=3, rank=1, world_size=2)
    for _ in range(5):
        x, y = one.next_batch()
        x0, _ = r0.next_batch()
        x1, _ = r1.next_batch()
        assert np.array_equal(x, np.concatenate([x0, x1]))
        assert np.array_equal(x[:, 1:], y[:, :-1])  # targets are the inputs shifted by one


def test_loader_resumes_exactly_and_reshuffles_each_epoch(tiny_data: Path) -> None:
    stream = TokenStream(tiny_data, "train")
    a = BatchLoader(stream, 8, 32, seed=0)
    per_epoch = a.n_windows // 8
    seen = [a.next_batch()[0] for _ in range(per_epoch)]
    b = BatchLoader(stream, 8, 32, seed=0)
    b.load_state_dict(json.loads(json.dumps(a.state_dict())))
    nxt_a, nxt_b = a.next_batch()[0], b.next_batch()[0]
    assert np.array_equal(nxt_a, nxt_b)
    assert a.epoch == 1 and not np.array_equal(nxt_a, seen[0])  # a new epoch, a new order


def test_eval_windows_score_each_target_once(tiny_data: Path) -> None:
    stream = TokenStream(tiny_data, "val")
    w = eval_windows(stream, 100)
    assert sum(n for _, n in w) == len(stream) - 1
    assert all(s == i * 100 for i, (s, _) in enumerate(w))


# --- bits per byte: a known answer ---


def test_bits_per_byte_of_a_uniform_model_is_log2_vocab_times_tokens_per_byte(
    tiny_data: Path,
) -> None:
    from twofiles.eval.bpb import evaluate_bpb
    from twofiles.runtime import setup
    from twofiles.tokenizer import Tokenizer

    tok = Tokenizer.load(tiny_data / "tokenizer.json")
    stream = TokenStream(tiny_data, "val")
    m = tiny_model(vocab=tok.vocab_size)
    with torch.no_grad():
        m.lm_head.weight.zero_()  # every logit 0: loss is exactly ln V for every token
    tb = torch.from_numpy(tok.token_bytes().astype(np.int64))
    loss, bpb = evaluate_bpb(
        m, stream, tb, setup("cpu", "fp32"), seq_len=32, batch_size=8, max_tokens=None
    )
    targets = stream.get(1, len(stream) - 1)
    nbytes = tb.numpy()[targets]
    assert loss == pytest.approx(math.log(tok.vocab_size), rel=1e-6)
    assert bpb == pytest.approx(
        math.log2(tok.vocab_size) * (nbytes > 0).sum() / nbytes.sum(), rel=1e-6
    )


# --- checkpoints ---


def test_checkpoint_round_trip_restores_everything(tmp_path: Path) -> None:
    torch.manual_seed(0)
    m = tiny_model(tie=True)
    opts = build_optimizers(m, OptimConfig())
    x = torch.randint(0, 64, (4, 16))
    for _ in range(3):
        m(x[:, :-1], x[:, 1:]).backward()
        for o in opts:
            o.step()
            o.zero_grad()
    save_checkpoint(tmp_path, 3, m, opts, {"loader": {"epoch": 0}, "elapsed": 1.5})
    rng_after_save = torch.rand(3)
    m2 = tiny_model(seed=99, tie=True)
    opts2 = build_optimizers(m2, OptimConfig())
    state = load_checkpoint(list_checkpoints(tmp_path)[-1], m2, opts2)
    assert state["step"] == 3 and state["elapsed"] == 1.5
    assert torch.equal(torch.rand(3), rng_after_save)  # RNG restored to the moment of saving
    for (k, a), (_, b) in zip(m.state_dict().items(), m2.state_dict().items()):
        assert torch.equal(a, b), k
    assert m2.lm_head.weight is m2.model.embed_tokens.weight
    for o, o2 in zip(opts, opts2):  # same next step from both
        for g, g2 in zip(o.param_groups, o2.param_groups):
            assert g["lr"] == g2["lr"]
    for mm, oo in ((m, opts), (m2, opts2)):
        mm(x[:, :-1], x[:, 1:]).backward()
        for o in oo:
            o.step()
    for a, b in zip(m.parameters(), m2.parameters()):
        assert torch.equal(a, b)


def test_only_newest_checkpoints_are_kept_and_temp_files_are_ignored(tmp_path: Path) -> None:
    m = tiny_model()
    opts = build_optimizers(m, OptimConfig())
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, step, m, opts, {}, keep=2)
    (tmp_path / ".step_0000004.safetensors.123.tmp").write_bytes(b"half-written")
    assert [p.name for p in list_checkpoints(tmp_path)] == [
        "step_0000002.safetensors",
        "step_0000003.safetensors",
    ]


# --- the real loop, end to end ---


def _pretrain_cmd(data: Path, out: Path, *extra: str) -> list[str]:
    return [
        PY,
        "-m",
        "twofiles",
        "pretrain",
        "--data",
        str(data),
        "--out",
        str(out),
        "--preset",
        "tiny",
        "--threads",
        "1",
        "--batch-size",
        "4",
        "--seq-len",
        "32",
        "--eval-interval",
        "0",
        "--no-progress",
        *extra,
    ]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}


def test_pretrain_cli_writes_a_complete_run(tiny_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    p = subprocess.run(
        _pretrain_cmd(tiny_data, out, "--max-steps", "6", "--json"),
        capture_output=True,
        text=True,
        env=_env(),
        timeout=300,
    )
    assert p.returncode == 0, p.stderr
    summary = json.loads(p.stdout.strip().splitlines()[-1])
    assert summary["steps"] == 6 and 0 < summary["val_bpb"] < 20
    for name in ("config.json", "metrics.jsonl", "loss.png", "model.safetensors", "report.md"):
        assert (out / name).is_file(), name
    report = (out / "report.md").read_text()
    assert "Pretrain report" in report and "bits per byte" in report
    # `twofiles report` rebuilds the same report from the run's own records
    (out / "report.md").unlink()
    r = subprocess.run(
        [PY, "-m", "twofiles", "report", str(out)], capture_output=True, text=True, env=_env()
    )
    assert r.returncode == 0, r.stderr
    assert (out / "report.md").read_text() == report
    assert (out / "loss.png").read_bytes()[:4] == b"\x89PNG"
    from twofiles.artifact import load_model

    loaded = load_model(out / "model.safetensors")
    assert loaded.provenance["stage"] == "pretrain" and loaded.provenance["steps"] == 6
    assert loaded.tokenizer.vocab_size == loaded.model.config.vocab_size
    # a second run into the same directory must not silently overwrite the first
    p2 = subprocess.run(
        _pretrain_cmd(tiny_data, out, "--max-steps", "6"),
        capture_output=True,
        text=True,
        env=_env(),
        timeout=300,
    )
    assert p2.returncode == 2 and "--resume" in p2.stderr


def test_killed_run_resumes_with_the_same_loss_sequence(tiny_data: Path, tmp_path: Path) -> None:
    steps = [
        "--max-steps",
        "16",
        "--checkpoint-interval",
        "4",
        "--eval-interval",
        "4",
        "--eval-tokens",
        "256",
    ]
    ref = tmp_path / "ref"
    subprocess.run(
        _pretrain_cmd(tiny_data, ref, *steps),
        check=True,
        capture_output=True,
        env=_env(),
        timeout=300,
    )
    run = tmp_path / "killed"
    proc = subprocess.Popen(
        _pretrain_cmd(tiny_data, run, *steps),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=_env(),
    )
    deadline = time.time() + 240
    while (
        time.time() < deadline and not (run / "checkpoints" / "step_0000008.safetensors").exists()
    ):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)  # no chance to clean up: the hard case
    proc.wait()
    assert list_checkpoints(run / "checkpoints"), "the run was killed before its first checkpoint"
    assert not (run / "model.safetensors").exists(), (
        "the run finished before the kill: nothing was resumed"
    )
    p = subprocess.run(
        _pretrain_cmd(tiny_data, run, *steps, "--resume"),
        capture_output=True,
        text=True,
        env=_env(),
        timeout=300,
    )
    assert p.returncode == 0, p.stderr
    assert "resumed from" in p.stderr
    assert losses(run) == losses(ref)  # bit-for-bit, every step
    assert records(run) == records(ref)  # and every evaluation, once, with the same values


@pytest.mark.parametrize(
    ("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"]
)
def test_ctrl_c_saves_a_checkpoint_and_resume_finishes_like_an_uninterrupted_run(
    tiny_data: Path, tmp_path: Path, sig: signal.Signals, code: int
) -> None:
    """Ctrl-C, or a scheduler's SIGTERM: the step finishes, a checkpoint is saved, the exit code
    is the shell's for that signal (128 + its number), and --resume ends as if never stopped."""
    steps = ["--max-steps", "120", "--eval-interval", "40", "--eval-tokens", "256"]
    ref = tmp_path / "ref"
    subprocess.run(
        _pretrain_cmd(tiny_data, ref, *steps), check=True, capture_output=True, env=_env()
    )
    run = tmp_path / "run"
    proc = subprocess.Popen(
        _pretrain_cmd(tiny_data, run, *steps),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    deadline = time.time() + 120
    metrics = run / "metrics.jsonl"
    while time.time() < deadline and not (
        metrics.exists() and metrics.read_text().count("\n") >= 3
    ):
        time.sleep(0.02)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    assert "checkpoint saved" in err and "--resume" in err
    (ckpt,) = list_checkpoints(run / "checkpoints")  # the default 60 s timer has not fired
    stopped_at = int(ckpt.stem.split("_")[1])
    assert 0 < stopped_at < 120, "the run finished before the signal: nothing was interrupted"
    assert not (run / "model.safetensors").exists()
    assert f"at step {stopped_at}" in (run / "report.md").read_text()
    # a resume that would change the run is refused, naming every conflicting flag
    bad = subprocess.run(
        _pretrain_cmd(tiny_data, run, *steps, "--resume", "--lr", "0.01", "--seed", "7"),
        capture_output=True,
        text=True,
        env=_env(),
    )
    assert bad.returncode == 2
    assert "--lr" in bad.stderr and "--seed" in bad.stderr and "7" in bad.stderr
    assert "--max-steps" not in bad.stderr  # a run-control flag: it may change
    p = subprocess.run(
        _pretrain_cmd(tiny_data, run, *steps, "--resume"),
        capture_output=True,
        text=True,
        env=_env(),
    )
    assert p.returncode == 0, p.stderr
    assert losses(run) == losses(ref) and records(run) == records(ref)
    from safetensors.torch import load_file

    a, b = load_file(ref / "model.safetensors"), load_file(run / "model.safetensors")
    assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)


def test_a_second_ctrl_c_stops_at_once() -> None:
    from twofiles.train.runctl import StopSignals

    said: list[str] = []
    stop = StopSignals(said.append)
    stop.install()
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested and stop.signum == signal.SIGTERM and "checkpoint" in said[0]
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    finally:
        stop.restore()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_time_budget_schedule_follows_the_measured_speed() -> None:
    """A simulated clock: 100 steps/s, then 4x slower from 6 s into a 20 s budget. The length is
    re-planned every step, the run ends on its budget, and the LR never rises after warm-up."""
    from twofiles.train.runctl import Planner

    optim = OptimConfig(schedule="wsd", warmup_steps=5, decay_frac=0.4)
    plan = Planner(optim, max_steps=10, time_budget_s=20.0, reserve_s=lambda per_step: 1.0)
    t, step, lrs = 0.0, 0, []
    while step < plan.observe(step, t):
        lrs.append(plan.lr(step))
        t += 0.01 if t < 6 else 0.04
        step += 1
    assert 18.9 <= t <= 19.05  # the budget less the 1 s reserve, within a step
    assert step > 900  # 600 fast steps, then ~325 slow ones
    assert all(b <= a for a, b in itertools.pairwise(lrs[5:]))
    assert lrs[4] == 1.0 and lrs[-1] < 0.01
    state = plan.state_dict()  # what a checkpoint keeps: a resumed run goes on from there
    again = Planner(optim, max_steps=10, time_budget_s=20.0)
    again.load_state_dict(state)
    assert again.state_dict() == state


def test_time_budget_leaves_the_first_step_out_of_the_rate() -> None:
    """A simulated clock whose first step takes 25 s (a compile) and the others 0.01 s, with a
    reserve proportional to the step time (as the final evaluation's): the plan follows the warm
    rate and the run trains its budget out, instead of planning one step and stopping."""
    from twofiles.train.runctl import Planner

    optim = OptimConfig(schedule="wsd", warmup_steps=5, decay_frac=0.4)
    plan = Planner(
        optim, max_steps=10, time_budget_s=60.0, reserve_s=lambda per_step: 100 * per_step
    )
    t, step = 0.0, 0
    while step < plan.observe(step, t):
        t += 25.0 if step == 0 else 0.01
        step += 1
    assert step > 3000  # (60 - 25 - 1) s at 100 steps/s
    assert 58.9 <= t <= 59.05  # the budget less the 1 s reserve


@pytest.mark.slow
def test_ddp_two_processes_match_one_process(tiny_data: Path, tmp_path: Path) -> None:
    common = ["--max-steps", "5", "--seq-len", "32", "--grad-clip", "1.0"]
    single = tmp_path / "single"
    cmd1 = _pretrain_cmd(tiny_data, single, *common)
    cmd1[cmd1.index("--batch-size") + 1] = "8"
    subprocess.run(cmd1, check=True, capture_output=True, env=_env(), timeout=300)
    ddp = tmp_path / "ddp"
    cmd2 = [
        PY,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "--master-port",
        "29533",
        "-m",
        "twofiles",
        *_pretrain_cmd(tiny_data, ddp, *common)[3:],
    ]
    p = subprocess.run(cmd2, capture_output=True, text=True, env=_env(), timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    a, b = losses(single), losses(ddp)
    assert a.keys() == b.keys() and len(a) == 5
    for k in a:
        assert b[k] == pytest.approx(a[k], rel=1e-4, abs=1e-5), k
    assert (ddp / "model.safetensors").is_file()


# --- golden losses: the loop's numbers, pinned ---

# A tiny-preset run, 8 steps, fp32, 1 thread. The tolerance absorbs BLAS differences between CPUs
# (AVX2 vs AVX-512/AMX kernels sum in different orders, ~1e-6 relative over 8 steps) and still
# catches a real change: one step more or less of warm-up moves these by > 1e-3.
GOLDEN_PRETRAIN = {1: 6.237728, 4: 6.218393, 8: 6.131934}
GOLDEN_PRETRAIN_VAL = 6.104246


def golden_pretrain_config(data: Path, out: Path, **over: object) -> object:
    from twofiles.presets import get_preset
    from twofiles.train.pretrain import PretrainConfig

    preset = get_preset("tiny")
    cfg = PretrainConfig(
        data=str(data), out=str(out), model=preset.model_config(), optim=preset.optim_config()
    )
    for k, v in {**preset.train, **over}.items():
        setattr(cfg, k, v)
    cfg.batch_size, cfg.seq_len, cfg.threads, cfg.device, cfg.dtype = 4, 64, 1, "cpu", "fp32"
    cfg.eval_tokens = cfg.final_eval_tokens = 2048
    cfg.progress = False
    return cfg


def test_golden_pretrain_losses(tiny_data: Path, tmp_path: Path) -> None:
    from twofiles.train.pretrain import pretrain

    res = pretrain(golden_pretrain_config(tiny_data, tmp_path / "run", max_steps=8))
    got = losses(tmp_path / "run")
    assert res.steps == 8 and sorted(got) == list(range(1, 9))
    for step, want in GOLDEN_PRETRAIN.items():
        assert got[step] == pytest.approx(want, rel=1e-4), step
    assert res.val_loss == pytest.approx(GOLDEN_PRETRAIN_VAL, rel=1e-4)


# --- a time budget is spent whatever the load ---


def _hogs() -> list[subprocess.Popen]:
    """One busy loop per core: whatever else the machine runs, training now gets a share of it."""
    return [
        subprocess.Popen([PY, "-c", "while True: pass"])
        for _ in range(max(2, len(os.sched_getaffinity(0))))
    ]


def _budgeted_run(tiny_data: Path, out: Path, budget: float, hog_after: float | None) -> None:
    import threading

    from twofiles.train.pretrain import pretrain

    hogs: list[subprocess.Popen] = []
    starter = None
    if hog_after is not None:
        starter = threading.Timer(hog_after, lambda: hogs.extend(_hogs()))
        starter.start()
    try:
        cfg = golden_pretrain_config(tiny_data, out, max_steps=1_000_000, time_budget_s=budget)
        cfg.final_eval_tokens = 0  # the whole validation split: a real reserve to budget for
        res = pretrain(cfg)
    finally:
        if starter is not None:
            starter.cancel()
        for h in hogs:
            h.kill()
            h.wait()
    recs = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    lrs = [r["lr"] for r in recs if "lr" in r]
    # the run ends on its budget (the final evaluation included), not before, not long after
    assert abs(res.train_seconds - budget) < 0.05 * budget, res.train_seconds
    assert res.steps > 50
    # warm-up, then the LR never rises and reaches the floor on time
    warm = cfg.optim.warmup_steps
    assert all(b <= a + 1e-12 for a, b in itertools.pairwise(lrs[warm:]))
    # a stable phase first: a third of the way in (robust to the step rate changing mid-run)
    assert lrs[-1] < 0.05 and lrs[len(lrs) // 3] == 1.0


@pytest.mark.slow
def test_time_budget_is_spent_under_load_from_the_start(tiny_data: Path, tmp_path: Path) -> None:
    _budgeted_run(tiny_data, tmp_path / "run", 20.0, hog_after=0.0)


@pytest.mark.slow
def test_time_budget_is_spent_when_load_starts_mid_run(tiny_data: Path, tmp_path: Path) -> None:
    # the hog starts in WSD's decay phase (after 60% of the run), where the length used to be fixed
    _budgeted_run(tiny_data, tmp_path / "run", 20.0, hog_after=13.0)


# --- the one loop, with an objective of its own ---


class _Regression:
    """A toy objective: least squares on 2 features, with micro-batches of 1 and 3 rows in turn,
    so a step's micro-batches count unevenly."""

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(64, 2, generator=g)
        self.y = self.x @ torch.tensor([2.0, -1.0])
        self.k = 0  # micro-batches served: the resumable position
        self.before: list[int] = []

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        n = 1 if self.k % 2 == 0 else 3
        start = (self.k // 2) * 4 + (0 if n == 1 else 1)  # rows [0], [1:4], [4], [5:8], ...
        self.k += 1
        rows = torch.arange(start, start + n) % len(self.x)
        return self.x[rows], self.y[rows]

    def loss(
        self, model: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor]
    ) -> torch.Tensor:
        x, y = batch
        return ((model(x).squeeze(-1) - y) ** 2).sum()

    def count(self, batch: tuple[torch.Tensor, torch.Tensor]) -> int:
        return len(batch[0])

    def batch_tokens(self, batch: tuple[torch.Tensor, torch.Tensor]) -> int:
        return len(batch[0])

    def step_metrics(self, batches: list) -> dict:
        return {"rows": sum(len(b[0]) for b in batches)}

    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module, final: bool) -> dict[str, float]:
        return {"val_loss": float(((model(self.x).squeeze(-1) - self.y) ** 2).mean())}

    def before_step(self, step: int) -> None:
        self.before.append(step)

    def after_eval(self, step: int, final: bool, periodic: bool, write: object) -> None:
        pass

    def reserve_s(self, per_step: float) -> float:
        return 0.0

    def probe(self, model: torch.nn.Module, per_step: float) -> None:
        pass

    def state_dict(self) -> dict:
        return {"toy": {"k": self.k}}

    def load_state_dict(self, state: dict) -> None:
        self.k = state["toy"]["k"]


def _toy_run(out: Path, steps: int, grad_accum: int, resume: bool = False):
    from twofiles import runtime as rt_mod
    from twofiles.train import loop
    from twofiles.train.runctl import StopSignals

    rt = rt_mod.setup("cpu", "fp32")
    torch.manual_seed(0)
    model = torch.nn.Linear(2, 1, bias=False)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for g in opt.param_groups:
        g["initial_lr"] = 0.1
    optim = OptimConfig(warmup_steps=0, decay_frac=0.0, grad_clip=0.0)
    spec = loop.RunSpec(
        out=out, name="toy", config={"toy": True}, optim=optim, max_steps=steps,
        grad_accum=grad_accum, checkpoint_interval=2, resume=resume, progress=False,
    )  # fmt: skip
    loop.open_run(spec, rt)
    objective = _Regression()
    res = loop.run(spec, objective, rt, StopSignals(), model, model, [opt])
    return res, model, objective


def test_the_loop_weighs_every_counted_item_the_same(tmp_path: Path) -> None:
    # one step of 2 micro-batches (1 row, then 3): the gradient of the mean over all 4 rows
    res, model, objective = _toy_run(tmp_path / "run", steps=1, grad_accum=2)
    ref = _Regression()
    torch.manual_seed(0)
    w = torch.nn.Linear(2, 1, bias=False).weight.detach().clone().requires_grad_(True)
    x, y = ref.x[:4], ref.y[:4]
    ((x @ w.T).squeeze(-1) - y).pow(2).mean().backward()
    assert w.grad is not None
    assert torch.allclose(model.weight, w - 0.1 * w.grad, atol=1e-7)
    assert res.step == 1 and res.tokens == 4 and objective.before == [0]
    assert (tmp_path / "run" / "config.json").is_file()
    recs = [json.loads(ln) for ln in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r.get("rows") for r in recs] == [4, None]  # the objective's own metric, then the eval
    assert recs[-1]["final"] and recs[-1]["val_loss"] == res.last_eval["val_loss"]


def test_the_loop_resumes_an_objective_exactly(tmp_path: Path) -> None:
    import shutil

    ref = tmp_path / "ref"
    _, ref_model, _ = _toy_run(ref, steps=6, grad_accum=2)
    run = tmp_path / "run"
    shutil.copytree(ref, run)
    (run / "checkpoints" / "step_0000006.safetensors").unlink()
    with pytest.raises(Exception, match="--resume"):
        _toy_run(run, steps=6, grad_accum=2)
    res, model, objective = _toy_run(run, steps=6, grad_accum=2, resume=True)
    assert res.step == 6 and objective.before == [4, 5] and objective.k == 12
    assert records(run) == records(ref)
    assert torch.equal(model.weight, ref_model.weight)
    # the checkpoint's state: the loop's run control, the objective's position, the config
    last = list_checkpoints(run / "checkpoints")[-1]
    state = load_checkpoint(last, model, [torch.optim.SGD(model.parameters(), lr=0.1)])
    assert set(state) == {"elapsed", "total_steps", "decay_start", "last_lr", "tokens", "toy"} | {
        "config",
        "step",
    }


@pytest.mark.slow
def test_a_compiled_run_spends_its_time_budget(tiny_data: Path, tmp_path: Path) -> None:
    """The first step pays for torch.compile's compilation (seconds against milliseconds a step):
    the step rate is measured after it, and the evaluation compiles before its cost is probed, so
    a compiled run trains its budget out instead of planning one step and stopping."""
    from twofiles.train.pretrain import pretrain

    budget = 25.0
    cfg = golden_pretrain_config(
        tiny_data, tmp_path / "run", max_steps=1_000_000, time_budget_s=budget
    )
    cfg.compile = True
    res = pretrain(cfg)
    assert res.steps > 50, res.steps
    assert abs(res.train_seconds - budget) < 0.1 * budget, res.train_seconds


def test_no_compiler_means_eager(monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    import torch

    from twofiles.runtime import can_compile

    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    ok, why = can_compile(torch.device("cpu"))
    assert not ok and "no C++ compiler" in why
    monkeypatch.setattr(shutil, "which", lambda name: "/usr/bin/g++" if name == "g++" else None)
    assert can_compile(torch.device("cpu")) == (True, "C++ compiler g++ found")
