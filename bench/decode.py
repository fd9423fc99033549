"""Decode and prompt tokens/s for one model at batch 1: twofiles (fp32 / int8 / int4) against its
peers on the same weights, in one run, contenders alternating, medians and ratios.

Contenders (each loads once, then every round runs each of them in turn, order rotating):
  twofiles fp32 / int8 / int4   the engine (generate_steps) as `twofiles generate` prepares it
                                (fused projections; fp32: oneDNN-packed linears), and int8 / int4
                                compiled (--compile); --plain adds fp32 in the training layout
  transformers                  Hugging Face generate() on the same GGUF (dequantized to fp32)
  llama.cpp                     llama-cpp-python on the same GGUF file (pip install twofiles[bench])
  run.py                        the standalone numpy runner on `twofiles export run` of the model

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

# What `twofiles` sets (cli/__init__.py), set before torch allocates anything, for every contender
# in this process alike: transparent huge pages for large CPU tensors.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

import torch

HERE = Path(__file__).resolve().parent


@dataclass
class Contender:
    name: str
    run: Callable[
        [list[int], int], tuple[float, float]
    ]  # (prompt ids, new tokens) -> (prefill s, decode s)
    weight_bytes: int  # bytes of weights read per decoded token
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
    lookup reads one row and is left out). Tensors shared by several modules count once."""
    from torch import nn

    from twofiles.quant import Int4Linear, Int8Linear, PackedLinear

    seen: set[int] = set()
    total = 0
    for m in model.modules():
        if isinstance(m, (nn.Linear, Int8Linear, Int4Linear, PackedLinear)):
            for t in [*m.parameters(recurse=False), *m.buffers(recurse=False)]:
                key = (
                    t.data_ptr() if t is not None and t.layout == torch.strided else id(t)
                )  # packed: no storage
                if t is not None and key not in seen:
                    seen.add(key)
                    total += t.numel() * t.element_size()
    return total


def twofiles_contender(spec: str, quantize: str, compile: bool, plain: bool = False) -> Contender:
    from twofiles.engine import SamplingParams, generate_steps
    from twofiles.formats.resolve import resolve_model
    from twofiles.quant import prepare_for_inference

    loaded = resolve_model(spec)
    prepare_for_inference(
        loaded, quantize=quantize, compile=compile, fuse=not plain, pack=not plain
    )
    model = loaded.model

    def run(ids: list[int], n: int) -> tuple[float, float]:
        params = SamplingParams(temperature=0, max_tokens=n)
        t0 = time.perf_counter()
        t_first = None
        for _ in generate_steps(model, ids, params):
            if t_first is None:
                t_first = time.perf_counter()
        return t_first - t0, time.perf_counter() - t_first

    name = (
        f"twofiles {quantize if quantize != 'none' else 'fp32'}"
        + (" compiled" if compile else "")
        + (" plain" if plain else "")
    )
    return Contender(name, run, linear_weight_bytes(model))


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


def llama_cpp_contender(gguf_path: str, threads: int) -> Contender | None:
    try:
        from llama_cpp import Llama
    except ImportError:
        print(
            "llama.cpp: skipped (pip install 'twofiles[bench]' for llama-cpp-python)",
            file=sys.stderr,
        )
        return None
    import gguf

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

    return Contender("llama.cpp Q4_1", run, weight_bytes)


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


