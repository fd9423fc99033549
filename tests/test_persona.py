"""Personas: Modelfiles parsed as Ollama reads them, the registry verbs (create, list, show, cp,
rm), resolution of a registered name like any MODEL, and a persona's defaults applied by chat,
generate and the server, each compared with the same settings given explicitly to the base model.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest
import torch

from live_server import serve_process
from peers import require_smollm2
from tiny_models import random_model, tiny_tokenizer
from twofiles.cli import main
from twofiles.errors import BadInputError, TwofilesError
from twofiles.formats import persona


@pytest.fixture(autouse=True)
def registry(tmp_path, monkeypatch) -> Path:
    """Each test its own registry (the cache stays where `twofiles pull` put smollm2)."""
    root = tmp_path / "registry"
    monkeypatch.setenv("TWOFILES_PERSONAS", str(root))
    return root


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A tiny random model with the built-in chat template, saved as a parameters file."""
    from twofiles.artifact import save_model

    tok = tiny_tokenizer()
    path = tmp_path_factory.mktemp("base") / "model.safetensors"
    return save_model(path, random_model(tok, max_seq_len=256), tok)


# A Jinja template on the built-in special tokens that writes each role out: its rendering shows it.
TEMPLATE = (
    "{%- for m in messages %}<|user_start|>{{ m.role }}: {{ m.content }}<|user_end|>"
    "{%- endfor %}{%- if add_generation_prompt %}<|assistant_start|>{%- endif %}"
)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def cli(capsys, *argv: str, stdin: str | None = None, monkeypatch=None) -> tuple[int, str, str]:
    if stdin is not None:
        monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def last_json(out: str) -> dict:
    return json.loads(out.rstrip("\n").splitlines()[-1])


# ---------------------------------------------------------------------------------------------
# The Modelfile


def test_modelfile_reads_as_ollama_reads_it(base, tmp_path, monkeypatch) -> None:
    mf = write(
        tmp_path / "mario" / "Modelfile",
        "# Mario, as in Ollama's docs\n"
        f"from ../{base.parent.name}/model.safetensors\n"
        "  # an indented comment\n"
        '\nSystem """You are Mario\nfrom Super Mario Bros."""\n'
        "PARAMETER temperature 0.25\n"
        'parameter stop "<|user_start|>"\n'
        "PARAMETER stop User:\n"
        "PARAMETER num_predict 7\n"
        "PARAMETER seed 11\n"
        "MESSAGE user Is this a question?\n"
        'MESSAGE assistant "Yes,\nit is."\n'
        'LICENSE """MIT\n(c) nobody"""\n',
    )
    (tmp_path / base.parent.name).symlink_to(base.parent)
    monkeypatch.chdir(tmp_path.parent)  # FROM is relative to the Modelfile, not to the cwd
    record = persona.build_record("mario", mf)
    assert record["name"] == "mario:latest"
    assert record["from"] == str(tmp_path / base.parent.name / "model.safetensors")
    assert record["system"] == "You are Mario\nfrom Super Mario Bros."
    assert record["parameters"] == {
        "temperature": 0.25,
        "stop": ["<|user_start|>", "User:"],
        "num_predict": 7,
        "seed": 11,
    }
    assert record["messages"] == [
        {"role": "user", "content": "Is this a question?"},
        {"role": "assistant", "content": "Yes,\nit is."},
    ]
    assert record["license"] == ["MIT\n(c) nobody"]
    assert set(record["files"]) == {record["from"]}
    assert (
        record["files"][record["from"]]["sha256"]
        == __import__("hashlib").sha256(base.read_bytes()).hexdigest()
    )
    p = persona.persona_of(record)
    assert p.sampling == {
        "temperature": 0.25,
        "stop": ["<|user_start|>", "User:"],
        "max_tokens": 7,
        "seed": 11,
    }
    # the Modelfile `show --modelfile` prints reads back to the same persona
    again = persona.build_record("mario", write(tmp_path / "again", persona.to_modelfile(record)))
    same = ("from", "system", "parameters", "messages", "license", "adapters", "template")
    assert {k: again[k] for k in same} == {k: record[k] for k in same}


