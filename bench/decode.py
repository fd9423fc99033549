"""Decode and prompt tokens/s for one model at batch 1: twofiles's inference paths against its
peers on the same weights, on a named CPU, in one run, contenders alternating, medians and ratios.

Contenders (each loads once, then every round runs each of them in turn, order rotating):
  twofiles default        the engine (generate_steps) as `twofiles generate` prepares it with no
                          flags: prepare_for_inference's measured choices (dtype, layout, compile)
  twofiles fp32           the same with fp32 weights forced (the earlier default)
  twofiles int8 / int4    weight-only quantization, everything else as chosen by default
  twofiles int4 eager     int4 without torch.compile (--skip eager leaves it out)
  twofiles fp32 plain     with --plain: fp32 in the training layout (no fusing, no packing)
  transformers            Hugging Face generate() on the same GGUF (dequantized to fp32)
  llama.cpp (variant)     llama-cpp-python on the same GGUF file, the best build that runs on this
                          machine (bench/llama_builds.py: native, avx512, else the portable install;
                          --llama-cpp picks one, a missing one is built once per CPU kind)
  run.py                  the standalone numpy runner on `twofiles export run` of the model
All twofiles contenders get --threads. Each contender's first call (its warm-up, which includes any
torch.compile) is timed apart and reported, never mixed into the rounds.

Per round and contender: the prompt (fixed token ids) is prefilled and `--new-tokens` tokens are
generated greedily with no stop token. prompt tok/s = prompt tokens / time to the first new token;
decode tok/s = the remaining tokens / the time they took. The machine's read bandwidth is measured
in the same run (summing a large fp32 tensor), so each decode speed is also given as a share of
its limit: bytes of weights read per token x tokens/s / bandwidth.

    OMP_NUM_THREADS=2 OPENBLAS_NUM_THREADS=2 PYTHONPATH=src .venv/bin/python bench/decode.py --threads 2 --rounds 7
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

# What `twofiles` sets (cli/__init__.py), set before torch allocates anything, for every contender
# in this process alike: transparent huge pages for large CPU tensors.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

import torch

if TYPE_CHECKING:
    from llama_builds import LlamaBuild  # bench/llama_builds.py, beside this script

HERE = Path(__file__).resolve().parent
SKIPPABLE = ("transformers", "llama.cpp", "run.py", "eager")
LLAMA_CPP_CHOICES = ("auto", "native", "avx512", "avx2")
# (name, prepare_for_inference arguments besides threads); "auto"/None leave a choice to its probe.
TWOFILES_PATHS: tuple[tuple[str, dict[str, object]], ...] = (
    ("twofiles default", {}),
    ("twofiles fp32", {"dtype": "fp32"}),
    ("twofiles int8", {"quantize": "int8"}),
    ("twofiles int4", {"quantize": "int4"}),
    ("twofiles int4 eager", {"quantize": "int4", "compile": False}),
)
PLAIN_PATH = ("twofiles fp32 plain", {"dtype": "fp32", "layout": "plain"})


@dataclass
class Contender:
    name: str
    run: Callable[
        [list[int], int], tuple[float, float]
    ]  # (prompt ids, new tokens) -> (prefill s, decode s)
    weight_bytes: int  # bytes of weights read per decoded token
    setup: dict | None = (
        None  # twofiles: InferenceSetup.to_dict(), what prepare_for_inference chose
    )
    compiled: bool = False  # the first call compiles
    first_call_s: float = float("nan")  # the warm-up call, compile included
    prompt_tps: list[float] = field(default_factory=list)
    decode_tps: list[float] = field(default_factory=list)


def read_bandwidth_gbs(mb: int = 512, repeats: int = 7) -> float:
    """Median GB/s of summing a `mb` MB fp32 tensor (far larger than any cache) at torch's threads."""
    x = torch.ones(mb * 2**20 // 4)
    x.sum()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        x.sum()
        times.append(time.perf_counter() - t0)
    return x.numel() * 4 / statistics.median(times) / 1e9


def linear_weight_bytes(model: torch.nn.Module) -> int:
    """Bytes a decode step reads from the projections' weights (lm_head included; the embedding
    lookup reads one row and is left out). Tensors shared by several modules count once. Every
    projection module of torch and twofiles.quant (Int8Linear, PackedLinear, ...) is a *Linear."""
    from torch import nn

    seen: set[int] = set()
    total = 0
    for m in model.modules():
        if isinstance(m, nn.Linear) or type(m).__name__.endswith("Linear"):
            for t in [*m.parameters(recurse=False), *m.buffers(recurse=False)]:
                key = (
                    t.data_ptr() if t is not None and t.layout == torch.strided else id(t)
                )  # packed: no storage
                if t is not None and key not in seen:
                    seen.add(key)
                    total += t.numel() * t.element_size()
    return total


def twofiles_contender(spec: str, name: str, threads: int, options: dict[str, object]) -> Contender:
    """The engine on the model as prepare_for_inference(loaded, threads=threads, **options) leaves
    it. The threads are passed to every contender alike, so no probe picks another budget."""
    from twofiles.engine import SamplingParams, generate_steps
    from twofiles.formats.resolve import resolve_model
    from twofiles.quant import prepare_for_inference

    loaded = resolve_model(spec)
    setup = prepare_for_inference(loaded, threads=threads, **options)  # type: ignore[arg-type]
    model = loaded.model

    def run(ids: list[int], n: int) -> tuple[float, float]:
        params = SamplingParams(temperature=0, max_tokens=n)
        t0 = time.perf_counter()
        t_first = None
        for _ in generate_steps(model, ids, params):
            if t_first is None:
                t_first = time.perf_counter()
        return t_first - t0, time.perf_counter() - t_first

    return Contender(
        name,
        run,
        linear_weight_bytes(model),
        setup=setup.to_dict(),
        compiled=bool(setup.compiled),
    )


def transformers_contender(gguf_path: str) -> Contender:
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    model = AutoModelForCausalLM.from_pretrained(
        os.path.dirname(gguf_path), gguf_file=os.path.basename(gguf_path), torch_dtype=torch.float32
    )
    model.eval()

    def timed(ids: torch.Tensor, n: int) -> float:
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(
                ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0
            )
        assert out.shape[1] == ids.shape[1] + n
        return time.perf_counter() - t0

    def run(ids: list[int], n: int) -> tuple[float, float]:
        x = torch.tensor([ids])
        prefill = timed(
            x, 1
        )  # generate() has no per-token hook without a streamer: difference two runs
        return prefill, max(timed(x, n) - prefill, 1e-9)

    return Contender("transformers fp32", run, linear_weight_bytes(model))


def llama_cpp_contender(gguf_path: str, threads: int, build: LlamaBuild) -> Contender:
    """llama-cpp-python from `build`: its site folder goes first on sys.path before this process
    first imports llama_cpp (after that, the module already loaded would be used whatever the path
    says). find_llama_cpp has run this build in a child, so an illegal instruction cannot land here."""
    if build.site is not None:
        if "llama_cpp" in sys.modules:
            raise RuntimeError("llama_cpp was imported before the build to use was chosen")
        sys.path.insert(0, str(build.site))
    import gguf
    import llama_cpp
    from llama_cpp import Llama

    if build.site is not None and not llama_cpp.__file__.startswith(str(build.site)):
        raise RuntimeError(f"imported {llama_cpp.__file__}, not the build in {build.site}")

    llm = Llama(
        model_path=gguf_path,
        n_ctx=1024,
        n_threads=threads,
        n_threads_batch=threads,
        n_batch=512,
        verbose=False,
    )
    reader = gguf.GGUFReader(gguf_path)
    weight_bytes = sum(
        int(t.n_bytes)
        for t in reader.tensors
        if t.name != "token_embd.weight" or "output.weight" not in {u.name for u in reader.tensors}
    )

    def run(ids: list[int], n: int) -> tuple[float, float]:
        llm.reset()
        t0 = time.perf_counter()
        t_first = None
        for i, _ in enumerate(llm.generate(ids, temp=0.0, top_k=1, reset=True)):
            if t_first is None:
                t_first = time.perf_counter()
            if i + 1 == n:
                break
        return t_first - t0, time.perf_counter() - t_first

    return Contender(f"llama.cpp Q4_1 ({build.variant})", run, weight_bytes)


def runpy_contender(spec: str, workdir: str) -> Contender:
    """The numpy runner on the exported two files, imported as a module (its own code path)."""
    import importlib.util

    import numpy as np

    from twofiles.formats.resolve import resolve_model
    from twofiles.standalone.export import export_run

    loaded = resolve_model(spec)
    export_run(spec, workdir, loaded=loaded)
    mod_spec = importlib.util.spec_from_file_location(
        "twofiles_bench_run", os.path.join(workdir, "run.py")
    )
    runpy = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(runpy)
    model, _ = runpy.load(os.path.join(workdir, "model.safetensors"))

    def run(ids: list[int], n: int) -> tuple[float, float]:
        model.reset(len(ids) + n)
        t0 = time.perf_counter()
        token = int(np.argmax(model.forward(ids, 0)))
        t_first = time.perf_counter()
        for i in range(n - 1):
            token = int(np.argmax(model.forward([token], len(ids) + i)))
        return t_first - t0, time.perf_counter() - t_first

    return Contender("run.py numpy fp32", run, linear_weight_bytes(loaded.model))


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def plot(rows: list[dict], path: Path, heading: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["name"] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, key, title in (
        (axes[0], "decode_tps", "decode tokens/s (batch 1)"),
        (axes[1], "prompt_tps", "prompt tokens/s"),
    ):
        vals = [r[key] for r in rows]
        bars = ax.barh(
            names,
            vals,
            color=["tab:blue" if n.startswith("twofiles") else "tab:gray" for n in names],
        )
        ax.bar_label(bars, fmt="%.0f", padding=3)
        ax.set_title(title)
        ax.invert_yaxis()
        ax.margins(x=0.15)
    fig.suptitle(heading, fontsize=10)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, path)


def cpu_summary(threads: int) -> dict:
    """The machine a result belongs to: CPU model, the ISA flags kernels key on, cores, torch."""
    from twofiles.runtime import cpu_identity

    name, isa = cpu_identity(all_flags=True)
    return {
        "model": name,
        "isa_flags": list(isa),
        "cores": os.cpu_count(),
        "threads": threads,
        "torch": torch.__version__,
    }


def choose_llama_cpp(gguf_path: str, want: str, build: bool) -> LlamaBuild | None:
    """The llama.cpp build to compare against (bench/llama_builds.py). With `want` auto, none that
    runs here skips the contender; a build asked for by name that does not run ends the bench."""
    from llama_builds import LlamaCppUnavailable, find_llama_cpp

    try:
        return find_llama_cpp(gguf_path, build=build, want=want)
    except LlamaCppUnavailable as e:
        if want != "auto":
            sys.exit(f"llama.cpp: {e}")
        print(
            f"llama.cpp: skipped, no build runs here ({e}); `make llama-cpp` installs the portable one",
            file=sys.stderr,
        )
        return None


def ratio(x: float, ref: float) -> float:
    return round(x / ref, 2) if ref == ref and ref > 0 else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    ap.add_argument(
        "--model", default="smollm2", help="an alias or a .gguf file (the peers need a GGUF)"
    )
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--prompt-tokens", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument(
        "--skip",
        nargs="*",
        default=[],
        choices=SKIPPABLE,
        help="contenders to leave out (eager: twofiles int4 without torch.compile)",
    )
    ap.add_argument(
        "--plain",
        action="store_true",
        help="also twofiles fp32 in the training layout (no fused projections, no oneDNN packing)",
    )
    ap.add_argument(
        "--llama-cpp",
        default="auto",
        choices=LLAMA_CPP_CHOICES,
        help="the llama.cpp build to compare against (auto: the best one that runs here)",
    )
    ap.add_argument(
        "--build-llama",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="build a missing llama.cpp variant for this CPU kind (~7-15 min on 2 cores, once)",
    )
    ap.add_argument(
        "--out", default=str(HERE / "results" / "decode"), help="writes OUT.json and OUT.png"
    )
    args = ap.parse_args()
    # run.py's numpy BLAS and llama.cpp get the same thread budget as torch. (BLAS reads these when
    # it loads, i.e. at numpy's import; torch already imported numpy, so run the bench with them set
    # in the environment too to be sure: OMP_NUM_THREADS=N OPENBLAS_NUM_THREADS=N.)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, str(args.threads))

    from tqdm import tqdm

    from twofiles.formats import ALIASES, alias_path
    from twofiles.formats.resolve import resolve_model

    torch.set_num_threads(args.threads)
    cpu = cpu_summary(args.threads)
    print(
        f"CPU: {cpu['model']}, {cpu['cores']} cores, {args.threads} threads; "
        f"ISA: {' '.join(cpu['isa_flags']) or 'none of the kernel flags'}; torch {cpu['torch']}",
        file=sys.stderr,
    )
    gguf_path = str(alias_path(args.model)) if args.model in ALIASES else args.model
    model_name = Path(args.model).stem
    llama = None
    if "llama.cpp" not in args.skip:  # first: a build, if one is needed, says so before the wait
        llama = choose_llama_cpp(gguf_path, args.llama_cpp, args.build_llama)
        if llama is not None:
            print(f"llama.cpp {llama.variant}: {llama.system_info} ({llama.note})", file=sys.stderr)
    tok = resolve_model(gguf_path).tokenizer
    text = "The history of the printing press begins in the fifteenth century, when " * 20
    ids = ([tok.bos_id] + tok.encode(text))[: args.prompt_tokens]

    paths = [p for p in TWOFILES_PATHS if not (p[0].endswith(" eager") and "eager" in args.skip)]
    if args.plain:
        paths.append(PLAIN_PATH)
    contenders: list[Contender] = [
        twofiles_contender(gguf_path, name, args.threads, options) for name, options in paths
    ]
    if "transformers" not in args.skip:
        contenders.append(transformers_contender(gguf_path))
    if llama is not None:
        contenders.append(llama_cpp_contender(gguf_path, args.threads, llama))
    workdir = tempfile.mkdtemp(prefix="twofiles-bench-")
    if "run.py" not in args.skip:
        contenders.append(runpy_contender(gguf_path, workdir))
    gc.collect()

    for c in contenders:  # warm-up (and any compile) outside the timed rounds, timed on its own
        t0 = time.perf_counter()
        c.run(ids, 8)
        c.first_call_s = time.perf_counter() - t0
        if c.setup is not None:
            reasons = "; ".join(str(r) for r in c.setup.get("reasons", []))
            print(
                f"{c.name}: first call {c.first_call_s:.1f} s"
                + (" (compile)" if c.compiled else "")
                + (f"; {reasons}" if reasons else ""),
                file=sys.stderr,
            )
    bandwidth: list[float] = []
    for r in tqdm(range(args.rounds), desc="rounds", file=sys.stderr):
        order = contenders[r % len(contenders) :] + contenders[: r % len(contenders)]
        bandwidth.append(read_bandwidth_gbs())
        for c in order:
            # Let the previous contender's worker threads go idle first: OpenBLAS (run.py) and
            # llama.cpp spin-wait after their last call, and with a fixed rotation the same
            # contender always follows them (this once cost twofiles fp32 ~25% of its prompt speed).
            time.sleep(0.5)
            prefill_s, decode_s = c.run(ids, args.new_tokens)
            c.prompt_tps.append(len(ids) / prefill_s)
            c.decode_tps.append((args.new_tokens - 1) / decode_s)
    bw = median(bandwidth)

    by_name = {c.name: c for c in contenders}
    hf = by_name.get("transformers fp32")
    ll = next((c for c in contenders if c.name.startswith("llama.cpp")), None)
    nan = float("nan")
    ref_hf, ref_hf_p = (median(hf.decode_tps), median(hf.prompt_tps)) if hf else (nan, nan)
    ref_ll, ref_ll_p = (median(ll.decode_tps), median(ll.prompt_tps)) if ll else (nan, nan)
    rows = []
    for c in contenders:
        d, p = median(c.decode_tps), median(c.prompt_tps)
        row = {
            "name": c.name,
            "decode_tps": round(d, 2),
            "prompt_tps": round(p, 1),
            "decode_vs_transformers": ratio(d, ref_hf),
            "decode_vs_llama_cpp": ratio(d, ref_ll),
            "prompt_vs_transformers": ratio(p, ref_hf_p),
            "prompt_vs_llama_cpp": ratio(p, ref_ll_p),
            "weight_mb_per_token": round(c.weight_bytes / 1e6, 1),
            "bandwidth_share": round(d * c.weight_bytes / (bw * 1e9), 3),
            "decode_tps_min_max": [round(min(c.decode_tps), 1), round(max(c.decode_tps), 1)],
            "first_call_s": round(c.first_call_s, 2),
        }
        if c.setup is not None:
            row["setup"] = c.setup
        rows.append(row)
    print(
        f"\n{model_name} batch 1 on {cpu['model']} ({cpu['cores']} cores), {args.threads} threads, "
        f"torch {cpu['torch']}, prompt {len(ids)} tokens, {args.new_tokens} new tokens, "
        f"{args.rounds} rounds alternating; read bandwidth {bw:.1f} GB/s "
        f"(median; min {min(bandwidth):.1f}, max {max(bandwidth):.1f})"
        + (f"; llama.cpp {llama.variant}: {llama.system_info}" if llama else "")
        + "\n"
    )
    print(
        f"| contender on {cpu['model']}, {args.threads} threads | decode tok/s | vs transformers "
        "| vs llama.cpp | share of bandwidth limit | weights MB/token | prompt tok/s "
        "| vs transformers | vs llama.cpp |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(
            f"| {r['name']} | {r['decode_tps']:.1f} | {r['decode_vs_transformers']:.2f}x "
            f"| {r['decode_vs_llama_cpp']:.2f}x | {r['bandwidth_share']:.0%} "
            f"| {r['weight_mb_per_token']:.0f} | {r['prompt_tps']:.0f} "
            f"| {r['prompt_vs_transformers']:.2f}x | {r['prompt_vs_llama_cpp']:.2f}x |"
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    summary = {
        "model": model_name,
        "cpu": cpu,
        "threads": args.threads,
        "rounds": args.rounds,
        "prompt_tokens": len(ids),
        "new_tokens": args.new_tokens,
        "bandwidth_gbs": round(bw, 2),
        "torch": torch.__version__,
        "llama_cpp": None
        if llama is None
        else {
            "variant": llama.variant,
            "site": str(llama.site) if llama.site else None,
            "system_info": llama.system_info,
            "note": llama.note,
        },
        "rows": rows,
    }
    tmp = out.with_name(f".{out.name}.json.tmp")
    tmp.write_text(json.dumps(summary, indent=2) + "\n")
    os.replace(tmp, out.with_suffix(".json"))
    plot(
        rows,
        out.with_suffix(".png"),
        f"{model_name} on {cpu['model']}, {args.threads} threads"
        + (f", llama.cpp {llama.variant}" if llama else "")
        + "; medians over alternating rounds",
    )
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
