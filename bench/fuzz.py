"""Fuzzing the parsers that read what users and clients hand us: every input must end in success
or a clear BadInputError, within a time and a memory bound. Anything else is a finding.

Targets (each takes bytes; `structured` ones read them as choices that rebuild a valid seed with
one part changed, so inputs get past the container's header into the checks behind it):
  gguf         formats/gguf.load_gguf on raw bytes (seeds: tiny GGUFs from our exporter)
  gguf_meta    the same loader on a rebuilt GGUF: metadata values and tensor infos replaced
  safetensors  artifact.load_model on raw bytes (seed: a tiny model.safetensors)
  st_meta      the same loader on a rebuilt file: our metadata keys and tensor entries replaced
  tokenizer    Tokenizer.from_json on a tokenizer.json with one JSON node replaced, or raw text
  template     a chat template assembled from Jinja fragments, compiled and rendered by ChatFormat
  request      a chat-completions / completions JSON body through serve/protocol's validation

The campaign runs each target in its own process under atheris (coverage-guided, libFuzzer's
mutations over the structured choices) with RLIMIT_AS set and a per-input alarm; tests/test_fuzz.py
drives the same targets with hypothesis, a few hundred inputs each, in CI.

    .venv/bin/python bench/fuzz.py --target all --inputs 100000 [--seconds-per-input 10]
        [--memory-gb 6] [--out bench/results/fuzz.json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

# ------------------------------------------------------------------------------------ choices


class Choices:
    """The decisions a structured target makes, read from the fuzzer's bytes (so libFuzzer's
    mutations change decisions, and coverage guides them). Past the end, every choice is 0."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def int(self, lo: int, hi: int) -> int:
        span = hi - lo + 1
        width = max(1, (span.bit_length() + 7) // 8)
        chunk = self.data[self.pos : self.pos + width]
        self.pos += width
        return lo + int.from_bytes(chunk.ljust(width, b"\0"), "little") % span

    def pick(self, seq: list[Any]) -> Any:
        return seq[self.int(0, len(seq) - 1)]

    def text(self, most: int = 40) -> str:
        n = self.int(0, most)
        raw = self.data[self.pos : self.pos + n]
        self.pos += n
        return raw.decode("utf-8", "replace")


INTS = [0, 1, 2, 3, 7, 32, 255, 65535, 2**31 - 1, 2**31, 2**32 - 1, 2**63 - 1, -1, -(2**31)]
FLOATS = [0.0, 1.0, -1.0, 0.5, 1e-30, 1e30, math.inf, -math.inf, math.nan]


def any_value(c: Choices) -> Any:
    """A JSON-like value of any type."""
    kind = c.int(0, 7)
    if kind == 0:
        return c.pick(INTS)
    if kind == 1:
        return c.pick(FLOATS)
    if kind == 2:
        return c.text()
    if kind == 3:
        return bool(c.int(0, 1))
    if kind == 4:
        return None
    if kind == 5:
        return [c.pick(INTS) for _ in range(c.int(0, 4))]
    if kind == 6:
        return [c.text(8) for _ in range(c.int(0, 4))]
    return {c.text(8): c.pick(INTS) for _ in range(c.int(0, 3))}


# ------------------------------------------------------------------------------------ seeds


@cache
def seeds() -> dict[str, bytes]:
    """Small valid inputs, built by the project's own writers from a tiny model."""
    import torch

    from twofiles.artifact import LoadedModel, save_model
    from twofiles.formats.gguf_export import export_gguf
    from twofiles.model import ModelConfig, Transformer
    from twofiles.tokenizer import Tokenizer

    tok = Tokenizer.train(["to be or not to be, that is the question. " * 20], 280)
    cfg = ModelConfig(
        vocab_size=tok.vocab_size,
        dim=16,
        n_layers=1,
        n_heads=2,
        n_kv_heads=1,
        hidden_dim=32,
        max_seq_len=32,
    )
    torch.manual_seed(0)
    model = Transformer(cfg)
    model.init_weights(seed=0)
    out: dict[str, bytes] = {"tokenizer": tok.to_json().encode()}
    with tempfile.TemporaryDirectory() as d:
        for q in ("f32", "q8_0"):
            export_gguf(LoadedModel(model=model, tokenizer=tok), Path(d) / "m.gguf", qtype=q)
            out[f"gguf_{q}"] = (Path(d) / "m.gguf").read_bytes()
        save_model(Path(d) / "m.safetensors", model, tok)
        out["safetensors"] = (Path(d) / "m.safetensors").read_bytes()
    return out


# ------------------------------------------------------------------------------------ GGUF


def _gguf_value(vtype: int, v: Any) -> bytes:
    scalars = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<B"}
    scalars |= {10: "<Q", 11: "<q", 12: "<d"}
    if vtype == 8:
        b = str(v).encode("utf-8", "surrogatepass")
        return struct.pack("<Q", len(b)) + b
    if vtype == 9:
        if not (isinstance(v, tuple) and len(v) == 2 and isinstance(v[1], list)):
            return struct.pack("<IQ", 0, 0)  # a value declared an array that is not one: empty
        itype, items = v
        return struct.pack("<IQ", itype, len(items)) + b"".join(
            _gguf_value(itype, x) for x in items
        )
    fmt = scalars.get(vtype, "<I")
    try:
        return struct.pack(fmt, v)
    except (struct.error, TypeError, OverflowError):
        return struct.pack(fmt, 0)


def _typed(v: Any) -> tuple[int, Any]:
    """A GGUF type for a value read back by our parser."""
    if isinstance(v, bool):
        return 7, v
    if isinstance(v, int):
        return (5, v) if -(2**31) <= v < 2**31 else (11, v)
    if isinstance(v, float):
        return 6, v
    if isinstance(v, str):
        return 8, v
    if isinstance(v, list):
        if v and isinstance(v[0], str):
            return 9, (8, v)
        if v and isinstance(v[0], float):
            return 9, (6, v)
        return 9, (5, v)
    return 8, str(v)


def gguf_bytes(
    meta: list[tuple[str, int, Any]],
    tensors: list[tuple[str, list[int], int, int]],
    data: bytes,
    version: int = 3,
) -> bytes:
    """A GGUF file: metadata (key, type, value), tensor infos (name, ggml-order dims, type,
    offset into data) and the data region, aligned to 32."""
    out = [b"GGUF", struct.pack("<IQQ", version, len(tensors), len(meta))]
    for key, vtype, v in meta:
        out += [_gguf_value(8, key), struct.pack("<I", vtype), _gguf_value(vtype, v)]
    for name, dims, ttype, off in tensors:
        out += [_gguf_value(8, name), struct.pack("<I", len(dims))]
        out += [struct.pack("<Q", d & (2**64 - 1)) for d in dims]
        out += [struct.pack("<IQ", ttype & (2**32 - 1), off & (2**64 - 1))]
    head = b"".join(out)
    return head + b"\0" * (-len(head) % 32) + data


@cache
def _gguf_parts(qtype: str) -> tuple[list, list, bytes]:
    from twofiles.formats.gguf import _read

    buf = seeds()[f"gguf_{qtype}"]
    meta, infos = _read("seed.gguf", buf)
    start = min(off for *_, off in infos)
    typed = [(k, *_typed(v)) for k, v in meta.items()]
    tensors = [(n, list(reversed(shape)), t, off - start) for n, t, shape, off in infos]
    return typed, tensors, buf[start:]


def build_gguf(c: Choices) -> bytes:
    """A rebuilt seed GGUF with a few metadata values or tensor infos changed."""
    meta, tensors, data = _gguf_parts(c.pick(["f32", "q8_0"]))
    meta, tensors = list(meta), [list(t) for t in tensors]
    for _ in range(c.int(1, 4)):
        op = c.int(0, 8)
        if op <= 2 and meta:  # a value of any type (or the same type, another value)
            i = c.int(0, len(meta) - 1)
            key, vtype, v = meta[i]
            if op == 0:
                meta[i] = (key, *_typed(any_value(c)))
            elif op == 1 and vtype == 9:
                itype, items = v
                items = list(items)
                if items and c.int(0, 1):
                    items[c.int(0, len(items) - 1)] = any_value(c) if itype != 8 else c.text()
                else:
                    items = items[: c.int(0, len(items))]
                meta[i] = (key, 9, (itype if c.int(0, 3) else c.int(0, 13), items))
            else:  # another declared type for the same value (an array needs (type, items))
                vtype = c.int(0, 13)
                meta[i] = (key, vtype, v if vtype != 9 or vtype == meta[i][1] else (4, [1]))
        elif op == 3 and meta:
            del meta[c.int(0, len(meta) - 1)]
        elif op == 4:
            meta.append(
                (c.pick([k for k, _, _ in meta] or ["x"]) + c.text(4), *_typed(any_value(c)))
            )
        elif op == 5 and tensors:
            t = tensors[c.int(0, len(tensors) - 1)]
            dims = list(t[1])
            if dims:
                dims[c.int(0, len(dims) - 1)] = c.pick(INTS + [d + 1 for d in dims])
            if c.int(0, 3) == 0:
                dims = dims[: c.int(0, len(dims))] + [c.pick(INTS)] * c.int(0, 2)
            t[1] = dims
        elif op == 6 and tensors:
            t = tensors[c.int(0, len(tensors) - 1)]
            t[2] = c.pick([0, 1, 2, 3, 6, 7, 8, 12, 14, 16, 30, 39, 40, 255])
        elif op == 7 and tensors:
            t = tensors[c.int(0, len(tensors) - 1)]
            t[3] = c.pick(INTS + [len(data), len(data) - 4, t[3] + 1])
        elif tensors:
            i = c.int(0, len(tensors) - 1)
            if c.int(0, 1):
                del tensors[i]
            else:
                tensors.append(list(tensors[i]))
    if c.int(0, 7) == 0:
        data = data[: c.int(0, len(data))]
    return gguf_bytes(meta, [tuple(t) for t in tensors], data, version=c.pick([3, 3, 3, 2]))


# ------------------------------------------------------------------------------------ safetensors


@cache
def _st_parts() -> tuple[dict, bytes]:
    blob = seeds()["safetensors"]
    n = struct.unpack("<Q", blob[:8])[0]
    return json.loads(blob[8 : 8 + n]), blob[8 + n :]


def build_safetensors(c: Choices) -> bytes:
    """The seed model.safetensors with metadata fields or tensor entries changed."""
    header, body = _st_parts()
    header = json.loads(json.dumps(header))
    meta = header["__metadata__"]
    for _ in range(c.int(1, 3)):
        op = c.int(0, 5)
        if op == 0:  # a field of the model config (while it is still a JSON object)
            try:
                cfg = json.loads(meta.get("config", ""))
            except ValueError:
                continue
            if isinstance(cfg, dict):
                cfg[c.pick([*cfg, "rope_theta", "unknown"])] = any_value(c)
                meta["config"] = json.dumps(cfg)
        elif op == 1:  # one of our metadata keys: another value, or gone
            key = c.pick(
                ["format", "config", "tokenizer", "special", "chat_template", "provenance"]
            )
            if c.int(0, 3) == 0:
                meta.pop(key, None)
            else:
                meta[key] = c.pick([c.text(), json.dumps(any_value(c)), ""])
        elif op == 2:  # special ids
            meta["special"] = json.dumps(
                {"bos_id": any_value(c), "eos_ids": c.pick([any_value(c), [c.pick(INTS)]])}
            )
        elif op == 3:  # a tensor's dtype / shape / offsets
            name = c.pick(sorted(k for k in header if k != "__metadata__"))
            field = c.pick(["dtype", "shape", "data_offsets"])
            header[name][field] = c.pick(
                [any_value(c), [c.pick(INTS)], [c.pick(INTS), c.pick(INTS)], "F16", "I64", "BOOL"]
            )
        elif op == 4:  # a tensor gone, or an extra one
            name = c.pick(sorted(k for k in header if k != "__metadata__"))
            if c.int(0, 1):
                del header[name]
            else:
                header[name + c.text(4)] = dict(header[name])
        else:
            meta[c.text(8)] = c.text()
    raw = json.dumps(header).encode()
    if c.int(0, 7) == 0:
        body = body[: c.int(0, len(body))]
    return struct.pack("<Q", len(raw)) + raw + body


# ------------------------------------------------------------------------------------ tokenizer


def build_tokenizer_json(c: Choices) -> str:
    """The seed tokenizer.json with one node (anywhere in the tree) replaced or removed."""
    obj = json.loads(seeds()["tokenizer"])
    for _ in range(c.int(1, 3)):
        node, path = obj, []
        while isinstance(node, (dict, list)) and node and c.int(0, 2):
            key = c.pick(list(node)) if isinstance(node, dict) else c.int(0, len(node) - 1)
            path.append((node, key))
            node = node[key]
        if not path:
            obj = any_value(c) if c.int(0, 7) == 0 else obj
            continue
        parent, key = path[-1]
        if c.int(0, 3) == 0:
            del parent[key]
        else:
            parent[key] = any_value(c)
    return json.dumps(obj)


# ------------------------------------------------------------------------------------ templates

NUMBERS = ["0", "1", "3", "100", "100000", "10**9", "-1", "2**64"]
FRAGMENTS = [
    "{% for m in messages %}",
    "{% endfor %}",
    "{% if m.role == 'user' %}",
    "{% elif loop.first %}",
    "{% else %}",
    "{% endif %}",
    "{{ m.content }}",
    "{{ m['role'] }}",
    "{{ bos_token }}{{ eos_token }}",
    "{% if add_generation_prompt %}<|assistant_start|>{% endif %}",
    "<|user_start|>",
    "<|assistant_end|>",
    "{{ raise_exception('no') }}",
    "{{ undefined_name.attr }}",
    "{{ messages[N] }}",
    "{% for i in range(N) %}",
    "{% for j in range(N) %}",
    "{{ 'x' * N }}",
    "{{ N ** N }}",
    "{{ m.content * N }}",
    "{{ 'y'|center(N) }}",
    "{{ 'z'|indent(N) }}",
    "{{ messages|tojson(indent=N) }}",
    "{{ lipsum(N) }}",
    "{{ '%Nd'|format(1) }}",
    "{{ ''.__class__.__mro__ }}",
    "{{ messages.append(1) }}",
    "{% set ns = namespace(n=0) %}{% set ns.n = ns.n + 1 %}",
    "{% set ns = namespace(s='ab') %}{% for i in range(N) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
    "{% macro f(x) %}{{ f(x) }}{% endmacro %}{{ f(1) }}",
    "{{ strftime_now('%Y') }}",
    "{% break %}",
    "{{ tools|length }}",
    "{% raw %}{{ x }}{% endraw %}",
    "{{",
    "%}",
    "{# note #}",
]


def build_template(c: Choices) -> str:
    parts = []
    for _ in range(c.int(1, 10)):
        frag = c.pick(FRAGMENTS)
        if "N" in frag:
            frag = frag.replace("N", c.pick(NUMBERS))
        parts.append(frag if c.int(0, 7) else c.text(12))
    return "".join(parts)


# ------------------------------------------------------------------------------------ requests


def build_request(c: Choices) -> tuple[str, bytes]:
    """(endpoint, body): a valid chat or completions body with fields added, changed or removed."""
    chat = bool(c.int(0, 1))
    body: dict[str, Any] = {"model": "tiny", "max_tokens": 4}
    if chat:
        body["messages"] = [{"role": "user", "content": "hi"}]
    else:
        body["prompt"] = "to be"
    fields = [
        "model", "messages", "prompt", "temperature", "top_p", "top_k", "min_p", "max_tokens",
        "max_completion_tokens", "stop", "seed", "n", "stream", "stream_options", "logprobs",
        "top_logprobs", "tools", "tool_choice", "echo", "best_of", "suffix", "repetition_penalty",
        "presence_penalty", "frequency_penalty", "user",
    ]  # fmt: skip
    for _ in range(c.int(0, 4)):
        op = c.int(0, 4)
        name = c.pick(fields)
        if op == 0:
            body.pop(name, None)
        elif op == 1 and name == "messages":
            body[name] = [
                {
                    "role": c.pick(["user", "assistant", "system", "tool", "x"]),
                    "content": c.pick([c.text(), None, [{"type": "text", "text": c.text()}], 3]),
                    **({"tool_calls": any_value(c)} if c.int(0, 3) == 0 else {}),
                }
                for _ in range(c.int(0, 3))
            ]
        elif op == 2 and name == "tools":
            body[name] = [
                {
                    "type": c.pick(["function", "x"]),
                    "function": {"name": c.text(8), "parameters": any_value(c)},
                }
            ]
        else:
            body[name] = any_value(c)
    raw = json.dumps(body, allow_nan=True).encode()
    if c.int(0, 9) == 0:
        raw = raw[: c.int(0, len(raw))]
    return ("chat" if chat else "completions"), raw


# ------------------------------------------------------------------------------------ targets


@cache
def _tiny_format_tokenizer():
    from twofiles.tokenizer import Tokenizer

    return Tokenizer.from_json(seeds()["tokenizer"].decode())


def _load_file(data: bytes, suffix: str, loader: Callable[[str], Any]) -> None:
    fd, name = tempfile.mkstemp(suffix=suffix)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        loader(name)
    finally:
        os.unlink(name)


def run_gguf(data: bytes) -> None:
    from twofiles.formats.gguf import load_gguf

    _load_file(data, ".gguf", load_gguf)


def run_gguf_meta(data: bytes) -> None:
    run_gguf(build_gguf(Choices(data)))


def run_safetensors(data: bytes) -> None:
    from twofiles.artifact import load_model

    _load_file(data, ".safetensors", load_model)


def run_st_meta(data: bytes) -> None:
    run_safetensors(build_safetensors(Choices(data)))


def run_tokenizer(data: bytes) -> None:
    from twofiles.tokenizer import Tokenizer

    c = Choices(data)
    text = build_tokenizer_json(c) if c.int(0, 3) else data.decode("utf-8", "replace")
    bos = c.pick([None, 0, 1, 279, 280, -1, 2**40])
    eos = c.pick([None, [], [1], [280], [-5]])
    tok = Tokenizer.from_json(text, bos_id=bos, eos_ids=eos)
    tok.decode(tok.encode("to be or not"))


CONVERSATION = [
    {"role": "system", "content": "be brief"},
    {"role": "user", "content": "hi"},
    {"role": "assistant", "content": "hello"},
]


def run_template(data: bytes) -> None:
    from twofiles.chat import ChatFormat

    c = Choices(data)
    fmt = ChatFormat.from_template(_tiny_format_tokenizer(), build_template(c))
    fmt.render(CONVERSATION[: c.int(1, 3)], add_generation_prompt=bool(c.int(0, 1)))


def run_request(data: bytes) -> None:
    """What the server does with a body before any model runs: JSON, the pydantic model, the
    message parser and the one validation function. An ApiError or a validation error the server
    turns into a 400 message counts as the clear error (BadInputError) here."""
    from pydantic import ValidationError

    from twofiles.chat import parse_messages
    from twofiles.errors import BadInputError
    from twofiles.serve.protocol import (
        ApiError,
        ChatCompletionRequest,
        CompletionRequest,
        pydantic_message,
        sampling_params,
    )
    from twofiles.serve.settings import ServeSettings

    endpoint, raw = build_request(Choices(data))
    model = ChatCompletionRequest if endpoint == "chat" else CompletionRequest
    try:
        req = model.model_validate_json(raw)
    except ValidationError as e:
        message, _ = pydantic_message(list(e.errors()))
        raise BadInputError(message) from None
    try:
        if isinstance(req, ChatCompletionRequest):
            parse_messages(req.messages)
        sampling_params(req, ServeSettings(), default_max_tokens=16)
    except ApiError as e:
        raise BadInputError(e.message) from None


TARGETS: dict[str, Callable[[bytes], None]] = {
    "gguf": run_gguf,
    "gguf_meta": run_gguf_meta,
    "safetensors": run_safetensors,
    "st_meta": run_st_meta,
    "tokenizer": run_tokenizer,
    "template": run_template,
    "request": run_request,
}


def seed_inputs(target: str) -> list[bytes]:
    s = seeds()
    if target == "gguf":
        return [s["gguf_f32"], s["gguf_q8_0"]]
    if target == "safetensors":
        return [s["safetensors"]]
    return [bytes(range(64)), b"\0" * 32, b"\xff" * 32]


# ------------------------------------------------------------------------------------ the campaign


class Finding(Exception):
    pass


def check(target: str, data: bytes) -> str | None:
    """Run one input: None if it ended in success or BadInputError, else what happened."""
    from twofiles.errors import BadInputError

    try:
        TARGETS[target](data)
    except BadInputError:
        return None
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as e:  # pyo3's PanicException (Rust panics) is a BaseException
        return f"{type(e).__name__}: {str(e)[:200]}"
    return None


def _worker(target: str, runs: int, seconds: float, memory_gb: float, findings_dir: Path) -> None:
    """One target under atheris, in this process: alarm per input, RLIMIT_AS for the process."""
    import resource
    import signal

    import atheris

    with atheris.instrument_imports(include=["twofiles"]):
        import twofiles.artifact
        import twofiles.chat
        import twofiles.formats.gguf
        import twofiles.serve.protocol
        import twofiles.tokenizer  # noqa: F401

    seeds()  # built before the memory limit: torch's first allocations are not the input's
    _tiny_format_tokenizer()
    limit = int(memory_gb * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    def timeout(signum: int, frame: Any) -> None:
        raise TimeoutError(f"over {seconds} s")

    signal.signal(signal.SIGALRM, timeout)
    findings_dir.mkdir(parents=True, exist_ok=True)
    count = {"n": 0, "findings": 0}

    def one(data: bytes) -> None:
        count["n"] += 1
        signal.setitimer(signal.ITIMER_REAL, seconds)
        try:
            what = check(target, data)
        except (TimeoutError, MemoryError) as e:  # raised outside the target's own handlers
            what = f"{type(e).__name__}: {e}"
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        if what is not None:
            count["findings"] += 1
            import hashlib

            h = hashlib.sha1(data).hexdigest()[:16]
            (findings_dir / f"{target}-{h}.bin").write_bytes(data)
            with open(findings_dir / f"{target}.jsonl", "a") as f:
                f.write(json.dumps({"input": f"{target}-{h}.bin", "error": what}) + "\n")

    corpus = Path(tempfile.mkdtemp(prefix=f"fuzz-{target}-"))
    for i, s in enumerate(seed_inputs(target)):
        (corpus / f"seed{i}").write_bytes(s)
    max_len = max(len(s) for s in seed_inputs(target)) + 4096
    atheris.Setup(
        [sys.argv[0], f"-runs={runs}", f"-max_len={max_len}", "-print_final_stats=1"]
        + [f"-rss_limit_mb={int(memory_gb * 1024)}", f"-artifact_prefix={findings_dir}/"]
        + [str(corpus)],
        one,
    )
    atheris.Fuzz()


def campaign(targets: list[str], inputs: int, seconds: float, memory_gb: float, out: Path) -> dict:
    per = -(-inputs // len(targets))
    findings_dir = out.parent / "fuzz_findings"
    results = []
    for target in targets:
        t0 = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, __file__, "--worker", target, "--inputs", str(per)]
            + ["--seconds-per-input", str(seconds), "--memory-gb", str(memory_gb)]
            + ["--findings", str(findings_dir)],
            capture_output=True,
            text=True,
        )
        wall = time.perf_counter() - t0
        log = findings_dir / f"{target}.jsonl"
        found = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
        execs = [
            int(line.split(":")[-1])
            for line in proc.stderr.splitlines()
            if line.startswith("stat::number_of_executed_units")
        ]
        results.append(
            {
                "target": target,
                "inputs": execs[0] if execs else None,
                "seconds": round(wall, 1),
                "exit": proc.returncode,
                "findings": len(found),
                "distinct": sorted({f["error"].split(":")[0] for f in found}),
                "examples": found[:5],
                "log_tail": proc.stderr[-600:] if proc.returncode else "",
            }
        )
        print(json.dumps({k: v for k, v in results[-1].items() if k != "log_tail"}), flush=True)
    report = {
        "inputs": sum(r["inputs"] or 0 for r in results),
        "seconds": round(sum(r["seconds"] for r in results), 1),
        "findings": sum(r["findings"] for r in results),
        "seconds_per_input_bound": seconds,
        "memory_bound_gb": memory_gb,
        "targets": results,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    return report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--target", default="all", help=f"all or one of {', '.join(TARGETS)}")
    ap.add_argument("--inputs", type=int, default=100_000, help="inputs in all (split evenly)")
    ap.add_argument("--seconds-per-input", type=float, default=10.0)
    ap.add_argument("--memory-gb", type=float, default=6.0)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "fuzz.json")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--findings", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        _worker(args.worker, args.inputs, args.seconds_per_input, args.memory_gb, args.findings)
        return
    targets = list(TARGETS) if args.target == "all" else args.target.split(",")
    unknown = [t for t in targets if t not in TARGETS]
    if unknown:
        ap.error(f"unknown target {', '.join(unknown)} (targets: {', '.join(TARGETS)})")
    report = campaign(
        targets, args.inputs, args.seconds_per_input, args.memory_gb, args.out.resolve()
    )
    print(
        f"{report['inputs']} inputs in {report['seconds']} s, {report['findings']} findings -> {args.out}"
    )


if __name__ == "__main__":
    main()