@pytest.mark.parametrize(
    "text, line, message",
    [
        ("FROM {base}\nSYSTEM hi\nFOO bar\n", 3, "unknown instruction 'FOO'"),
        ("FROM {base}\n\nPARAMETER temprature 0.5\n", 3, "unknown PARAMETER 'temprature'"),
        ("FROM {base}\nPARAMETER top_k lots\n", 2, "top_k 'lots': not an integer"),
        ("FROM {base}\nPARAMETER top_p 1.5\n", 2, "must be in (0, 1]"),
        ("FROM {base}\nPARAMETER repeat_last_n 64\n", 2, "repeat_last_n is not supported"),
        ("FROM {base}\nMESSAGE tool hi\n", 2, "MESSAGE role 'tool'"),
        ('FROM {base}\n# note\nSYSTEM """never\nclosed\n', 3, 'the """ opened on this line'),
        ("FROM {base}\nSYSTEM a\nSYSTEM b\n", 3, "a second SYSTEM (the first is on line 2)"),
        ("FROM ./missing.gguf\n", 1, "FROM ./missing.gguf: no such file"),
        ("FROM {base}\nADAPTER {base}\n", 2, "not a LoRA adapters file"),
        (
            'FROM {base}\nTEMPLATE """{{{{ if .System }}}}{{{{ .System }}}}{{{{ end }}}}"""\n',
            2,
            "Go templates are not supported; write the template in Jinja",
        ),
        ("FROM {base}\nTEMPLATE {{{{- range .Messages }}}}\n", 2, "Go templates are not supported"),
        # Ollama's own refusals: a value that is missing, a """ closed by "" only
        ("FROM {base}\nMESSAGE system\n", 2, "MESSAGE system needs a value"),
        ("FROM {base}\nPARAMETER stop   \n", 2, "PARAMETER stop needs a value"),
        ("FROM {base}\nSYSTEM\n", 2, "SYSTEM needs a value"),
        ('FROM {base}\nSYSTEM """This is a system.""\n', 2, 'the """ opened on this line'),
        # Ollama's instructions and parameters with no meaning here, named as such
        ("FROM {base}\nDRAFT ./small.gguf\n", 2, "DRAFT is not supported (speculative"),
        ("FROM {base}\r\nrenderer qwen3\r\n", 2, "RENDERER is not supported"),
        ("FROM {base}\nPARAMETER penalize_newline true\n", 2, "deprecated in Ollama"),
        ("FROM {base}\nPARAMETER use_mmap true\n", 2, "use_mmap is not supported"),
    ],
)
def test_modelfile_errors_name_file_and_line(base, tmp_path, capsys, text, line, message) -> None:
    mf = write(tmp_path / "Modelfile", text.format(base=base))
    with pytest.raises(BadInputError) as e:
        persona.build_record("x", mf)
    assert str(e.value).startswith(f"{mf}:{line}: ") and message in str(e.value), str(e.value)
    # through the CLI: exit 2, the same message, nothing registered
    rc, _, err = cli(capsys, "create", "x", "-f", str(mf))
    assert rc == 2 and message in err and "Traceback" not in err
    assert persona.list_records() == []


def test_modelfile_without_from_and_bad_names(tmp_path) -> None:
    mf = write(tmp_path / "Modelfile", "SYSTEM hi\n")
    with pytest.raises(BadInputError, match=f"{mf}: no FROM line"):
        persona.build_record("x", mf)
    assert persona.canonical_name("mario") == "mario:latest"
    assert persona.canonical_name("my-model_2.1:q4.v2") == "my-model_2.1:q4.v2"
    for bad in ("", "../x", "a/b", "-x", "a:b:c", "a b", "x:", "é"):
        with pytest.raises(TwofilesError, match="letters, digits"):
            persona.canonical_name(bad)
    with pytest.raises(TwofilesError, match="built-in model alias"):
        persona.canonical_name("smollm2:pirate")


# ---------------------------------------------------------------------------------------------
# The registry verbs


def test_create_list_show_cp_rm(base, tmp_path, capsys) -> None:
    mf = write(tmp_path / "Modelfile", f"FROM {base}\nSYSTEM Be brief.\nPARAMETER top_k 5\n")
    rc, out, err = cli(capsys, "create", "brief", "-f", str(mf), "--json")
    assert rc == 0, err
    assert last_json(out)["name"] == "brief:latest" and "created brief:latest" in err
    rc, out, _ = cli(capsys, "list")
    assert rc == 0 and "NAME" in out and "brief:latest" in out and "Be brief." in out
    rc, out, _ = cli(capsys, "cp", "brief", "brief:v2")
    assert rc == 0
    rows = last_json(cli(capsys, "list", "--json")[1])["personas"]
    assert [r["name"] for r in rows] == ["brief:latest", "brief:v2"]
    assert rows[1]["system"] == "Be brief." and rows[1]["parameters"] == {"top_k": 5}

    shown = last_json(cli(capsys, "show", "brief:v2", "--json")[1])
    assert shown["from"] == str(base) and shown["file_status"] == {str(base): "unchanged"}
    rc, out, _ = cli(capsys, "show", "brief")
    assert rc == 0 and "system     Be brief." in out and f"{base} (unchanged)" in out
    rc, out, _ = cli(capsys, "show", "brief", "--modelfile")
    assert f"FROM {base}\n" in out and "SYSTEM Be brief.\n" in out and "PARAMETER top_k 5\n" in out

    # rm: the names go, the files they name stay; unknown names remove nothing
    rc, _, err = cli(capsys, "rm", "brief:v2", "nobody")
    assert rc == 2 and "nobody: no such persona" in err
    assert len(persona.list_records()) == 2
    rc, _, err = cli(capsys, "rm", "brief:v2")
    assert rc == 0 and "deleted brief:v2" in err
    assert [r["name"] for r in persona.list_records()] == ["brief:latest"]
    assert base.is_file() and mf.is_file()
    rc, _, err = cli(capsys, "show", "brief:v2")
    assert rc == 2 and "registered: brief:latest" in err
    # a damaged record is an error naming its file, and rm still removes it
    persona.record_path("brief").write_text("{not json", encoding="utf-8")
    rc, _, err = cli(capsys, "list")
    assert rc == 2 and str(persona.record_path("brief")) in err and "unreadable" in err
    assert cli(capsys, "rm", "brief")[0] == 0 and persona.list_records() == []


