"""The llama.cpp that bench/decode.py compares against: the best build of llama-cpp-python that
runs on this machine.

It owns the ladder of builds (best first: `native`, `avx512`, `avx2`), where the built ones live
(<cache>/llama-cpp/<machine key>/<variant>/site, one set per CPU kind), building a missing one,
and checking a build in a child process before the bench loads it. It does not time anything:
decode.py does.

Why a ladder: llama-cpp-python ships an sdist only, and the environment's own install (`make
llama-cpp`) is a portable AVX2 build, because a native build made on one CPU kind dies with an
illegal instruction on another. A portable build leaves AVX-512 (and whatever else the machine
has) unused, so the comparison would flatter twofiles. Each machine kind gets its own builds,
keyed by the CPU's name and full flag set, and every build is run once in a child first, where an
illegal instruction kills the child and not the bench.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from twofiles.paths import cache_dir
from twofiles.runtime import cpu_info

PACKAGE = "llama-cpp-python"
VARIANTS = ("native", "avx512", "avx2")  # the ladder's order: best first
CHECK_TIMEOUT_S = 120.0  # a check loads a 135M model and makes 4 tokens: seconds, when it works
CHECK_TOKENS = 4
# AVX-512 extensions llama.cpp has a CMake switch for, switched on where the CPU has the flag.
AVX512_EXTENSIONS = {
    "avx512vbmi": "-DGGML_AVX512_VBMI=ON",
    "avx512_vnni": "-DGGML_AVX512_VNNI=ON",
    "avx512_bf16": "-DGGML_AVX512_BF16=ON",
}


@dataclass(frozen=True)
class Variant:
    name: str  # "native", "avx512" or "avx2"
    cmake_args: tuple[str, ...] | None  # None: the environment's own install, never built here


@dataclass(frozen=True)
class LlamaBuild:
    variant: str  # the build that passed its check
    site: Path | None  # the folder to put first on sys.path; None: the environment's own install
    system_info: str  # llama_print_system_info() of that build on this machine
    note: str  # every rung tried, and why the ones above this were passed over


class LlamaCppUnavailable(RuntimeError):
    """No rung of the ladder runs here; the message says why for each."""


def cpu_flags() -> frozenset[str]:
    """Every flag this CPU lists (runtime.cpu_info)."""
    return cpu_info()[1]


def machine_key() -> str:
    """12 hex digits naming this CPU kind: sha256 of its model name and full sorted flag set. Two
    machines share builds exactly when both agree (one flag more or less is another kind)."""
    name, flags = cpu_info()
    text = name + "\n" + " ".join(sorted(flags))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def ladder(flags: frozenset[str] | None = None) -> list[Variant]:
    """The builds to try on a CPU with `flags` (default: this one's), best first. avx512 is
    offered only where the CPU has avx512f; avx2 is the environment's own portable install."""
    flags = cpu_flags() if flags is None else flags
    rungs = [Variant("native", ("-DGGML_NATIVE=ON",))]
    if "avx512f" in flags:
        args = [
            "-DGGML_NATIVE=OFF",
            "-DGGML_AVX2=ON",
            "-DGGML_FMA=ON",
            "-DGGML_F16C=ON",
            "-DGGML_AVX512=ON",
        ]
        args += [arg for flag, arg in AVX512_EXTENSIONS.items() if flag in flags]
        rungs.append(Variant("avx512", tuple(args)))
    rungs.append(Variant("avx2", None))
    return rungs


def variant_dir(variant: str, key: str | None = None) -> Path:
    """Where a built variant lives: <cache>/llama-cpp/<machine key>/<variant> (site/ and wheel/)."""
    return cache_dir() / "llama-cpp" / (key or machine_key()) / variant


def built_site(variant: str, key: str | None = None) -> Path | None:
    """The variant's site folder if a build finished (builds appear only by a final rename)."""
    site = variant_dir(variant, key) / "site"
    return site if (site / "llama_cpp" / "__init__.py").is_file() else None


def installed_version() -> str | None:
    """The environment's llama-cpp-python version: the one every built variant is built at."""
    try:
        return importlib.metadata.version(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        return None


def build_variant(variant: Variant, version: str, key: str | None = None) -> Path:
    """Build `variant` of llama-cpp-python `version` for this machine and return its site folder.
    The build happens in a temporary folder next to the final one, renamed into place at the end,
    so a killed build is never taken for a finished one. pip's output goes to a log beside it."""
    if variant.cmake_args is None:
        raise ValueError(f"{variant.name} is the environment's own install: nothing to build")
    final = variant_dir(variant.name, key)
    final.parent.mkdir(parents=True, exist_ok=True)
    log = final.parent / f"{variant.name}.build.log"
    cmake_args = " ".join(variant.cmake_args)
    print(
        f"llama.cpp {variant.name}: building {PACKAGE}=={version} with CMAKE_ARGS='{cmake_args}' "
        f"into {final} (~7-15 min on 2 cores, once per machine kind; log: {log})",
        file=sys.stderr,
    )
    tmp = Path(tempfile.mkdtemp(prefix=f".{variant.name}.building-", dir=final.parent))
    try:
        env = {**os.environ, "CMAKE_ARGS": cmake_args}
        pip = [sys.executable, "-m", "pip"]
        with log.open("w") as out:
            _run_with_progress(
                [
                    *pip,
                    "wheel",
                    "--no-cache-dir",  # pip's wheel cache is keyed by the sdist, not CMAKE_ARGS
                    "--no-deps",
                    "--no-binary",
                    PACKAGE,
                    f"{PACKAGE}=={version}",
                    "-w",
                    str(tmp / "wheel"),
                ],
                env,
                out,
                f"llama.cpp {variant.name}: compiling",
            )
            wheels = sorted((tmp / "wheel").glob("*.whl"))
            if not wheels:
                raise RuntimeError(f"pip wheel made no wheel (see {log})")
            _run_with_progress(
                [*pip, "install", "--no-deps", "--target", str(tmp / "site"), str(wheels[0])],
                env,
                out,
                f"llama.cpp {variant.name}: installing",
            )
        if final.exists():  # a finished build of the same variant (another run's): replace it
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"llama.cpp {variant.name}: built into {final}", file=sys.stderr)
    return final / "site"


def _run_with_progress(cmd: list[str], env: dict[str, str], out: TextIO, desc: str) -> None:
    """Run `cmd` with its output to `out`, showing the elapsed time while it runs."""
    from tqdm import tqdm

    with (
        subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT) as proc,
        tqdm(desc=desc, bar_format="{desc}: {elapsed}", file=sys.stderr) as bar,
    ):
        while proc.poll() is None:
            time.sleep(1.0)
            bar.refresh()  # redraws the elapsed time
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[2:4])} exited with {proc.returncode} (see {out.name})")


