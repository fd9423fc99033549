"""bench/llama_builds.py: the machine key, the ladder of llama.cpp builds, the child-process check
and the walk down the ladder. Nothing here builds llama.cpp: built variants are faked as site
folders, and the one real check runs the environment's own (portable) install on smollm2."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from peers import require, require_smollm2


def _load_llama_builds():
    path = Path(__file__).resolve().parents[1] / "bench" / "llama_builds.py"
    spec = importlib.util.spec_from_file_location("bench_llama_builds", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


lb = _load_llama_builds()

LLAMA_CPP_INSTALL = "make llama-cpp"
SIGILL_INIT = "import os, signal\nos.kill(os.getpid(), signal.SIGILL)\n"


def _fake_cpu(monkeypatch, flags: str) -> None:
    monkeypatch.setattr(lb, "cpu_info", lambda: ("Test CPU", frozenset(flags.split())))


def _fake_site(root: Path, init: str) -> Path:
    (root / "site" / "llama_cpp").mkdir(parents=True)
    (root / "site" / "llama_cpp" / "__init__.py").write_text(init)
    return root / "site"


def test_machine_key_is_stable_and_follows_the_flags(monkeypatch) -> None:
    _fake_cpu(monkeypatch, "avx2 fma f16c")
    key = lb.machine_key()
    assert len(key) == 12 and int(key, 16) >= 0
    assert lb.machine_key() == key
    _fake_cpu(monkeypatch, "f16c fma avx2")  # the order /proc/cpuinfo lists them in is not the kind
    assert lb.machine_key() == key
    _fake_cpu(monkeypatch, "avx2 fma f16c avx512f")
    assert lb.machine_key() != key


def test_ladder_offers_avx512_only_with_avx512f() -> None:
    assert [v.name for v in lb.ladder(frozenset({"avx2", "fma", "f16c"}))] == ["native", "avx2"]
    rungs = lb.ladder(frozenset({"avx2", "avx512f", "avx512_vnni"}))
    assert [v.name for v in rungs] == ["native", "avx512", "avx2"]
    args = rungs[1].cmake_args
    assert "-DGGML_NATIVE=OFF" in args and "-DGGML_AVX512=ON" in args
    assert "-DGGML_AVX512_VNNI=ON" in args  # the CPU has it
    assert "-DGGML_AVX512_VBMI=ON" not in args and "-DGGML_AVX512_BF16=ON" not in args
    assert rungs[0].cmake_args == ("-DGGML_NATIVE=ON",) and rungs[2].cmake_args is None


def test_check_reports_a_child_killed_by_sigill(tmp_path) -> None:
    site = _fake_site(tmp_path, SIGILL_INIT)
    ok, why = lb.check(site, tmp_path / "unused.gguf")
    assert not ok and why == "illegal instruction (SIGILL)"


def test_check_refuses_a_site_without_llama_cpp(tmp_path) -> None:
    require("llama_cpp", LLAMA_CPP_INSTALL)
    (tmp_path / "site").mkdir()  # empty: the child would import the environment's llama_cpp
    ok, why = lb.check(tmp_path / "site", tmp_path / "unused.gguf")
    assert not ok and "holds no llama_cpp" in why


def test_find_without_building_falls_through_and_says_why(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TWOFILES_CACHE", str(tmp_path))
    _fake_cpu(monkeypatch, "avx2 fma f16c")
    _fake_site(lb.variant_dir("native"), SIGILL_INIT)
    checked = []
    monkeypatch.setattr(
        lb, "check", lambda site, gguf: checked.append(site) or (site is None, "sys info")
    )
    found = lb.find_llama_cpp(tmp_path / "m.gguf", build=False)
    assert (found.variant, found.site, found.system_info) == ("avx2", None, "sys info")
    assert found.note == "avx512: not offered (no avx512f); native: sys info; avx2: passed"
    assert checked == [lb.variant_dir("native") / "site", None]

    _fake_cpu(monkeypatch, "avx2 fma f16c avx512f")  # another kind: nothing built for it yet
    checked.clear()
    found = lb.find_llama_cpp(tmp_path / "m.gguf", build=False)
    assert found.note == (
        "native: not built (building is off); avx512: not built (building is off); avx2: passed"
    )
    assert checked == [None]
    with pytest.raises(lb.LlamaCppUnavailable, match="native: not built"):
        lb.find_llama_cpp(tmp_path / "m.gguf", build=False, want="native")


def test_a_failed_build_leaves_nothing_that_looks_built(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TWOFILES_CACHE", str(tmp_path))

    def dies_midway(cmd, env, out, desc):
        wheel_dir = Path(cmd[cmd.index("-w") + 1])
        (wheel_dir / "partial").mkdir(parents=True)
        raise RuntimeError("pip wheel exited with 1")

    monkeypatch.setattr(lb, "_run_with_progress", dies_midway)
    native = lb.ladder(frozenset())[0]
    with pytest.raises(RuntimeError, match="exited with 1"):
        lb.build_variant(native, "0.3.36")
    parent = lb.variant_dir("native").parent
    assert sorted(p.name for p in parent.iterdir()) == ["native.build.log"]
    assert lb.built_site("native") is None


def test_sigill_build_falls_through_to_the_real_portable_install(tmp_path, monkeypatch) -> None:
    """The whole walk with the real check: a native build that dies with an illegal instruction
    is passed over, and the environment's own llama-cpp-python runs smollm2 in the child."""
    require("llama_cpp", LLAMA_CPP_INSTALL)
    gguf = require_smollm2()
    monkeypatch.setenv("TWOFILES_CACHE", str(tmp_path))
    _fake_site(lb.variant_dir("native"), SIGILL_INIT)
    found = lb.find_llama_cpp(gguf, build=False)
    assert found.variant == "avx2" and found.site is None
    assert "AVX2 = 1" in found.system_info
    assert "native: illegal instruction (SIGILL)" in found.note
    assert found.note.endswith("avx2: passed")
