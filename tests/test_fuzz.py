"""Fuzzing in CI: a few hundred structured inputs per parser, and the inputs fuzzing found.

The targets and their structured builders are bench/fuzz.py's (the 100k-input atheris campaign
runs there): a GGUF or model.safetensors rebuilt from a valid seed with metadata values and tensor
entries replaced, a tokenizer.json with a node replaced, chat templates assembled from Jinja
fragments, chat / completions request bodies. Hypothesis draws the bytes that drive the builders
(derandomized, so CI sees the same inputs each run). Every input must end in success or a clear
BadInputError, within a time bound.
"""

from __future__ import annotations

import importlib.util
import json
import struct
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from twofiles.artifact import load_model
from twofiles.chat import ChatFormat, TemplateError
from twofiles.errors import BadInputError
from twofiles.tokenizer import Tokenizer


def _load_bench_fuzz():
    path = Path(__file__).resolve().parents[1] / "bench" / "fuzz.py"
    spec = importlib.util.spec_from_file_location("bench_fuzz", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


fuzz = _load_bench_fuzz()
SECONDS = 5.0  # per input; the slowest real one (a GGUF load) takes ~20 ms


def _ends_cleanly(target: str, data: bytes) -> None:
    t0 = time.perf_counter()
    try:
        fuzz.TARGETS[target](data)
    except BadInputError:
        pass
    assert time.perf_counter() - t0 < SECONDS, f"{target} took over {SECONDS} s"


def _campaign(target: str, examples: int):
    @settings(
        max_examples=examples,
        derandomize=True,
        deadline=None,  # timed in _ends_cleanly instead: the first input builds the seeds
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(data=st.binary(min_size=0, max_size=160))
    def run(data: bytes) -> None:
        _ends_cleanly(target, data)

    return run


@pytest.mark.parametrize(
    "target, examples",
    [
        ("gguf_meta", 150),
        ("st_meta", 150),
        ("tokenizer", 150),
        ("template", 200),
        ("request", 200),
    ],
)
def test_structured_inputs_end_in_success_or_bad_input(target: str, examples: int) -> None:
    _campaign(target, examples)()


def test_raw_bytes_past_a_valid_header_end_cleanly() -> None:
    """Byte flips behind the GGUF and safetensors headers (the tensor infos, metadata values and
    data the structured targets also reach), from seeded random positions."""
    import random

    rng = random.Random(0)
    for target in ("gguf", "safetensors"):
        for seed in fuzz.seed_inputs(target):
            for _ in range(30):
                blob = bytearray(seed)
                for _ in range(rng.randint(1, 6)):
                    i = rng.randrange(24, min(len(blob), 6000))
                    blob[i] = rng.choice([0, 0xFF, blob[i] ^ (1 << rng.randrange(8))])
                _ends_cleanly(target, bytes(blob))


# ---------------------------------------------------------------------------- what fuzzing found


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.from_json(fuzz.seeds()["tokenizer"].decode())


def _render(tok: Tokenizer, template: str) -> None:
    ChatFormat.from_template(tok, template).render(fuzz.CONVERSATION)


DOUBLING = "{% set ns = namespace(s='ab') %}{% for i in range(64) %}{% set ns.s = ns.s OP ns.s %}{% endfor %}"


@pytest.mark.parametrize(
    "template, message",
    [
        ("{% break %}", "does not compile"),  # Jinja's compiler raised SyntaxError
        ("{{ 100000 ** 100000 }}", "exponent"),  # folded at compile time: a 500k-digit int
        ("{% macro f(x) %}{{ f(x) }}{% endmacro %}{{ f(1) }}", "RecursionError"),
        ("{{ none|length }}", "TypeError"),
        ("{{ range(2**64)|length }}", "OverflowError"),
        ("{{ 'x' * 10**9 }}", "too long"),
        ("{{ 'y'|center(10**9) }}", "center width"),
        ("{{ messages|tojson(indent=10**9) }}", "tojson indent"),
        ("{{ '%1000000000d'|format(1) }}", "format width"),
        ("{{ lipsum(10**6) }}", "undefined"),
        # a string doubled in a loop took the machine's memory (the OOM killer ended the test run)
        (DOUBLING.replace("OP", "~"), "concatenation is too long"),
        (DOUBLING.replace("OP", "+"), "concatenation is too long"),
    ],
)
def test_templates_that_crashed_or_ran_away_are_template_errors(
    tok: Tokenizer, template: str, message: str
) -> None:
    t0 = time.perf_counter()
    with pytest.raises(TemplateError, match=message):
        _render(tok, template)
    assert time.perf_counter() - t0 < 2


def test_a_runaway_template_loop_is_stopped_by_the_clock(
    tok: Tokenizer, monkeypatch: pytest.MonkeyPatch
) -> None:
    import twofiles.chat.templates

    monkeypatch.setattr(twofiles.chat.templates, "TEMPLATE_SECONDS", 0.2)
    loops = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
    t0 = time.perf_counter()
    with pytest.raises(TemplateError, match="took over 0.2 s"):
        _render(tok, loops)
    assert time.perf_counter() - t0 < 1.5
    _render(tok, "{% for m in messages %}{{ m.content }}{% endfor %}")  # the clock was reset


def _tokenizer_json(**changes) -> str:
    obj = json.loads(fuzz.seeds()["tokenizer"])
    for path, value in changes.items():
        node = obj
        *parents, last = path.split("__")
        for key in parents:
            node = node[key]
        node[last] = value
    return json.dumps(obj)


@pytest.mark.parametrize(
    "text",
    [
        _tokenizer_json(normalizer=[""]),  # loads, then the Rust side panics on the first text
        _tokenizer_json(
            model__continuing_subword_prefix="\x1c\ufffd\ufffd\ufffd"
        ),  # panics loading
    ],
)
def test_tokenizers_that_made_the_rust_side_panic_are_bad_input(text: str) -> None:
    with pytest.raises(BadInputError, match="not a valid tokenizer.json"):
        Tokenizer.from_json(text)


@pytest.mark.parametrize("special", [{"bos_id": "x"}, {"bos_id": 0, "eos_ids": "ab"}])
def test_special_ids_of_the_wrong_type_are_bad_input(special: dict) -> None:
    with pytest.raises(BadInputError, match="integer"):
        Tokenizer.from_json(fuzz.seeds()["tokenizer"].decode(), **special)


def _safetensors_with_config(tmp_path: Path, **changes) -> Path:
    header, body = fuzz._st_parts()
    header = json.loads(json.dumps(header))
    cfg = json.loads(header["__metadata__"]["config"])
    header["__metadata__"]["config"] = json.dumps({**cfg, **changes})
    raw = json.dumps(header).encode()
    path = tmp_path / "m.safetensors"
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + body)
    return path


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"n_heads": 0}, "config"),  # ZeroDivisionError in the config's own checks
        ({"vocab_size": 2**40}, "do not match the config"),  # allocated 8 TB before checking
        ({"hidden_dim": [64]}, "positive integer"),
        ({"rope_theta": "big"}, "positive number"),
        ({"tie_embeddings": "yes"}, "true or false"),
    ],
)
def test_model_configs_that_crashed_the_loader_are_bad_input(
    tmp_path: Path, changes: dict, message: str
) -> None:
    with pytest.raises(BadInputError, match=message):
        load_model(_safetensors_with_config(tmp_path, **changes))
