"""The precision decision: a measured probe of fp32 and bf16 matmul speed, cached per machine, and
training under the bf16 autocast it chooses (loss falls, weights saved in fp32)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from twofiles import runtime

CPU = torch.device("cpu")


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TWOFILES_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / runtime.PROBE_CACHE_NAME


def fake_timing(monkeypatch: pytest.MonkeyPatch, bf16_speedup: float) -> list[tuple]:
    """Replace the timing function: fp32 runs at 100 GFLOP/s, bf16 at `bf16_speedup` times that.
    Returns the list of calls it sees."""
    calls: list[tuple] = []

    def seconds(shape: tuple[int, int, int], dtype: torch.dtype, budget_s: float) -> float:
        calls.append((shape, dtype))
        flops = 2 * shape[0] * shape[1] * shape[2]
        gflops = 100.0 * (bf16_speedup if dtype == torch.bfloat16 else 1.0)
        return flops / gflops / 1e9

    monkeypatch.setattr(runtime, "matmul_seconds", seconds)
    return calls


def no_timing(monkeypatch: pytest.MonkeyPatch) -> None:
    def seconds(*a: object) -> float:
        raise AssertionError("the probe measured when it should not have")

    monkeypatch.setattr(runtime, "matmul_seconds", seconds)


@pytest.mark.parametrize(
    ("speedup", "bf16"), [(4.2, True), (1.6, True), (1.4, False), (0.9, False), (0.01, False)]
)
def test_the_choice_follows_the_measured_figures(
    cache: Path, monkeypatch: pytest.MonkeyPatch, speedup: float, bf16: bool
) -> None:
    fake_timing(monkeypatch, speedup)
    probe = runtime.probe_precision(2)
    assert probe.fp32_gflops == pytest.approx(100.0, rel=1e-3)
    assert probe.bf16_gflops == pytest.approx(100.0 * speedup, rel=1e-2)
    assert probe.use_bf16 is bf16 and probe.threads == 2
    amp, why = runtime.precision_for(CPU, "auto", threads=2)
    assert amp == (torch.bfloat16 if bf16 else None)
    # the reason is the evidence: both figures, the ratio against the threshold, threads, CPU
    assert f"vs fp32 {probe.fp32_gflops:.0f} GFLOP/s" in why and "at 2 threads" in why
    assert f"{runtime.BF16_MIN_SPEEDUP}x" in why and runtime.cpu_identity()[0] in why
    assert str(cache) in why
    assert probe.reason().startswith("bf16 autocast: " if bf16 else "fp32: ")


def test_an_emulated_bf16_is_found_out_at_the_small_shape(
    cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = fake_timing(monkeypatch, 0.01)
    probe = runtime.probe_precision(1)
    assert not probe.use_bf16
    assert {shape for shape, _ in calls} == {(256, 256, 256)}  # never the slow full-size kernel


def test_the_cache_round_trips_keyed_by_threads_and_cpu(
    cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_timing(monkeypatch, 4.0)
    first = runtime.probe_precision(2)
    assert not first.from_cache and first.cache_path == str(cache)
    assert len(json.loads(cache.read_text())) == 1

    no_timing(monkeypatch)
    again = runtime.probe_precision(2)
    assert again.from_cache
    assert (again.fp32_gflops, again.bf16_gflops, again.probed_at) == (
        first.fp32_gflops,
        first.bf16_gflops,
        first.probed_at,
    )

    calls = fake_timing(monkeypatch, 1.0)  # another thread count is another measurement
    assert not runtime.probe_precision(1).use_bf16 and calls
    assert runtime.probe_precision(2).use_bf16  # ... and the first one is still there
    calls.clear()
    monkeypatch.setattr(runtime, "cpu_identity", lambda: ("Other CPU 9000", ("avx2",)))
    other = runtime.probe_precision(2)  # another CPU (a copied home directory) is never trusted
    assert calls and not other.use_bf16 and other.cpu == "Other CPU 9000"
    assert len(json.loads(cache.read_text())) == 3


@pytest.mark.parametrize(
    "damage", ["{not json", "[1, 2]", '{"%s": {"fp32_gflops": "x"}}', '{"%s": 7}']
)
def test_a_damaged_cache_is_probed_again(
    cache: Path, monkeypatch: pytest.MonkeyPatch, damage: str
) -> None:
    fake_timing(monkeypatch, 4.0)
    runtime.probe_precision(1)
    key = next(iter(json.loads(cache.read_text())))
    cache.write_text(damage.replace("%s", key) if "%s" in damage else damage)
    calls = fake_timing(monkeypatch, 4.0)
    probe = runtime.probe_precision(1)
    assert calls and not probe.from_cache and probe.use_bf16
    assert json.loads(cache.read_text())[key]["fp32_gflops"] == pytest.approx(100.0, rel=1e-3)


def test_forced_dtypes_win_without_probing(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    no_timing(monkeypatch)
    assert runtime.precision_for(CPU, "fp32") == (None, "requested")
    assert runtime.precision_for(CPU, "bf16") == (torch.bfloat16, "requested")
    rt = runtime.setup("cpu", "bf16", 1)
    assert rt.precision == "bf16 autocast" and rt.precision_reason == "bf16 autocast: requested"
    # inference and finetuning keep fp32 on CPU and do not need the probe
    assert runtime.precision_for(CPU, "auto", purpose="inference")[0] is None
    assert runtime.precision_for(CPU, "auto", purpose="finetune")[0] is None
    assert runtime.setup("cpu", "auto", 1).autocast_dtype is None  # setup's default: finetuning
    assert not cache.exists()
    with pytest.raises(runtime.TwofilesError, match="--dtype int3"):
        runtime.precision_for(CPU, "int3")


def test_setup_records_the_probes_reason(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_timing(monkeypatch, 0.5)
    rt = runtime.setup("cpu", "auto", 1, purpose="pretrain")
    assert rt.autocast_dtype is None and rt.precision == "fp32"
    assert rt.precision_reason.startswith("fp32: bf16 matmul 50 vs fp32 100 GFLOP/s (0.50x < ")
    assert rt.precision_reason in rt.reasons


def test_the_real_probe_measures_both(cache: Path) -> None:
    probe = runtime.probe_precision(1)
    assert probe.fp32_gflops > 0 and probe.bf16_gflops > 0 and probe.threads == 1
    assert runtime.probe_precision(1).from_cache


def test_newton_schulz_in_bf16_orthogonalises_like_fp32() -> None:
    from twofiles.optim import zeropower_newton_schulz

    g = torch.randn(96, 256, generator=torch.Generator().manual_seed(0))
    x32 = zeropower_newton_schulz(g)
    x16 = zeropower_newton_schulz(g, dtype=torch.bfloat16)
    assert x32.dtype == x16.dtype == torch.float32
    sv32 = torch.linalg.svdvals(x32)
    sv16 = torch.linalg.svdvals(x16)
    # the quintic iteration leaves singular values in ~[0.7, 1.2] by design; bf16 keeps them there
    assert sv16.min() > 0.5 and sv16.max() < 1.3
    assert (sv16 - sv32).abs().max() < 0.05
    assert torch.nn.functional.cosine_similarity(x32.flatten(), x16.flatten(), dim=0) > 0.99


@pytest.mark.slow
def test_tiny_pretraining_under_bf16_autocast(
    tiny_data: Path, tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from safetensors.torch import load_file

    from twofiles.presets import get_preset
    from twofiles.train.pretrain import PretrainConfig, pretrain

    fake_timing(monkeypatch, 4.0)  # 'auto' chooses bf16 here whatever this CPU is
    preset = get_preset("tiny")
    cfg = PretrainConfig(
        data=str(tiny_data),
        out=str(tmp_path / "run"),
        model=preset.model_config(),
        optim=preset.optim_config(),
    )
    for k, v in preset.train.items():
        setattr(cfg, k, v)
    cfg.batch_size, cfg.seq_len, cfg.threads, cfg.device, cfg.dtype = 4, 64, 1, "cpu", "auto"
    cfg.max_steps, cfg.eval_tokens, cfg.final_eval_tokens, cfg.progress = 16, 1024, 1024, False
    res = pretrain(cfg)
    assert (
        res.precision == "bf16 autocast" and "bf16 matmul 400 vs fp32 100" in res.precision_reason
    )
    losses = [
        r["loss"]
        for r in map(json.loads, (tmp_path / "run" / "metrics.jsonl").read_text().splitlines())
        if "loss" in r
    ]
    assert len(losses) == 16 and sum(losses[-4:]) / 4 < losses[0] - 0.3
    assert {t.dtype for t in load_file(res.model_path).values()} == {torch.float32}
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["precision"] == {"dtype": "bf16 autocast", "reason": res.precision_reason}
    assert "bf16 matmul" in (tmp_path / "run" / "report.md").read_text()


def test_the_mfu_peak_is_measured_in_the_runs_precision(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bf16 run's MFU is against the bf16 matmul peak: against fp32's it read above 1."""
    from twofiles import runtime

    seen: list[torch.dtype] = []

    def gflops(n: int, repeats: int = 5, seconds: float = 0.2, dtype=torch.float32) -> float:
        seen.append(dtype)
        return {torch.float32: 100.0, torch.bfloat16: 400.0}[dtype]

    monkeypatch.setattr(runtime, "matmul_gflops", gflops)
    assert runtime.peak_flops(torch.device("cpu")) == 100e9
    assert runtime.peak_flops(torch.device("cpu"), dtype=torch.bfloat16) == 400e9
    assert set(seen) == {torch.float32, torch.bfloat16}