def test_show_says_when_a_file_changed(base, tmp_path, capsys) -> None:
    import shutil

    model = tmp_path / "copy.safetensors"
    shutil.copy(base, model)
    cli(capsys, "create", "c", "-f", str(write(tmp_path / "Modelfile", f"FROM {model}\n")))
    os.utime(model, ns=(1, 1))  # touched, same bytes: still unchanged (the hash decides)
    assert persona.file_status(persona.get("c")) == {str(model): "unchanged"}
    with open(model, "r+b") as f:
        f.seek(-1, 2)
        last = f.read(1)
        f.seek(-1, 2)
        f.write(bytes([last[0] ^ 1]))
    assert persona.file_status(persona.get("c")) == {str(model): "changed"}
    model.unlink()
    rc, out, _ = cli(capsys, "show", "c")
    assert rc == 0 and f"{model} (missing)" in out


def test_from_a_registered_name_copies_it(base, tmp_path, capsys) -> None:
    cli(capsys, "create", "a", "-f", str(write(tmp_path / "A", f"FROM {base}\nSYSTEM one\n")))
    child = write(tmp_path / "B", "PARAMETER seed 3\nFROM a\n")  # FROM need not come first
    assert cli(capsys, "create", "b", "-f", str(child))[0] == 0
    b = persona.get("b")
    assert (b["from"], b["system"], b["parent"]) == (str(base), "one", "a:latest")
    assert b["parameters"] == {"seed": 3} and set(b["files"]) == {str(base)}
    cli(capsys, "rm", "a")  # b was a copy: it stands alone
    assert persona.get("b")["system"] == "one"
    rc, _, err = cli(capsys, "create", "b", "-f", str(write(tmp_path / "C", "FROM b\n")))
    assert rc == 2 and "cannot start from itself" in err


# ---------------------------------------------------------------------------------------------
# Resolution: a registered name is a MODEL like any other


def test_resolves_with_template_context_and_adapters(base, tmp_path) -> None:
    from twofiles.formats.resolve import resolve_model
    from twofiles.lora import LoRAConfig, apply_lora, lora_layers, save_adapters

    m = resolve_model(str(base)).model
    cfg = LoRAConfig(rank=2, alpha=4)
    apply_lora(m, cfg)
    with torch.no_grad():
        for layer in lora_layers(m).values():
            layer.lora_B.normal_(0, 0.1)
    adapters = save_adapters(tmp_path / "adapters.safetensors", m, cfg, base=str(base))
    template = TEMPLATE
    mf = write(
        tmp_path / "Modelfile",
        f'FROM {base}\nADAPTER adapters.safetensors\nTEMPLATE """{template}"""\n'
        "PARAMETER num_ctx 64\nSYSTEM Be brief.\n",
    )
    persona.save(persona.build_record("tuned", mf))
    loaded = resolve_model("tuned")
    want = resolve_model(str(adapters))  # the adapters file's own base, adapted and merged
    x = torch.randint(0, 300, (1, 10), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(loaded.model(x), want.model(x), rtol=1e-5, atol=1e-5)
    assert loaded.chat_template == template and loaded.model.config.max_seq_len == 64
    assert loaded.persona is not None and loaded.persona.system == "Be brief."
    assert persona.get("tuned")["files"].keys() == {str(base), str(adapters)}
    # FROM a registered name keeps an ADAPTER written before it
    persona.save(persona.build_record("plain", write(tmp_path / "P", f"FROM {base}\n")))
    child = write(tmp_path / "C", "ADAPTER adapters.safetensors\nFROM plain\n")
    assert persona.build_record("child", child)["adapters"] == [str(adapters)]

    from twofiles.chat import ChatFormat

    text = ChatFormat.for_model(loaded).render_text(
        [*loaded.persona.prefix(False), {"role": "user", "content": "hi"}],
        add_generation_prompt=True,
    )
    assert text.endswith(
        "system: Be brief.<|user_end|><|user_start|>user: hi<|user_end|><|assistant_start|>"
    )


def test_create_refuses_a_template_that_does_not_compile(base, tmp_path, capsys) -> None:
    mf = write(tmp_path / "Modelfile", f"FROM {base}\n\nTEMPLATE {{% for m in messages %}}\n")
    rc, _, err = cli(capsys, "create", "t", "-f", str(mf))
    assert rc == 2 and f"{mf}:3: the persona cannot chat" in err and "syntax error" in err
    assert persona.list_records() == []


# ---------------------------------------------------------------------------------------------
# chat and generate apply it: the same as the settings given explicitly


def test_chat_applies_system_messages_and_parameters(base, tmp_path, capsys, monkeypatch) -> None:
    mf = write(
        tmp_path / "Modelfile",
        f"FROM {base}\nSYSTEM You are terse.\nPARAMETER seed 5\nPARAMETER temperature 0.9\n"
        "PARAMETER num_predict 6\nMESSAGE user to be\nMESSAGE assistant or not\n",
    )
    assert cli(capsys, "create", "terse", "-f", str(mf))[0] == 0
    script = "that is\nthe question\n"
    rc, out, err = cli(capsys, "chat", "terse", "--json", stdin=script, monkeypatch=monkeypatch)
    assert rc == 0, err
    got = last_json(out)
    assert "persona terse:latest" in err
    assert got["seed"] == 5 and got["tokens"] <= 12
    assert got["messages"][:3] == [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "to be"},
        {"role": "assistant", "content": "or not"},
    ]
    # the base model with the same settings as flags, and the few-shot turns as a saved chat
    start = tmp_path / "start.json"
    start.write_text(json.dumps({"messages": got["messages"][:3]}), encoding="utf-8")
    explicit = ("--seed", "5", "--temperature", "0.9", "--max-tokens", "6", "--json")
    rc, out, _ = cli(
        capsys,
        "chat",
        str(base),
        "--load",
        str(start),
        *explicit,
        stdin=script,
        monkeypatch=monkeypatch,
    )
    assert rc == 0 and last_json(out)["replies"] == got["replies"]
    # explicit flags win over the persona's defaults, --system over its SYSTEM
    mine = ("--system", "Be loud.", "--seed", "9", "--temperature", "0", "--max-tokens", "4")
    rc, out, _ = cli(
        capsys, "chat", "terse", *mine, "--json", stdin=script, monkeypatch=monkeypatch
    )
    over = last_json(out)
    assert over["seed"] == 9 and over["messages"][0] == {"role": "system", "content": "Be loud."}
    assert over["messages"][1:3] == got["messages"][1:3]
    start.write_text(json.dumps({"messages": over["messages"][:3]}), encoding="utf-8")
    rc, out, _ = cli(
        capsys, "chat", str(base), "--load", str(start), *mine[2:], "--json",
        stdin=script, monkeypatch=monkeypatch,
    )  # fmt: skip
    assert last_json(out)["replies"] == over["replies"]


