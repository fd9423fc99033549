"""`twofiles serve` end to end: a real process on a free port, a real client, Ctrl-C to stop."""

from __future__ import annotations

import json
import socket
import urllib.request

import openai
import pytest

from live_server import serve_process
from tiny_models import random_model, tiny_tokenizer
from twofiles.cli import main
from twofiles.paths import default_db
from twofiles.serve.app import model_name


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    from twofiles.artifact import save_model

    tok = tiny_tokenizer()
    run_dir = tmp_path_factory.mktemp("runs") / "base"
    run_dir.mkdir()
    return str(save_model(run_dir / "model.safetensors", random_model(tok, max_seq_len=64), tok))


@pytest.mark.slow
def test_serves_until_interrupted(model_path, tmp_path):
    keys = tmp_path / "keys.txt"
    keys.write_text("# team keys\nsecret-1\n\nsecret-2  # ci\n", encoding="utf-8")
    with serve_process(
        [
            f"mine={model_path}",
            model_path,
            "--port",
            "0",
            "--api-keys-file",
            str(keys),
            "--device",
            "cpu",
            "--max-seqs",
            "2",
            "--quantize",
            "int8",
            "--threads",
            "1",
            "--arena-db",
            str(tmp_path / "votes.sqlite"),
            "--json",
        ]
    ) as proc:
        first = proc.stdout.readline()
        summary = json.loads(proc.stdout.readline())
        assert "/v1" in first and summary["models"] == ["mine", "base"] and summary["auth"] is True
        assert summary["url"].startswith("http://127.0.0.1:")
        assert summary["arena_db"] == str(tmp_path / "votes.sqlite")
        assert summary["feedback_db"] == str(
            default_db("feedback")
        )  # where `feedback export` looks
        client = openai.OpenAI(
            base_url=summary["base_url"], api_key="secret-2", max_retries=0, timeout=60
        )
        assert [m.id for m in client.models.list().data] == ["mine", "base"]
        r = client.completions.create(model="base", prompt="to be", max_tokens=4, temperature=0)
        assert (r.usage.completion_tokens, r.choices[0].finish_reason) == (4, "length")
        with urllib.request.urlopen(summary["metrics"], timeout=30) as scraped:  # open, no key
            assert 'twofiles_generation_tokens_total{model="base"} 4.0' in scraped.read().decode()
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(
                base_url=summary["base_url"], api_key="secret-3", max_retries=0
            ).models.list()


def test_user_errors_exit_2(model_path, tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n", encoding="utf-8")
    assert main(["serve", model_path, "--api-keys-file", str(empty)]) == 2
    assert "no API keys" in capsys.readouterr().err
    assert main(["serve", model_path, "--api-keys-file", str(tmp_path / "missing.txt")]) == 2
    assert "missing.txt" in capsys.readouterr().err
    assert main(["serve", f"a={model_path}", f"a={model_path}"]) == 2
    assert "two models are named 'a'" in capsys.readouterr().err
    assert main(["serve", model_path, "--max-seqs", "0"]) == 2
    assert "max_seqs" in capsys.readouterr().err
    busy = socket.create_server(("127.0.0.1", 0))
    try:
        assert (
            main(["serve", model_path, "--port", str(busy.getsockname()[1]), "--device", "cpu"])
            == 2
        )
        assert "cannot listen" in capsys.readouterr().err
    finally:
        busy.close()


def test_model_names():
    assert model_name("runs/sft/model.safetensors") == "sft"
    assert model_name("smollm2") == "smollm2"
    assert model_name("/x/SmolLM2.Q4_1.gguf") == "SmolLM2.Q4_1"
    assert model_name("hf/Qwen2-0.5B/") == "Qwen2-0.5B"


# ---------------------------------------------------------------------------------------------
# one spelling per idea across verbs


def _options(parser, path=()):
    """(verb path, action) for every option of every verb and sub-verb."""
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _options(sub, (*path, name))
        elif not isinstance(action, argparse._HelpAction):
            yield path, action


def _flags(parser, *path):
    return {s for p, a in _options(parser) if p == path for s in a.option_strings}


def test_every_verb_is_listed_and_every_flag_has_help(capsys):
    import pkgutil

    import twofiles.cli
    from twofiles.cli import VERBS, build_parser

    modules = {m.name for m in pkgutil.iter_modules(twofiles.cli.__path__)} - {"common"}
    assert modules == {m.rsplit(".", 1)[1] for m, _ in VERBS.values()}
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    listing = capsys.readouterr().out
    for verb, (_, about) in VERBS.items():
        assert f"    {verb}" in listing and about.split()[0] in listing, verb
    parser = build_parser()
    undocumented = [
        (" ".join(path), a.option_strings or a.dest)
        for path, a in _options(parser)
        if not (a.help or "").strip()
    ]
    assert undocumented == []


def test_canonical_spellings_where_a_model_runs():
    from twofiles.cli import build_parser
    from twofiles.cli.common import DeprecatedAlias

    parser = build_parser()
    for path in (("generate",), ("chat",), ("serve",), ("eval",), ("arena", "battle")):
        assert {"--device", "--quantize", "--group-size", "--threads"} <= _flags(parser, *path), (
            path
        )
    for path in (("generate",), ("chat",)):  # they decode through the forward torch.compile wraps
        assert "--compile" in _flags(parser, *path), path
    for path in (("pretrain",), ("sft",), ("eval",), ("arena", "battle")):
        assert "--batch-size" in _flags(parser, *path), path
    for path in (("pretrain",), ("sft",), ("speedrun",)):
        assert "--time-budget" in _flags(parser, *path), path
    old = [
        (path, a.option_strings)
        for path, a in _options(parser)
        if "--batch" in a.option_strings and not isinstance(a, DeprecatedAlias)
    ]
    assert old == []  # --batch survives only as a deprecated alias


def test_old_spellings_still_work_with_a_note(capsys):
    from twofiles.cli import build_parser
    from twofiles.cli.common import comma_list

    parser = build_parser()
    args = parser.parse_args(["eval", "m", "--batch", "4"])
    assert args.batch_size == 4
    assert "--batch is deprecated; use --batch-size" in capsys.readouterr().err
    assert parser.parse_args(["eval", "m"]).batch_size == 8  # the alias leaves the default alone
    assert capsys.readouterr().err == ""
    assert parser.parse_args(["speedrun", "--budget", "30"]).budget == 30.0
    assert "--budget is deprecated; use --time-budget" in capsys.readouterr().err
    args = parser.parse_args(
        ["arena", "battle", "--models", "a,b=x.gguf", "c", "--prompts", "p", "--batch-size", "2"]
    )
    assert comma_list(args.models) == ["a", "b=x.gguf", "c"] and args.batch_size == 2