def plot(rows: list[dict], path: Path) -> None:
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
    fig.suptitle(
        "smollm2 (SmolLM2-135M-Instruct) on this CPU; medians over alternating rounds", fontsize=10
    )
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
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
        help="contenders to leave out: transformers llama.cpp run.py compile",
    )
    ap.add_argument(
        "--plain",
        action="store_true",
        help="also twofiles fp32 in the training layout (no fused projections, no oneDNN packing)",
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
    gguf_path = str(alias_path(args.model)) if args.model in ALIASES else args.model
    tok = resolve_model(gguf_path).tokenizer
    text = "The history of the printing press begins in the fifteenth century, when " * 20
    ids = ([tok.bos_id] + tok.encode(text))[: args.prompt_tokens]

    contenders: list[Contender] = []
    for q in ("none", "int8", "int4"):
        contenders.append(twofiles_contender(gguf_path, q, compile=False))
    if args.plain:
        contenders.append(twofiles_contender(gguf_path, "none", compile=False, plain=True))
    if (
        "compile" not in args.skip
    ):  # fp32 gains nothing from it (its time is the matmuls'): the quantized paths
        contenders.append(twofiles_contender(gguf_path, "int8", compile=True))
        contenders.append(twofiles_contender(gguf_path, "int4", compile=True))
    if "transformers" not in args.skip:
        contenders.append(transformers_contender(gguf_path))
    if (
        "llama.cpp" not in args.skip
        and (c := llama_cpp_contender(gguf_path, args.threads)) is not None
    ):
        contenders.append(c)
    workdir = tempfile.mkdtemp(prefix="twofiles-bench-")
    if "run.py" not in args.skip:
        contenders.append(runpy_contender(gguf_path, workdir))
    gc.collect()

    for c in contenders:  # warm-up (and the compile) outside the timed rounds
        c.run(ids, 8)
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
    ref_hf = (
        median(by_name["transformers fp32"].decode_tps)
        if "transformers fp32" in by_name
        else float("nan")
    )
    ref_ll = (
        median(by_name["llama.cpp Q4_1"].decode_tps)
        if "llama.cpp Q4_1" in by_name
        else float("nan")
    )
    ref_hf_p = (
        median(by_name["transformers fp32"].prompt_tps)
        if "transformers fp32" in by_name
        else float("nan")
    )
    ref_ll_p = (
        median(by_name["llama.cpp Q4_1"].prompt_tps)
        if "llama.cpp Q4_1" in by_name
        else float("nan")
    )
    rows = []
    for c in contenders:
        d, p = median(c.decode_tps), median(c.prompt_tps)
        rows.append(
            {
                "name": c.name,
                "decode_tps": round(d, 2),
                "prompt_tps": round(p, 1),
                "decode_vs_transformers": round(d / ref_hf, 2),
                "decode_vs_llama_cpp": round(d / ref_ll, 2),
                "prompt_vs_transformers": round(p / ref_hf_p, 2),
                "prompt_vs_llama_cpp": round(p / ref_ll_p, 2),
                "weight_mb_per_token": round(c.weight_bytes / 1e6, 1),
                "bandwidth_share": round(d * c.weight_bytes / (bw * 1e9), 3),
                "decode_tps_min_max": [round(min(c.decode_tps), 1), round(max(c.decode_tps), 1)],
            }
        )
    print(
        f"\nsmollm2 batch 1, {args.threads} threads, prompt {len(ids)} tokens, {args.new_tokens} new tokens, "
        f"{args.rounds} rounds alternating; read bandwidth {bw:.1f} GB/s (median; min {min(bandwidth):.1f}, max {max(bandwidth):.1f})\n"
    )
    print(
        "| contender | decode tok/s | vs transformers | vs llama.cpp | share of bandwidth limit | weights MB/token | prompt tok/s | vs transformers | vs llama.cpp |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(
            f"| {r['name']} | {r['decode_tps']:.1f} | {r['decode_vs_transformers']:.2f}x | {r['decode_vs_llama_cpp']:.2f}x | "
            f"{r['bandwidth_share']:.0%} | {r['weight_mb_per_token']:.0f} | {r['prompt_tps']:.0f} | {r['prompt_vs_transformers']:.2f}x | {r['prompt_vs_llama_cpp']:.2f}x |"
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    summary = {
        "threads": args.threads,
        "rounds": args.rounds,
        "prompt_tokens": len(ids),
        "new_tokens": args.new_tokens,
        "bandwidth_gbs": round(bw, 2),
        "torch": torch.__version__,
        "rows": rows,
    }
    tmp = out.with_name(f".{out.name}.json.tmp")
    tmp.write_text(json.dumps(summary, indent=2) + "\n")
    os.replace(tmp, out.with_suffix(".json"))
    plot(rows, out.with_suffix(".png"))
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