def test_generate_applies_parameters(base, tmp_path, capsys) -> None:
    mf = write(
        tmp_path / "Modelfile",
        f"FROM {base}\nSYSTEM not for continuations\nPARAMETER seed 7\nPARAMETER temperature 1.3\n"
        "PARAMETER num_predict 9\nPARAMETER top_k 20\n",
    )
    assert cli(capsys, "create", "wild", "-f", str(mf))[0] == 0
    rc, out, err = cli(capsys, "generate", "wild", "--prompt", "to be", "--json")
    assert rc == 0, err
    got = last_json(out)
    assert got["seed"] == 7 and got["tokens"] == 9
    flags = ("--seed", "7", "--temperature", "1.3", "--max-tokens", "9", "--top-k", "20")
    rc, out, _ = cli(capsys, "generate", str(base), "--prompt", "to be", *flags, "--json")
    assert last_json(out)["text"] == got["text"]
    # another seed, given as a flag, wins (and changes the sample)
    rc, out, _ = cli(capsys, "generate", "wild", "--prompt", "to be", "--seed", "8", "--json")
    other = last_json(out)
    assert other["seed"] == 8 and other["tokens"] == 9 and other["text"] != got["text"]
    rc, out, _ = cli(
        capsys, "generate", str(base), "--prompt", "to be", *flags[2:], "--seed", "8", "--json"
    )
    assert last_json(out)["text"] == other["text"]


# ---------------------------------------------------------------------------------------------
# serve: personas on their base model's engine


