"""Compare `twofiles export gguf` with llama.cpp's own converter on the same model.

Exports MODEL to a Hugging Face directory, runs llama.cpp's convert_hf_to_gguf.py on it (from a
llama.cpp checkout, e.g. the one vendored in the llama-cpp-python sdist), exports MODEL with
twofiles, and compares the two files: metadata keys and values, tensor names, types, shapes and
bytes. Exit status 0 when every tensor is identical.

    pip download --no-deps --no-binary :all: llama-cpp-python && tar xzf llama_cpp_python-*.tar.gz
    python scripts/check_gguf_against_llama_cpp.py smollm2 --llama-cpp llama_cpp_python-*/vendor/llama.cpp --type q8_0

The converter imports `sentencepiece` even for byte-level vocabularies; without it installed,
`--stub-sentencepiece` puts an empty stand-in module on its path.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np


def compare(ours: Path, theirs: Path, gguf_py: Path) -> int:
    sys.path.insert(0, str(gguf_py))  # the checkout's gguf-py reads what its converter wrote
    from gguf import GGUFReader

    a, b = GGUFReader(str(ours)), GGUFReader(str(theirs))

    def value(r, k):
        try:
            return r.fields[k].contents()
        except Exception:  # a field type contents() cannot decode: compare nothing
            return None

    print("keys only in ours:  ", sorted(set(a.fields) - set(b.fields)))
    print("keys only in theirs:", sorted(set(b.fields) - set(a.fields)))
    for k in sorted(set(a.fields) & set(b.fields)):
        va, vb = value(a, k), value(b, k)
        if (
            not k.startswith("GGUF.")
            and va != vb
            and not (isinstance(va, float) and isinstance(vb, float) and abs(va - vb) < 1e-9)
        ):
            print(f"value differs: {k}: {repr(va)[:80]} vs {repr(vb)[:80]}")
    ta, tb = {t.name: t for t in a.tensors}, {t.name: t for t in b.tensors}
    print(
        "tensors only in ours:",
        sorted(set(ta) - set(tb)),
        "only in theirs:",
        sorted(set(tb) - set(ta)),
    )
    differ = [
        n
        for n in sorted(set(ta) & set(tb))
        if ta[n].tensor_type != tb[n].tensor_type
        or list(ta[n].shape) != list(tb[n].shape)
        or not np.array_equal(np.asarray(ta[n].data), np.asarray(tb[n].data))
    ]
    print(f"tensors compared: {len(set(ta) & set(tb))}, different: {len(differ)} {differ[:10]}")
    return 0 if not differ and set(ta) == set(tb) else 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "model", help="any MODEL twofiles loads (alias, .gguf, HF directory, model.safetensors)"
    )
    ap.add_argument(
        "--llama-cpp",
        required=True,
        type=Path,
        help="a llama.cpp checkout (convert_hf_to_gguf.py, gguf-py/)",
    )
    ap.add_argument("--type", default="f16", choices=["f32", "f16", "q8_0"])
    ap.add_argument("--stub-sentencepiece", action="store_true")
    args = ap.parse_args()
    from twofiles.formats.gguf_export import export_gguf
    from twofiles.formats.hf import export_hf
    from twofiles.formats.resolve import resolve_model

    loaded = resolve_model(args.model)
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        export_hf(loaded, t / "hf")
        export_gguf(loaded, t / "ours.gguf", qtype=args.type)
        path = [str(args.llama_cpp / "gguf-py")]
        if args.stub_sentencepiece:
            (t / "stub").mkdir()
            (t / "stub" / "sentencepiece.py").write_text("class SentencePieceProcessor: pass\n")
            path.append(str(t / "stub"))
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}
        cmd = [
            sys.executable,
            str(args.llama_cpp / "convert_hf_to_gguf.py"),
            str(t / "hf"),
            "--outtype",
            args.type,
            "--outfile",
            str(t / "theirs.gguf"),
        ]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode:
            print(proc.stderr[-2000:], file=sys.stderr)
            return 2
        return compare(t / "ours.gguf", t / "theirs.gguf", args.llama_cpp / "gguf-py")


if __name__ == "__main__":
    sys.exit(main())