# The child a check runs: argv = [site or "", gguf, tokens]. It prints one JSON line.
_CHECK_CHILD = """
import json, sys
site, gguf, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
if site:
    sys.path.insert(0, site)
import llama_cpp
if site and not llama_cpp.__file__.startswith(site):
    sys.exit(f"{site} holds no llama_cpp (imported {llama_cpp.__file__})")
llm = llama_cpp.Llama(model_path=gguf, n_ctx=128, n_threads=1, verbose=False)
tokens = []
for token in llm.generate(llm.tokenize(b"The capital of France is"), temp=0.0, top_k=1):
    tokens.append(token)
    if len(tokens) == n:
        break
info = llama_cpp.llama_print_system_info()
info = info.decode() if isinstance(info, bytes) else str(info)
print(json.dumps({"system_info": info.strip(), "tokens": tokens}))
"""


def check(
    site: Path | None, gguf: str | Path, *, timeout_s: float = CHECK_TIMEOUT_S
) -> tuple[bool, str]:
    """Load `gguf` with the llama_cpp in `site` (None: the environment's own) and make 4 greedy
    tokens, in a child process: an illegal instruction kills the child, not the caller.
    (True, llama_print_system_info()) when it works, else (False, why)."""
    where = str(Path(site).resolve()) if site is not None else ""  # compared to __file__: absolute
    cmd = [sys.executable, "-P", "-c", _CHECK_CHILD, where, str(gguf), str(CHECK_TOKENS)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return False, f"timed out after {timeout_s:.0f} s"
    if proc.returncode < 0:
        sig = signal.Signals(-proc.returncode)
        what = "illegal instruction" if sig == signal.SIGILL else "killed"
        return False, f"{what} ({sig.name})"
    if proc.returncode != 0:
        lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
        return False, f"exit {proc.returncode}: {lines[-1] if lines else 'no message'}"
    try:
        result = json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        return False, f"no result from the child: {proc.stdout.strip()[-200:]!r}"
    if len(result.get("tokens", [])) != CHECK_TOKENS:
        return False, f"made {len(result.get('tokens', []))} tokens, not {CHECK_TOKENS}"
    return True, result["system_info"]


def find_llama_cpp(gguf: str | Path, *, build: bool, want: str = "auto") -> LlamaBuild:
    """The best llama.cpp build that runs here: walk the ladder from the top (or only `want`),
    building a missing variant when `build` is true, and return the first that passes `check`,
    with a note of what was passed over and why. Raises LlamaCppUnavailable when none passes."""
    if want != "auto" and want not in VARIANTS:
        raise ValueError(f"llama.cpp build {want!r}: expected auto or one of {', '.join(VARIANTS)}")
    rungs = ladder()
    notes: list[str] = []
    if want != "auto":
        offered = [v for v in rungs if v.name == want]
        if not offered:
            raise LlamaCppUnavailable(f"{want}: not offered on this CPU (no avx512f)")
        rungs = offered
    elif not any(v.name == "avx512" for v in rungs):
        notes.append("avx512: not offered (no avx512f)")
    key = machine_key()
    version = installed_version()
    for variant in rungs:
        site: Path | None = None
        if variant.cmake_args is not None:
            site = built_site(variant.name, key)
            if site is None:
                if not build:
                    notes.append(f"{variant.name}: not built (building is off)")
                    continue
                if version is None:
                    notes.append(f"{variant.name}: not built ({PACKAGE} is not installed here)")
                    continue
                try:
                    site = build_variant(variant, version, key)
                except (RuntimeError, OSError) as e:
                    notes.append(f"{variant.name}: build failed ({e})")
                    continue
        elif version is None:
            notes.append(f"{variant.name}: {PACKAGE} is not installed here")
            continue
        ok, info = check(site, gguf)
        if ok:
            notes.append(f"{variant.name}: passed")
            return LlamaBuild(variant.name, site, info, "; ".join(notes))
        notes.append(f"{variant.name}: {info}")
    raise LlamaCppUnavailable("; ".join(notes))