def test_served_on_the_base_models_engine(base, tmp_path, capsys) -> None:
    from fastapi.testclient import TestClient

    from twofiles.serve.app import create_app
    from twofiles.serve.core import load_models

    mf = write(
        tmp_path / "Modelfile",
        f"FROM {base}\nSYSTEM You are terse.\nPARAMETER seed 4\nPARAMETER num_predict 5\n"
        "MESSAGE user to be\nMESSAGE assistant or not\n",
    )
    assert cli(capsys, "create", "terse", "-f", str(mf))[0] == 0
    own = write(tmp_path / "Own", f'FROM {base}\nPARAMETER num_ctx 40\nTEMPLATE """{TEMPLATE}"""\n')
    assert cli(capsys, "create", "short:v1", "-f", str(own))[0] == 0
    models, shared = load_models({"base": str(base)})
    assert list(models) == ["base", "short:v1", "terse"]
    assert shared == {"short:v1": "base", "terse": "base"}
    assert models["terse"].model is models["base"].model  # one copy of the weights
    assert load_models({"base": str(base)}, personas=False)[0].keys() == {"base"}
    # named with its base: a view of it; named alone: loaded, on its own engine
    models2, shared2 = load_models({"t": "terse", "base": str(base)}, personas=False)
    assert shared2 == {"t": "base"} and models2["t"].model is models2["base"].model
    alone, shared3 = load_models({"terse": "terse"})
    assert shared3 == {} and alone["terse"].persona.name == "terse:latest"
    # a persona named in another spelling (or under another name) is served once, as named
    models4, shared4 = load_models({"base": str(base), "Terse": "Terse"})
    assert list(models4) == ["base", "Terse", "short:v1"]
    assert shared4 == {"Terse": "base", "short:v1": "base"}

    app = create_app(models, shared=shared)
    assert list(app.state.scheduler.engines) == ["base"]  # one engine, one KV cache
    with TestClient(app) as client:
        cards = {m["id"]: m for m in client.get("/v1/models").json()["data"]}
        assert list(cards) == ["base", "short:v1", "terse"]
        assert (
            cards["terse"]["parent"] == "base"
            and cards["terse"]["persona"]["name"] == "terse:latest"
        )
        assert cards["short:v1"]["context_length"] == 40 and "parent" not in cards["base"]

        def chat(model: str, messages: list[dict], **kw) -> dict:
            r = client.post(
                "/v1/chat/completions", json={"model": model, "messages": messages, **kw}
            )
            assert r.status_code == 200, r.text
            return r.json()

        user = [{"role": "user", "content": "that is"}]
        got = chat("terse", user)
        few_shot = [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "to be"},
            {"role": "assistant", "content": "or not"},
        ]
        want = chat("base", few_shot + user, seed=4, max_tokens=5)
        assert got["choices"][0]["message"] == want["choices"][0]["message"]
        assert got["usage"] == want["usage"] and got["usage"]["completion_tokens"] == 5
        # a request's own system message and settings win
        mine = [{"role": "system", "content": "Be loud."}, *user]
        got = chat("terse", mine, seed=1, max_tokens=3, temperature=0)
        want = chat("base", [mine[0], *few_shot[1:], *user], seed=1, max_tokens=3, temperature=0)
        assert got["choices"][0]["message"] == want["choices"][0]["message"]
        assert got["usage"] == want["usage"]
        # completions: its PARAMETERs only
        r = client.post("/v1/completions", json={"model": "terse", "prompt": "to be"}).json()
        w = client.post(
            "/v1/completions", json={"model": "base", "prompt": "to be", "seed": 4, "max_tokens": 5}
        ).json()
        assert r["choices"][0]["text"] == w["choices"][0]["text"]
        # num_ctx bounds the prompt of the persona, not of the model it shares
        long = [{"role": "user", "content": "to be or not to be " * 6}]
        r = client.post("/v1/chat/completions", json={"model": "short:v1", "messages": long})
        assert r.status_code == 400 and "at most 39" in r.json()["error"]["message"]
        assert chat("base", long, max_tokens=2)["usage"]["completion_tokens"] == 2
        # TEMPLATE: the persona's requests are rendered with it, the base's with the model's own
        from twofiles.serve.core import chat_format

        assert chat_format(app, "short:v1").template == TEMPLATE
        assert chat_format(app, "base").template != TEMPLATE
        fmt = chat_format(app, "short:v1")
        r = chat("short:v1", user, max_tokens=1)
        assert r["usage"]["prompt_tokens"] == len(fmt.prompt_ids(user))


@pytest.mark.slow
def test_smollm2_persona_with_a_system_line(tmp_path, capsys, monkeypatch) -> None:

    require_smollm2()
    system = "You are Mario from Super Mario Bros."
    mf = write(tmp_path / "Modelfile", f"FROM smollm2\nSYSTEM {system}\nPARAMETER temperature 0\n")
    rc, _, err = cli(capsys, "create", "pirate", "-f", str(mf))
    assert rc == 0, err
    question = "Who are you?\n"
    rc, out, err = cli(
        capsys,
        "chat",
        "pirate",
        "--max-tokens",
        "24",
        "--json",
        stdin=question,
        monkeypatch=monkeypatch,
    )
    assert rc == 0, err
    got = last_json(out)
    assert got["template"] == "model" and got["messages"][0] == {
        "role": "system",
        "content": system,
    }
    rc, out, _ = cli(
        capsys, "chat", "smollm2", "--system", system, "--temperature", "0", "--max-tokens", "24",
        "--json", stdin=question, monkeypatch=monkeypatch,
    )  # fmt: skip
    want = last_json(out)
    assert got["replies"] == want["replies"] and "Mario" in got["replies"][0]
    plain = cli(
        capsys, "chat", "smollm2", "--temperature", "0", "--max-tokens", "24", "--json",
        stdin=question, monkeypatch=monkeypatch,
    )  # fmt: skip
    assert "Mario" not in last_json(plain[1])["replies"][0]  # the SYSTEM line made the answer


@pytest.mark.slow
def test_web_menu_lists_a_persona(base, tmp_path, capsys) -> None:
    """The chat page in a real browser (as tests/test_web.py drives it): the persona is in the
    model menu, and picking it fills the settings with its defaults."""
    from test_web import CHROMIUM, CHROMIUM_ARGS, TIMEOUT_MS, _Server

    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing (apt-get install -y chromium)")
    from playwright import sync_api

    from twofiles.serve.app import create_app
    from twofiles.serve.core import load_models

    mf = write(
        tmp_path / "Modelfile",
        f"FROM {base}\nSYSTEM You are terse.\nPARAMETER temperature 0.3\nPARAMETER num_predict 9\n",
    )
    assert cli(capsys, "create", "terse", "-f", str(mf))[0] == 0
    models, shared = load_models({"tiny": str(base)})
    with _Server(create_app(models, shared=shared)) as server, sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            pg = browser.new_page()
            pg.set_default_timeout(TIMEOUT_MS)
            errors: list[str] = []
            pg.on("pageerror", lambda e: errors.append(str(e)))
            pg.goto(server.url + "/")
            pg.wait_for_function("() => document.querySelectorAll('#model option').length === 2")
            options = pg.eval_on_selector_all("#model option", "os => os.map(o => o.textContent)")
            assert options == ["tiny", "terse (persona)"]
            assert pg.input_value("#temperature") == "0.7"
            pg.select_option("#model", "terse")
            assert pg.input_value("#temperature") == "0.3"
            assert pg.input_value("#max_tokens") == "9"
            assert pg.get_attribute("#system", "placeholder") == "You are terse."
            pg.select_option("#model", "tiny")  # a plain model: the page's own defaults
            assert pg.input_value("#temperature") == "0.7"
            assert pg.input_value("#max_tokens") == "256"
            assert not errors, errors
        finally:
            browser.close()


# ---------------------------------------------------------------------------------------------
# Ollama's parser tests (ollama/ollama parser/parser_test.go), as they apply here


@pytest.mark.parametrize(
    "text, want",
    [
        # FROM: quotes keep inner spaces, bare values are trimmed, a path may hold spaces
        ('FROM "FOO  BAR  "', [("from", "", "FOO  BAR  ")]),
        ("FROM     FOOO BAR    ", [("from", "", "FOOO BAR")]),
        ("FROM /what/is/the path ", [("from", "", "/what/is/the path")]),
        ("FROM llama3:7b-instruct-q4_K_M", [("from", "", "llama3:7b-instruct-q4_K_M")]),
        ("PARAMETER seed 1\nFROM foo", [("parameter", "seed", "1"), ("from", "", "foo")]),
        (
            'FROM "     model 1"\nADAPTER      adapter3\nLICENSE "MIT       "',
            [
                ("from", "", "     model 1"),
                ("adapter", "", "adapter3"),
                ("license", "", "MIT       "),
            ],
        ),
        # quoting: """ spans lines, inner quotes stay, empty values, backslashes are not escapes
        (
            'FROM foo\nSYSTEM """\nThis is a\nmultiline system.\n"""\n\t\t\t',
            [("system", "", "\nThis is a\nmultiline system.\n")],
        ),
        (
            'FROM foo\nSYSTEM """This is a\nmultiline system."""\n',
            [("system", "", "This is a\nmultiline system.")],
        ),
        (
            'FROM foo\nSYSTEM """\nA system with "quotes".\n"""\n',
            [("system", "", '\nA system with "quotes".\n')],
        ),
        ('FROM foo\nSYSTEM """"""\n', [("system", "", "")]),
        ('FROM foo\nSYSTEM ""\n', [("system", "", "")]),
        ('FROM foo\nSYSTEM "\'"\n', [("system", "", "'")]),
        (
            'FROM foo\nSYSTEM """\'\'"\'""\'""\'"\'\'\'\'\'""\'""\'"""\n',
            [("system", "", "''\"'\"\"'\"\"'\"'''''\"\"'\"\"'")],
        ),
        ('FROM foo\nSYSTEM "say \\"hi\\" \\n"\n', [("system", "", 'say \\"hi\\" \\n')]),
        ("FROM foo\nSYSTEM 你好👋\tok", [("system", "", "你好👋\tok")]),
        # PARAMETER stop, repeated and quoted as Ollama's table has it
        ("FROM foo\nPARAMETER stop ### User: ", [("parameter", "stop", "### User:")]),
        ('FROM foo\nPARAMETER stop "### User: "', [("parameter", "stop", "### User: ")]),
        ('FROM foo\nPARAMETER stop """### User:\n"""', [("parameter", "stop", "### User:\n")]),
        ("FROM foo\nPARAMETER\tstop\t</s>", [("parameter", "stop", "</s>")]),
        # MESSAGE roles, one line or several
        (
            "FROM foo\nMESSAGE system You are a parser.\nMESSAGE user Hey there!\n"
            "MESSAGE assistant Hello!",
            [
                ("message", "system", "You are a parser."),
                ("message", "user", "Hey there!"),
                ("message", "assistant", "Hello!"),
            ],
        ),
        ('FROM foo\nMESSAGE system """\nmulti\n"""\n\t\t\t', [("message", "system", "\nmulti\n")]),
        # comments, blank and indented lines, instruction case, line endings, a byte-order mark
        ("\n# comment\n\n   FROM foo\n\t", [("from", "", "foo")]),
        (
            "from foo\nFrOm bar\nsystem hi",
            [("from", "", "foo"), ("from", "", "bar"), ("system", "", "hi")],
        ),
        (
            '\ufeffFROM foo\r\nSYSTEM """a\r\nb"""\r\n',
            [("from", "", "foo"), ("system", "", "a\nb")],
        ),
        ("FROM foo\rSYSTEM hi\r", [("from", "", "foo"), ("system", "", "hi")]),
        ("FROM foo # not a comment", [("from", "", "foo # not a comment")]),
    ],
)
def test_modelfile_parses_as_ollamas_parser_tests(text, want) -> None:
    got = [(c.name, c.key, c.args) for c in persona.parse_modelfile(text, "Modelfile")]
    assert got[-len(want) :] == want


def test_modelfile_encodings_and_paths_with_spaces(base, tmp_path) -> None:
    """A Modelfile saved as UTF-16 (PowerShell's `>`), with a UTF-8 BOM or with CRLF reads the
    same; FROM takes a path holding spaces, quoted or not, relative to the Modelfile."""
    spaced = tmp_path / "my models" / "tiny model.safetensors"
    spaced.parent.mkdir()
    spaced.symlink_to(base)
    gguf = tmp_path / "relative.gguf"
    gguf.write_bytes(b"GGUF")  # only read at load time: the record hashes it
    text = 'FROM ./my models/tiny model.safetensors\nSYSTEM """Hi, ünïcode 👋\nthere"""\n'
    want = persona.build_record("x", write(tmp_path / "plain", text))
    assert want["from"] == str(spaced) and want["system"] == "Hi, ünïcode 👋\nthere"
    for name, data in {
        "utf16le": "\ufeff".encode("utf-16-le") + text.encode("utf-16-le"),
        "utf16be": "\ufeff".encode("utf-16-be") + text.encode("utf-16-be"),
        "utf8bom": b"\xef\xbb\xbf" + text.encode(),
        "crlf": text.replace("\n", "\r\n").encode(),
        "quoted": text.replace(
            "FROM ./my models/tiny model.safetensors", 'FROM "./my models/tiny model.safetensors"'
        ).encode(),
    }.items():
        (tmp_path / name).write_bytes(data)
        got = persona.build_record("x", tmp_path / name)
        assert (got["from"], got["system"]) == (want["from"], want["system"]), name
    assert persona.build_record("x", write(tmp_path / "g", "FROM ./relative.gguf\n"))[
        "from"
    ] == str(gguf)
    (tmp_path / "latin1").write_bytes("FROM foo\nSYSTEM caf\xe9\n".encode("latin-1"))
    with pytest.raises(BadInputError, match="latin1: cannot read the Modelfile"):
        persona.build_record("x", tmp_path / "latin1")
    # show --modelfile quotes a path that would not read back as written
    record = dict(want, **{"from": str(tmp_path / " padded ")})
    assert 'FROM """' in persona.to_modelfile(record)


# ---------------------------------------------------------------------------------------------
# Names and the registry's edge cases


def test_names_are_case_insensitive_and_a_missing_registry_is_empty(
    base, tmp_path, capsys, registry
) -> None:
    assert not registry.exists()
    rc, out, _ = cli(capsys, "list")
    assert rc == 0 and "no personas yet" in out and not registry.exists()
    rc, _, err = cli(capsys, "rm", "ghost")
    assert rc == 2 and "ghost: no such persona (registered: none yet)" in err
    rc, _, err = cli(capsys, "cp", "ghost", "other")
    assert rc == 2 and "no such persona" in err and not registry.exists()
    mf = write(tmp_path / "Modelfile", f"FROM {base}\nSYSTEM Hi.\n")
    assert cli(capsys, "create", "Mario:V2", "-f", str(mf))[0] == 0  # the registry is made
    assert persona.canonical_name("Mario") == "mario:latest"
    assert persona.get("MARIO:v2")["name"] == "mario:v2"
    assert cli(capsys, "create", "mario:v2", "-f", str(mf))[0] == 0  # the same name, replaced
    assert cli(capsys, "cp", "mario:V2", "Luigi")[0] == 0
    rc, out, _ = cli(capsys, "list", "--json")
    assert [p["name"] for p in last_json(out)["personas"]] == ["luigi:latest", "mario:v2"]
    rc, out, _ = cli(capsys, "show", "LUIGI", "--json")
    assert rc == 0 and last_json(out)["name"] == "luigi:latest"
    from twofiles.formats.resolve import resolve_model

    assert resolve_model("Luigi").persona.system == "Hi."
    rc, out, err = cli(capsys, "rm", "MARIO:V2", "luigi:latest", "Luigi", "mario:v2", "--json")
    assert rc == 0 and last_json(out)["removed"] == ["mario:v2", "luigi:latest"]
    assert persona.list_records() == [] and list(registry.iterdir()) == []


def test_an_unwritable_registry_is_a_clear_error(base, tmp_path, capsys, monkeypatch) -> None:
    mf = write(tmp_path / "Modelfile", f"FROM {base}\n")
    blocker = write(tmp_path / "not-a-dir", "")  # a file where the registry's parent should be
    monkeypatch.setenv("TWOFILES_PERSONAS", str(blocker / "personas"))
    rc, _, err = cli(capsys, "create", "mario", "-f", str(mf))
    assert rc == 2 and "Traceback" not in err
    assert f"cannot write mario:latest in the persona registry {blocker / 'personas'}" in err
    assert "TWOFILES_PERSONAS" in err
    assert cli(capsys, "list")[0] == 0  # reading still works
    # a registry the user may read but not change (simulated: the tests may run as root)
    root = tmp_path / "ro"
    monkeypatch.setenv("TWOFILES_PERSONAS", str(root))
    assert cli(capsys, "create", "mario", "-f", str(mf))[0] == 0

    def refuse(self, *a, **k):
        raise PermissionError(13, "Permission denied", str(self))

    with monkeypatch.context() as m:
        m.setattr(Path, "unlink", refuse)
        rc, _, err = cli(capsys, "rm", "mario")
        assert rc == 2 and "cannot remove mario:latest" in err and "Permission denied" in err
    with monkeypatch.context() as m:
        m.setattr(os, "replace", lambda src, dst: refuse(Path(dst)))
        rc, _, err = cli(capsys, "cp", "mario", "luigi")
        assert rc == 2 and "cannot write luigi:latest" in err
    assert [r["name"] for r in persona.list_records()] == ["mario:latest"]
    # nothing half-written: no temporary file, no empty directory for the name
    assert sorted(p.name for p in root.rglob("*")) == ["latest.json", "mario"]


# ---------------------------------------------------------------------------------------------
# A persona as a training base


def test_sft_and_export_from_a_persona_keep_the_models_context(base, tmp_path, capsys) -> None:
    """num_ctx caps chats; training from the persona neither cuts its conversations to num_ctx
    nor saves a model whose max_seq_len shrank to it, and neither does exporting it."""
    from twofiles.artifact import load_model
    from twofiles.formats.resolve import resolve_model

    mf = write(tmp_path / "Modelfile", f"FROM {base}\nPARAMETER num_ctx 12\n")
    assert cli(capsys, "create", "short", "-f", str(mf))[0] == 0
    assert resolve_model("short").model.config.max_seq_len == 12  # chats are capped
    assert resolve_model("short", cap_context=False).model.config.max_seq_len == 256
    question = "a b c d e f g h i j "
    convs = tmp_path / "convs.jsonl"
    convs.write_text(
        "".join(
            json.dumps(
                {
                    "messages": [
                        {"role": "user", "content": f"{question}{i}"},
                        {"role": "assistant", "content": f"ok {i}"},
                    ]
                }
            )
            + "\n"
            for i in range(8)
        )
    )
    out = tmp_path / "run"
    rc, _, err = cli(
        capsys,
        "sft",
        "short",
        "--data",
        str(convs),
        "--val-data",
        str(convs),
        "--out",
        str(out),
        "--max-steps",
        "1",
        "--batch-size",
        "2",
        "--seq-len",
        "96",
        "--skill-tasks",
        "0",
        "--threads",
        "1",
        "--no-progress",
        "--json",
    )
    assert rc == 0, err[-2000:]
    trained = load_model(out / "model.safetensors")
    assert trained.model.config.max_seq_len == 256
    # exporting the persona writes its model, whose context is the model's own too
    assert cli(capsys, "export", "hf", "short", str(tmp_path / "hf"))[0] == 0
    hf_config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert hf_config["max_position_embeddings"] == 256
    assert cli(capsys, "export", "run", "short", str(tmp_path / "run2"))[0] == 0
    assert load_model(tmp_path / "run2" / "model.safetensors").model.config.max_seq_len == 256


@pytest.mark.slow
def test_serve_cli_serves_a_persona_beside_its_base(base, tmp_path, capsys) -> None:
    """`twofiles serve MODEL` as a user runs it (a real process, an OpenAI client): the
    registered persona over MODEL is listed and answers as the base model does with the
    persona's system message, few-shot turns and settings sent explicitly; its tokens are
    counted under its own name."""
    import urllib.request

    import openai

    mf = write(
        tmp_path / "Modelfile",
        f"FROM {base}\nSYSTEM You are terse.\nPARAMETER seed 4\nPARAMETER num_predict 5\n"
        "MESSAGE user to be\nMESSAGE assistant or not\n",
    )
    assert cli(capsys, "create", "terse", "-f", str(mf))[0] == 0
    with serve_process(
        [f"base={base}", "--port", "0", "--device", "cpu", "--threads", "1", "--json"]
    ) as proc:
        proc.stdout.readline()
        summary = json.loads(proc.stdout.readline())
        client = openai.OpenAI(base_url=summary["base_url"], api_key="-", max_retries=0)
        assert [m.id for m in client.models.list().data] == ["base", "terse"]
        user = [{"role": "user", "content": "that is"}]
        got = client.chat.completions.create(model="terse", messages=user)
        few_shot = [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "to be"},
            {"role": "assistant", "content": "or not"},
        ]
        want = client.chat.completions.create(
            model="base", messages=few_shot + user, seed=4, max_tokens=5
        )
        assert got.choices[0].message.content == want.choices[0].message.content
        assert got.usage.completion_tokens == want.usage.completion_tokens == 5
        with urllib.request.urlopen(summary["metrics"], timeout=30) as scraped:
            assert 'twofiles_generation_tokens_total{model="terse"} 5.0' in scraped.read().decode()
